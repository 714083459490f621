"""A tiny Sen1Floods11 release in its v1.1 layout: 13-band S2Hand and int16 LabelHand GeoTIFFs
(64×64, water where NDWI is high plus a few mislabeled pixels, −1 no-data pixels) and the split
files as the release writes them (no header, ``<chip>_S1Hand.tif,<chip>_LabelHand.tif``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

HAND = Path("v1.1/data/flood_events/HandLabeled")
SPLITS = Path("v1.1/splits/flood_handlabeled")
SPLIT_FILES = {"train": "flood_train_data.csv", "val": "flood_valid_data.csv",
               "test": "flood_test_data.csv"}  # fmt: skip
CHIPS = {"train": 4, "val": 2, "test": 2}
SIZE = 64


def write_tif(path: Path, array: np.ndarray, dtype: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": array.shape[1], "width": array.shape[2],
               "count": array.shape[0], "dtype": dtype, "crs": "EPSG:4326",
               "transform": from_origin(-66.0, -14.0, 1e-4, 1e-4)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as f:
        f.write(array.astype(dtype))


def write_sen1floods11(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """The release under ``root``; returns each split's chip names (``<Event>_<id>``)."""
    rng = np.random.default_rng(seed)
    names: dict[str, list[str]] = {}
    events = ["Bolivia", "Ghana", "India", "Mekong"]
    k = 0
    for split, n in CHIPS.items():
        names[split] = []
        lines = []
        for _ in range(n):
            chip = f"{events[k % len(events)]}_{100000 + 37 * k}"
            k += 1
            yy, xx = np.mgrid[:SIZE, :SIZE]
            water = (xx + rng.integers(-8, 8) < SIZE // 2 + 6 * np.sin(yy / 9)).astype(np.int16)
            image = rng.normal(1500, 200, (13, SIZE, SIZE))
            image[2] = np.where(water, 1200, 900) + rng.normal(0, 150, (SIZE, SIZE))  # B03 green
            image[7] = np.where(water, 600, 2500) + rng.normal(0, 400, (SIZE, SIZE))  # B08 NIR
            label = water.copy()
            flip = rng.random((SIZE, SIZE)) < 0.03  # labels NDWI gets wrong
            label[flip] = 1 - label[flip]
            label[rng.random((SIZE, SIZE)) < 0.1] = -1  # no data
            label[:6, :10] = -1
            write_tif(root / HAND / "S2Hand" / f"{chip}_S2Hand.tif", np.clip(image, 0, None),
                      "uint16")  # fmt: skip
            write_tif(root / HAND / "LabelHand" / f"{chip}_LabelHand.tif", label[None], "int16")
            lines.append(f"{chip}_S1Hand.tif,{chip}_LabelHand.tif")
            names[split].append(chip)
        (root / SPLITS).mkdir(parents=True, exist_ok=True)
        (root / SPLITS / SPLIT_FILES[split]).write_text("\n".join(lines) + "\n")
    return names
