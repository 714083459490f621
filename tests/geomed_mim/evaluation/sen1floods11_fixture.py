"""A tiny Sen1Floods11 release in its v1.1 layout: 13-band UInt16 S2Hand, 2-band Float32 S1Hand
(VV, VH in dB, NaN where there is no data) and Int16 LabelHand GeoTIFFs (64×64, water where NDWI
is high and VV low, plus a few mislabeled pixels, −1 no-data pixels) and the split files as the
release writes them (no header, ``<chip>_S1Hand.tif,<chip>_LabelHand.tif``), the Bolivia
hold-out's among them (``flood_bolivia_data.csv``: Bolivia's chips, in no other split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

HAND = Path("v1.1/data/flood_events/HandLabeled")
SPLITS = Path("v1.1/splits/flood_handlabeled")
SPLIT_FILES = {"train": "flood_train_data.csv", "val": "flood_valid_data.csv",
               "test": "flood_test_data.csv", "bolivia": "flood_bolivia_data.csv"}  # fmt: skip
CHIPS = {"train": 4, "val": 2, "test": 2, "bolivia": 2}
SIZE = 64


def write_tif(path: Path, array: np.ndarray, dtype: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": array.shape[1], "width": array.shape[2],
               "count": array.shape[0], "dtype": dtype, "crs": "EPSG:4326",
               "transform": from_origin(-66.0, -14.0, 1e-4, 1e-4)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as f:
        f.write(array.astype(dtype))


def write_s1(path: Path, water: np.ndarray, rng: np.random.Generator) -> None:
    """VV, VH backscatter (dB; water dark) with NaN strips and specks, as S1Hand marks no data."""
    vv = np.where(water, -19.0, -10.0) + rng.normal(0, 3.0, water.shape)
    vh = np.where(water, -26.0, -17.0) + rng.normal(0, 3.0, water.shape)
    image = np.stack([vv, vh])
    image[:, -4:, :] = np.nan  # a strip outside the swath
    image[:, rng.random(water.shape) < 0.02] = np.nan
    image[1, 10:14, 20:30] = np.nan  # VH alone missing: the pixel is no data all the same
    write_tif(path, image, "float32")


def write_sen1floods11(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """The release under ``root``; returns each split's chip names (``<Event>_<id>``)."""
    rng, rng_s1 = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    names: dict[str, list[str]] = {}
    events = ["Ghana", "India", "Mekong", "Spain"]  # Bolivia is the hold-out's alone
    k = 0
    for split, n in CHIPS.items():
        names[split] = []
        lines = []
        for _ in range(n):
            event = "Bolivia" if split == "bolivia" else events[k % len(events)]
            chip = f"{event}_{100000 + 37 * k}"
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
            write_s1(root / HAND / "S1Hand" / f"{chip}_S1Hand.tif", water, rng_s1)
            lines.append(f"{chip}_S1Hand.tif,{chip}_LabelHand.tif")
            names[split].append(chip)
        (root / SPLITS).mkdir(parents=True, exist_ok=True)
        (root / SPLITS / SPLIT_FILES[split]).write_text("\n".join(lines) + "\n")
    return names
