"""The RS training loader against the store's decode floor, against torchgeo, and store bytes.

Everything runs in one process per measurement, torch and blosc limited to one thread, files in
the page cache, and every ratio is taken against a baseline measured in the same run.

Stores (all 224 x 224 tiles, real imagery's compressibility, never constant fields):

* **landsat compact** / **landsat float32**: the shared Landsat-8 L1 subset (10 bands, MTL
  calibration) copied ``--copies`` times and built with ``build_dataset`` (stride 56, no dedup,
  nothing excluded), once with the default ``--store-dtype compact`` (uint16 DN + recorded
  calibration) and once with ``--store-dtype float32`` (the previous default);
* **synthetic 14-band**: ``--tiles`` tiles of 14 uint16 bands cut from the same Landsat bands
  (four of them repeated at a spatial offset), written with the project's ``PartWriter``:
  the default store layout of a 14-band (MODIS-like) archive.

Tables:

1. **Loader vs decode floor**, per store: *floor* = for each sample, in a fixed random order, one
   ``pread`` of its chunk bytes (shard offsets resolved before timing) and ``blosc.decompress``
   into a warm batch-sized buffer;
   *loader* = ``RSTileDataset.load_batch`` over the same order (64 per batch): tiles decoded
   into one batch buffer with their calibration, crop boxes and flips; *DataLoader, 1 worker* =
   the data module's sharded loader with one worker process (epochs enough for 2048 tiles, after
   a first one that starts the worker); *previous loader* = the per-tile
   path this replaced (zarr read, float32 normalize, random resized crop, antialiased resize,
   per sample); *transform* = ``TileBatchTransform`` on the CPU (what a CPU-only run adds in
   the main process; on a GPU it runs there).
2. **vs torchgeo**: ``RasterDataset`` (the 10 band GeoTIFFs of the same subset, separate files)
   + ``RandomGeoSampler`` (224 px) + ``stack_samples``, against this project's loader over the
   landsat compact store, compact batches alone and with the batched transform on the CPU.
3. **Bytes per tile**: compact vs float32 store of the same build, and whether every tile's
   calibrated values are identical (``read_calibrated``).

    python benchmarks/bench_rs_loader.py            # 4 copies (256 tiles per store), 512 synthetic
    python benchmarks/bench_rs_loader.py --quick    # tiny: checks that it runs
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from stores import LANDSAT, landsat_archive, write_train_manifest

LANDSAT_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11")
TILE = 224
BATCH = 64


# -- stores ----------------------------------------------------------------------------------


def landsat_stores(root: Path, copies: int) -> dict[str, Path]:
    """The Landsat subset copied ``copies`` times, built compact and float32."""
    from geomed_mim.build_dataset import main as build_dataset

    archive = landsat_archive(root / "archive", LANDSAT, copies, lambda f, to: to.symlink_to(f))
    stores = {}
    for dtype in ("compact", "float32"):
        out = root / f"landsat_{dtype}"
        argv = ["--input", str(archive), "--output", str(out), "--profile", "landsat8_l1",
                "--tile-size", str(TILE), "--stride", "56", "--no_dedup", "--no_preview",
                "--max-cloud-fraction", "1", "--max-cloud-shadow-fraction", "1",
                "--max-nodata-fraction", "1", "--max-saturated-fraction", "1",
                "--max-out-of-range-fraction", "1", "--val-fraction", "0",
                "--store-dtype", dtype, "--workers", "1", "--scheduler", "synchronous"]  # fmt: skip
        assert build_dataset(argv) == 0
        stores[f"landsat {dtype}"] = out
    return stores


def synthetic_store(out: Path, tiles: int, per_part: int = 64) -> Path:
    """``tiles`` 14-band uint16 tiles cut from the real Landsat bands, the default layout."""
    import rasterio

    from data_pipelines.store.write import PartWriter, open_root

    bands = [rasterio.open(LANDSAT / f"l8_{b}.tif").read(1) for b in LANDSAT_BANDS]
    bands += [np.roll(b, (37, 53), axis=(0, 1)) for b in bands[:4]]
    stack = np.stack(bands)  # [14, 603, 627]
    rng = np.random.default_rng(0)
    root = open_root(out)
    root.attrs.update({"bands": [f"B{i}" for i in range(14)], "tile_size": TILE})
    arrays, index = [], []
    for p in range(math.ceil(tiles / per_part)):
        writer = PartWriter(out, "tiles", f"part{p:04d}", (14, TILE, TILE), np.uint16)
        for _ in range(min(per_part, tiles - p * per_part)):
            r, c = rng.integers(0, stack.shape[1] - TILE), rng.integers(0, stack.shape[2] - TILE)
            index.append(writer.append(np.ascontiguousarray(stack[:, r : r + TILE, c : c + TILE])))
            arrays.append(f"tiles/part{p:04d}")
        writer.close()
    write_train_manifest(out, arrays, index)
    return out


def tile_bytes(store: Path) -> float:
    """Bytes of tile data per stored tile (shard files, indexes included)."""
    from data_pipelines.store.index import build_sample_index

    files = [f for f in (store / "store.zarr" / "tiles").rglob("*") if f.is_file()]
    data = sum(f.stat().st_size for f in files if f.name != "zarr.json")
    return data / len(build_sample_index(store, None))


# -- measurements ------------------------------------------------------------------------------


def rate(n: int, fn: Callable[[], object], repeats: int = 3) -> float:
    """Items per second: the best of ``repeats`` timed runs of ``fn`` (after one warm-up)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def floor_rate(ds, order: np.ndarray) -> float:
    """pread + blosc.decompress of each sample's chunk, offsets resolved beforehand."""
    from numcodecs import blosc

    entries = []
    for i in order:
        path, tile = ds.index.sample(int(i))
        layout = ds.reader.layout(path)
        per = layout.shard[0]
        shard = layout.path / "c" / "/".join([str(tile // per)] + ["0"] * (len(layout.shape) - 1))
        fd = os.open(shard, os.O_RDONLY)
        base = os.fstat(fd).st_size - layout.index_bytes
        offset, nbytes = np.frombuffer(os.pread(fd, 16, base + 16 * (tile % per)), "<u8")
        os.close(fd)
        entries.append((str(shard), int(offset), int(nbytes)))
    out = np.empty((BATCH, *layout.chunks[1:]), dtype=layout.dtype)  # one warm batch buffer

    def run() -> None:
        for k, (path, offset, nbytes) in enumerate(entries):
            fd = os.open(path, os.O_RDONLY)
            raw = os.pread(fd, nbytes, offset)
            os.close(fd)
            blosc.decompress(raw, out[k % BATCH])

    return rate(len(order), run)


def loader_rate(ds, order: np.ndarray) -> float:
    """``load_batch`` over ``order``; each batch released as the data module's hook does."""
    from geomed_mim.data.buffers import release

    batches = [order[i : i + BATCH].tolist() for i in range(0, len(order), BATCH)]
    return rate(len(order), lambda: [release(ds.load_batch(b, b)) for b in batches])


def dataloader_rate(ds, tiles: int = 2048) -> float:
    """Tiles/s of the sharded loader with one worker over enough epochs for ``tiles`` tiles,
    after a first epoch that starts the (persistent) worker and fills its buffers."""
    from geomed_mim.data.buffers import release
    from geomed_mim.data.sharding import sharded_loader

    loader = sharded_loader(ds, BATCH, shuffle=True, num_workers=1, persistent_workers=True)
    for batch in loader:
        release(batch)
    t0, n = time.perf_counter(), 0
    for epoch in range(1, 1 + math.ceil(tiles / len(ds))):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            n += len(batch["index"])
            release(batch)  # as the data module's on_after_batch_transfer does
    return n / (time.perf_counter() - t0)


def previous_loader_rate(store: Path, ds, order: np.ndarray) -> float:
    """The per-tile path this loader replaced: zarr read, float32 normalize, random resized
    crop, flips and antialiased resize on each sample, then collate."""
    import torch.nn.functional as F
    import zarr
    from torch.utils.data._utils.collate import default_collate

    from geomed_mim.data.rs import random_resized_crop_params

    root = zarr.open_group(str(store / "store.zarr"), mode="r")
    C = ds.reader.layout(ds.index.paths[0]).shape[1]
    mean, std = torch.zeros(C, 1, 1), torch.ones(C, 1, 1)

    def item(i: int) -> dict:
        path, tile = ds.index.sample(i)
        x = torch.from_numpy(np.asarray(root[path][tile]).astype(np.float32))
        x = torch.nan_to_num((x - mean) / std, nan=0.0)
        top, left, h, w = random_resized_crop_params(TILE, TILE, (0.2, 1.0), (3 / 4, 4 / 3))
        x = x[:, top : top + h, left : left + w].flip(-1)
        x = F.interpolate(x[None], (TILE, TILE), mode="bilinear", antialias=True)[0]
        return {"image": x, "index": i}

    batches = [order[i : i + BATCH].tolist() for i in range(0, len(order), BATCH)]
    return rate(len(order), lambda: [default_collate([item(i) for i in b]) for b in batches], 1)


def transform_rate(ds, order: np.ndarray) -> float:
    batch = ds.load_batch(order[:BATCH].tolist(), order[:BATCH].tolist())
    return rate(len(batch["index"]), lambda: ds.transform(batch))


# -- the tables --------------------------------------------------------------------------------


def dataset(store: Path):
    from data_pipelines.store.read import read_store_attrs
    from geomed_mim.data.rs import RSTileDataset

    C = len(read_store_attrs(store)["bands"])
    return RSTileDataset(store, [0.0] * C, [1.0] * C, crop_size=TILE)


def floor_table(stores: dict[str, Path]) -> None:
    print("\n| store | tiles | floor tiles/s | loader tiles/s | loader / floor | DataLoader "
          "(1 worker) tiles/s | / floor | previous loader tiles/s | loader / previous | "
          "transform on CPU tiles/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, store in stores.items():
        ds = dataset(store)
        order = np.random.default_rng(1).permutation(len(ds))
        floor = floor_rate(ds, order)
        loader = loader_rate(ds, order)
        worker = dataloader_rate(ds)
        previous = previous_loader_rate(store, ds, order)
        transform = transform_rate(ds, order)
        print(f"| {name} | {len(ds)} | {floor:.0f} | {loader:.0f} | {loader / floor:.2f} | "
              f"{worker:.0f} | {worker / floor:.2f} | {previous:.0f} | {loader / previous:.1f}x"
              f" | {transform:.0f} |")  # fmt: skip


def torchgeo_rate(samples: int) -> float:
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import RandomGeoSampler

    class Landsat8Subset(RasterDataset):
        filename_glob = "l8_B1.tif"
        filename_regex = r"^l8_(?P<band>B\d+)\.tif$"
        separate_files = True
        all_bands = LANDSAT_BANDS

    ds = Landsat8Subset(paths=str(LANDSAT), bands=LANDSAT_BANDS)
    sampler = RandomGeoSampler(ds, size=TILE, length=samples)
    loader = DataLoader(ds, sampler=sampler, batch_size=BATCH, collate_fn=stack_samples)
    return rate(samples, lambda: [b["image"].shape for b in loader], 2)


def torchgeo_table(store: Path, samples: int) -> None:
    from geomed_mim.data.buffers import release
    from geomed_mim.data.sharding import sharded_loader

    ds = dataset(store)
    loader = sharded_loader(ds, BATCH, shuffle=True, num_workers=0)
    n = len(ds)
    ours = rate(n, lambda: [release(b) for b in loader], 2)
    full = rate(n, lambda: [(ds.transform(b)["image"].shape, release(b)) for b in loader], 2)
    theirs = torchgeo_rate(samples)
    print("\n| loader (one process, 10 bands, 224 px) | tiles/s | vs torchgeo |")
    print("|---|---|---|")
    print(f"| torchgeo RasterDataset + RandomGeoSampler (GeoTIFFs) | {theirs:.0f} | 1.0x |")
    print(f"| store, compact batches (RSDataModule's loader) | {ours:.0f} | {ours / theirs:.1f}x |")
    print(f"| store, + batched transform on the CPU | {full:.0f} | {full / theirs:.1f}x |")


def bytes_table(compact: Path, float32: Path) -> None:
    from data_pipelines.store.index import build_sample_index
    from data_pipelines.store.read import LazyZarrArrays

    a, b = LazyZarrArrays(compact), LazyZarrArrays(float32)
    index = build_sample_index(compact, None)
    same = all(
        np.array_equal(a.read_calibrated(*index.sample(i)), b.read_calibrated(*index.sample(i)),
                       equal_nan=True)
        for i in range(len(index))
    )  # fmt: skip
    base = tile_bytes(float32)
    print("\n| landsat store | stored dtype | bytes per tile | vs float32 | calibrated values |")
    print("|---|---|---|---|---|")
    print(f"| --store-dtype float32 | float32 | {base:,.0f} | 1.00 | reference |")
    print(f"| --store-dtype compact | uint16 | {tile_bytes(compact):,.0f} | "
          f"{tile_bytes(compact) / base:.2f} | {'identical' if same else 'DIFFER'} |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=4, help="copies of the Landsat subset")
    ap.add_argument("--tiles", type=int, default=512, help="tiles of the synthetic store")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    args = ap.parse_args()
    if not LANDSAT.is_dir():
        raise SystemExit(f"{LANDSAT} not found: set GEOMED_SHARED_DATA to the shared data folder")
    copies, tiles = (1, 64) if args.quick else (args.copies, args.tiles)
    torch.set_num_threads(1)
    from data_pipelines.store.chunks import set_blosc_threads

    set_blosc_threads(1)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        stores = landsat_stores(Path(tmp), copies)
        stores["synthetic 14-band"] = synthetic_store(Path(tmp) / "synthetic", tiles)
        floor_table(stores)
        torchgeo_table(stores["landsat compact"], 128 if args.quick else 1024)
        bytes_table(stores["landsat compact"], stores["landsat float32"])


if __name__ == "__main__":
    main()
