"""HU statistics of a built CT store (``build_dataset stats`` on a CT store).

Every kept, non-duplicate volume is read chunk-slab by slab into one exact int16 histogram, so
mean, std, min, max and percentiles are exact (no sampling) and do not depend on reading order.
Written to the store's ``hu_stats`` attribute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.ct.volume import INT16_MIN
from data_pipelines.store.layout import ATTR_HU_STATS, COL_ARRAY, store_path
from data_pipelines.store.read import read_manifest, usable_rows

PERCENTILES = (0.5, 5.0, 50.0, 95.0, 99.5)


def histogram_stats(counts: np.ndarray) -> dict[str, Any]:
    """Statistics of an int16 histogram (``counts[v - INT16_MIN]`` voxels of value ``v``)."""
    values = np.arange(counts.size, dtype=np.float64) + INT16_MIN
    total = int(counts.sum())
    if total == 0:
        return {"voxels": 0, "mean": None, "std": None, "min": None, "max": None,
                "percentiles": {}}  # fmt: skip
    mean = float((counts * values).sum() / total)
    var = float((counts * (values - mean) ** 2).sum() / total)
    present = np.flatnonzero(counts)
    cdf = np.cumsum(counts)
    percentiles = {}
    for q in PERCENTILES:
        rank = min(total - 1, int(np.floor(q / 100.0 * (total - 1))))
        percentiles[f"p{q:g}"] = float(values[np.searchsorted(cdf, rank + 1)])
    return {
        "voxels": total,
        "mean": mean,
        "std": var**0.5,
        "min": float(values[present[0]]),
        "max": float(values[present[-1]]),
        "percentiles": percentiles,
    }


def recompute_ct_stats(out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Exact HU statistics over the kept, non-duplicate volumes; written as ``hu_stats``."""
    import zarr
    from tqdm.auto import tqdm

    arrays = usable_rows(read_manifest(out_dir), None, False).column(COL_ARRAY).to_pylist()
    root = zarr.open_group(str(store_path(out_dir)), mode="r+")
    counts = np.zeros(65536, dtype=np.int64)
    for name in tqdm(arrays, desc="HU statistics", unit="volume", disable=not progress):
        arr = root[name]
        step = max(1, arr.chunks[2])
        for z in range(0, arr.shape[2], step):  # one slab of chunks at a time
            slab = np.asarray(arr[:, :, z : z + step]).astype(np.int32)
            counts += np.bincount(slab.ravel() - INT16_MIN, minlength=65536)
    attrs = {
        "values": "HU (int16 as stored)",
        "computed_over": f"{len(arrays)} kept, non-duplicate volumes (exact histogram)",
        **histogram_stats(counts),
    }
    root.attrs[ATTR_HU_STATS] = attrs
    return attrs
