"""RS build throughput against the read+write floor, and scaling from 1 to 2 workers.

The archive is the real Landsat-8 L1 subset (10 bands + BQA + MTL, 603x627 px) from
../shared/data, copied into N scene folders (or the embedded 320x320 demo subset when the
shared data is absent). Every copy is processed in full; the copies are exact duplicates, so
the archive-wide dedup has real work at the end.

Floor, measured in the same run: every scene's band files read once, whole, with rasterio; and
the very arrays the build stored written again with the same codec, chunks and shards. The
build's ratio to that floor is its overhead for tiling, exclusion, hashing, calibration,
statistics, manifest and bookkeeping.

    python benchmarks/bench_rs_build.py [--scenes 24] [--tile-size 64]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import zarr
from distributed import LocalCluster
from stores import LANDSAT, landsat_archive, timed_build

from data_pipelines import parallel
from data_pipelines.store.write import default_compressor
from geomed_mim.resources import demo_data_dir


def make_archive(root: Path, n: int) -> tuple[Path, str]:
    src, label = LANDSAT, "shared Landsat-8 subset 603x627"
    if not src.is_dir():
        src, label = demo_data_dir() / "landsat8_l1", "demo Landsat-8 subset 320x320"
    return landsat_archive(root / "archive", src, n), label


def read_floor(archive: Path) -> float:
    t0 = time.perf_counter()
    for tif in sorted(archive.rglob("*.tif")):
        with rasterio.open(tif) as src:
            src.read()
    return time.perf_counter() - t0


def write_floor(built: Path, scratch: Path) -> float:
    """Write the arrays the build stored, again, with the same codec, chunks and shards."""
    root = zarr.open_group(str(built / "store.zarr"), mode="r")
    arrays = {name: root["tiles"][name][:] for name in root["tiles"].array_keys()}
    specs = {name: root["tiles"][name] for name in arrays}
    out = zarr.open_group(str(scratch), mode="w")
    out.create_group("tiles")
    t0 = time.perf_counter()
    for name, data in arrays.items():
        spec = specs[name]
        arr = zarr.create_array(
            store=str(scratch),
            name=f"tiles/{name}",
            shape=data.shape,
            chunks=spec.chunks,
            shards=spec.shards,
            dtype=data.dtype,
            compressors=default_compressor(5),
            fill_value=0,
        )
        arr[:] = data
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--tile-size", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        archive, label = make_archive(root, args.scenes)
        raw_mb = sum(f.stat().st_size for f in archive.rglob("*.tif")) / 2**20
        print(
            f"archive: {args.scenes} scenes ({label}), {raw_mb:.0f} MB of GeoTIFF; "
            f"tile {args.tile_size}; {os.cpu_count()} CPU cores"
        )
        read_floor(archive)  # warm the page cache so every run below reads from memory
        rows = []
        build = {"profile": "landsat8_l1", "tile_size": args.tile_size}
        for calibrate in ("toa", "none"):
            t_build, rep = timed_build(
                archive,
                root / f"b1_{calibrate}",
                **build,
                calibrate=calibrate,
                workers=1,
                scheduler="synchronous",
            )
            t_read = min(read_floor(archive) for _ in range(2))
            t_write = write_floor(root / f"b1_{calibrate}", root / f"floor_{calibrate}.zarr")
            floor = t_read + t_write
            rows.append((f"1 process, calibrate={calibrate}", t_build, floor, rep))
        # scaling: the same dask path with 1 and with 2 single-threaded worker processes
        scaling = {}
        for n in (1, 2):
            with LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.WARNING,
                env=parallel._SINGLE_THREAD_ENV,
            ) as cluster:
                scaling[n] = timed_build(
                    archive,
                    root / f"dask{n}",
                    **build,
                    calibrate="toa",
                    workers=n,
                    scheduler=cluster.scheduler_address,
                )
        t_b1, _ = scaling[1]
        t_b2, _rep2 = scaling[2]

        print()
        print(
            f"{'run':<32} | {'build s':>8} | {'floor s':>8} | {'build/floor':>11} | "
            f"{'tiles':>6} | {'tiles/s':>8} | {'MB written':>10}"
        )
        for name, t, floor, rep in rows:
            print(
                f"{name:<32} | {t:>8.2f} | {floor:>8.2f} | {t / floor:>11.2f} | "
                f"{rep.samples_written:>6} | {rep.samples_written / t:>8.0f} | "
                f"{rep.output_bytes / 2**20:>10.1f}"
            )
        for n, (t, rep) in scaling.items():
            name = f"dask, {n} worker(s) x 1 thread, toa"
            print(
                f"{name:<32} | {t:>8.2f} | {'':>8} | {'':>11} | {rep.samples_written:>6} | "
                f"{rep.samples_written / t:>8.0f} | {rep.output_bytes / 2**20:>10.1f}"
            )
        print()
        print(f"scaling 1 -> 2 dask workers: {t_b1 / t_b2:.2f}x (target >= 1.7x)")
        print(
            "floor = whole-scene rasterio reads + re-writing the stored arrays with the same "
            "codec/chunks/shards (target build/floor <= 1.5)"
        )
        m1 = np.asarray([r[3].manifest_rows for r in rows])
        assert (m1 == m1[0]).all()


if __name__ == "__main__":
    main()
