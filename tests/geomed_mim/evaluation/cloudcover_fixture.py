"""A small dataset in the exact on-disk layout torchgeo's ``CloudCoverDetection`` reads (the
Sentinel-2 cloud cover challenge of DrivenData / Radiant Earth, as ``azcopy sync`` unpacks it):

    ROOT/<split>/<split>_metadata.csv                          first column: chip_id
    ROOT/<split>/<split>_features/<chip_id>/{B02,B03,B04,B08}.tif   one band each, uint16 L2A
                                                                    (reflectance × 10000)
    ROOT/<split>/<split>_labels/<chip_id>.tif                  uint8, 1 cloud, 0 not cloud

for the class's two splits, ``train`` and ``test`` (it has no validation split). The metadata
columns are the challenge's (``chip_id, location, datetime, cloudpath``); torchgeo reads the
first. Clouds are round blobs, bright in all four bands; clear ground is vegetation-like (NIR
high, red low); a few labels are flipped, so no method is perfect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

BANDS = ("B02", "B03", "B04", "B08")
CHIPS = {"train": 6, "test": 3}
SIZE = 32
CLEAR = np.array([400.0, 700.0, 500.0, 2800.0])  # B02, B03, B04, B08
CLOUD = np.array([3200.0, 3300.0, 3400.0, 3800.0])


def write_tif(path: Path, array: np.ndarray, dtype: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": array.shape[0], "width": array.shape[1], "count": 1,
               "dtype": dtype, "crs": "EPSG:32633",
               "transform": from_origin(500000, 4000000, 10, 10)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as f:
        f.write(array.astype(dtype)[None])


def cloud_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    cloud = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, size, 2)
        cloud |= (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, size / 2.5) ** 2
    return cloud


def write_chip(root: Path, split: str, chip: str, rng: np.random.Generator, size: int) -> None:
    cloud = cloud_mask(rng, size)
    for b, band in enumerate(BANDS):
        mean = np.where(cloud, CLOUD[b], CLEAR[b])
        values = mean + rng.normal(0, 900, cloud.shape)  # clouds thin at the edges of the noise
        path = root / split / f"{split}_features" / chip / f"{band}.tif"
        write_tif(path, np.clip(values, 0, 10000), "uint16")
    label = cloud ^ (rng.random(cloud.shape) < 0.03)  # a few flipped labels
    write_tif(root / split / f"{split}_labels" / f"{chip}.tif", label, "uint8")


def write_cloudcover(root: Path, size: int = SIZE, seed: int = 0) -> dict[str, list[str]]:
    """Write the fixture under ``root``; returns split → chip ids, in the metadata's order."""
    rng = np.random.default_rng(seed)
    names: dict[str, list[str]] = {}
    for split, n in CHIPS.items():
        names[split] = [f"{split[:2]}{i:02d}" for i in range(n)]
        for chip in names[split]:
            write_chip(root, split, chip, rng, size)
        lines = ["chip_id,location,datetime,cloudpath"] + [
            f"{chip},Chifunfu,2020-04-29T08:20:47Z,az://./{split}_features/{chip}"
            for chip in names[split]
        ]
        (root / split / f"{split}_metadata.csv").write_text("\n".join(lines) + "\n")
    return names
