"""A 13M-row manifest -> a usable training dataset: the columnar index vs the list of tuples.

The manifest is synthetic but shaped like an OpticalRS-13M archive built by this project:
``--parts`` parts x ``--tiles`` tiles (default 50,000 x 260 = 13M rows), the manifest columns a
build writes that the selection reads (id, scene, array, index, excluded for ~8 % of the rows,
dup_of for ~2 %, split with ~5 % val scenes) plus a perceptual hash, written with the project's
own ``write_manifest``. Each path runs in a fresh process, so its peak RSS is its own:

* **old**: ``select_samples`` (``usable_rows`` + ``to_pylist``: one Python tuple per sample);
* **new**: ``RSTileDataset(store, mean, std)`` over ``build_sample_index`` (NumPy columns);
  then the dataset is pickled (what a spawned DataLoader worker would receive).

Added RSS = peak RSS of the process minus its RSS after the imports.

    python benchmarks/bench_sample_index.py            # 13M rows (needs ~8 GB free for "old")
    python benchmarks/bench_sample_index.py --quick    # 200k rows: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that across
    fork and exec, so a child would report the peak of the parent that wrote the manifest."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def write_synthetic_store(out: Path, parts: int, tiles: int, bands: int = 14) -> int:
    """``manifest.parquet`` of ``parts x tiles`` rows and a ``store.zarr/zarr.json``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from data_pipelines.store.write import atomic_write_json, write_manifest

    n = parts * tiles
    rng = np.random.default_rng(0)
    part_of_row = np.repeat(np.arange(parts, dtype=np.int32), tiles)
    scenes = pa.array([f"archive/L2A_T{k // 100:03d}/scene_{k:06d}" for k in range(parts)])
    scene = pa.DictionaryArray.from_arrays(pa.array(part_of_row), scenes).cast(pa.string())
    arrays = pa.array([f"tiles/archive__L2A_T{k // 100:03d}__scene_{k:06d}" for k in range(parts)])
    array = pa.DictionaryArray.from_arrays(pa.array(part_of_row), arrays).cast(pa.string())
    suffix = pa.array([f"/r{(t // 16) * 128}_c{(t % 16) * 128}" for t in range(tiles)])
    ids = pc.binary_join_element_wise(
        scene, pa.DictionaryArray.from_arrays(pa.array(np.tile(np.arange(tiles), parts)), suffix)
        .cast(pa.string()), "",
    )  # fmt: skip
    excluded = rng.random(n) < 0.08
    reasons = pa.array(["cloud", "nodata", "constant"])
    reason = pa.DictionaryArray.from_arrays(
        pa.array(rng.integers(0, 3, n).astype(np.int32), mask=~excluded), reasons
    ).cast(pa.string())
    dup = ~excluded & (rng.random(n) < 0.02)
    dup_of = pc.if_else(pa.array(dup), ids, pa.nulls(n, pa.string()))
    index = np.tile(np.arange(tiles, dtype=np.int64), parts)
    val_scene = rng.random(parts) < 0.05
    split = pa.DictionaryArray.from_arrays(
        pa.array(val_scene[part_of_row].astype(np.int32)), pa.array(["train", "val"])
    ).cast(pa.string())
    table = pa.table({
        "id": ids, "scene": scene, "array": pc.if_else(pa.array(excluded), "", array),
        "index": pa.array(np.where(excluded, -1, index)), "excluded": reason, "dup_of": dup_of,
        "split": split, "phash": pa.array(rng.integers(0, 2**63, n).astype(np.uint64)),
    })  # fmt: skip
    write_manifest(out, table)
    attrs = {"bands": [f"B{i}" for i in range(bands)], "tile_size": 128, "modality": "rs"}
    atomic_write_json(out / "store.zarr" / "zarr.json", {"zarr_format": 3, "node_type": "group",
                                                         "attributes": attrs})  # fmt: skip
    return n


def child(path: str, store: str) -> None:
    """One measured path, in its own process; prints a JSON line."""
    from data_pipelines.store.read import select_samples
    from geomed_mim.data.rs import RSTileDataset

    base = rss_mb()
    t0 = time.perf_counter()
    extra: dict = {}
    if path == "old":
        n = len(select_samples(store, "train"))
        seconds = time.perf_counter() - t0
    else:
        ds = RSTileDataset(store, [0.0] * 14, [1.0] * 14)
        n = len(ds)
        seconds = time.perf_counter() - t0
        extra["pickled_mb"] = len(pickle.dumps(ds)) / 2**20
        extra["index_mb"] = ds.index.nbytes / 2**20
    print(json.dumps({"path": path, "rows": n, "seconds": seconds,
                      "added_rss_mb": peak_rss_mb() - base, **extra}))  # fmt: skip


def measure(path: str, store: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", path, "--store", str(store)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", type=int, default=50_000)
    ap.add_argument("--tiles", type=int, default=260)
    ap.add_argument("--quick", action="store_true", help="200k rows: checks that it runs")
    ap.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.store)
        return
    parts, tiles = (800, 250) if args.quick else (args.parts, args.tiles)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        store = Path(tmp) / "store"
        t0 = time.perf_counter()
        n = write_synthetic_store(store, parts, tiles)
        size = (store / "manifest.parquet").stat().st_size / 2**20
        print(f"manifest: {n:,} rows ({parts:,} parts x {tiles}), {size:.0f} MB parquet, "
              f"written in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        new = measure("new", store)
        old = measure("old", store)
    assert new["rows"] == old["rows"], (new, old)
    print("\n| path | training samples | s | added peak RSS MB | time / old | RSS / old |")
    print("|---|---|---|---|---|---|")
    for r in (old, new):
        print(f"| {r['path']} | {r['rows']:,} | {r['seconds']:.2f} | {r['added_rss_mb']:.0f} | "
              f"{r['seconds'] / old['seconds']:.3f} | "
              f"{r['added_rss_mb'] / max(old['added_rss_mb'], 1e-9):.3f} |")  # fmt: skip
    print(f"\nnew: index {new['index_mb']:.1f} MB of NumPy arrays; the pickled dataset "
          f"{new['pickled_mb']:.1f} MB ({new['pickled_mb'] * 2**20 / new['rows']:.1f} bytes "
          f"per sample)")  # fmt: skip


if __name__ == "__main__":
    main()
