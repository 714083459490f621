"""A small dataset in EuroSAT's exact on-disk layout, as torchgeo's ``EuroSAT`` reads it:
``ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<n>.tif`` (13-band
uint16 GeoTIFFs, bands in torchgeo's ``all_band_names`` order) and the split files
``eurosat-{train,val,test}.txt`` listing ``<Class>_<n>.jpg``.

Pixels are real Sentinel-2 L1C spectra from the shared sample data (the eo-learn scenes, 13
bands, DN = reflectance × 10000): each image's pixels are drawn from the pixels (any of the 5
dates) of one land-cover class of the scenes' mask, so classes differ as those land covers do;
their positions are shuffled, so there is no real texture. Without the shared data, spectra are
synthetic: one mean spectrum per class plus noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from tests.conftest import SHARED_DATA

EUROSAT_DIR = Path("ds/images/remote_sensing/otherDatasets/sentinel_2/tif")
TORCHGEO_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                  "B12", "B8A")  # fmt: skip
# EuroSAT class folder → land-cover class id of the eo-learn mask whose pixels fill it
CLASSES = {"Forest": 2, "Pasture": 3, "Residential": 8}
SPLIT_SIZES = {"train": 4, "val": 2, "test": 2}  # images per class
LULC = SHARED_DATA / "rs_seg" / "eolearn_s2_l1c_lulc"


def class_pixels() -> dict[int, np.ndarray] | None:
    """Land-cover class id → its real pixels [N, 13] (torchgeo's band order), every date."""
    if not LULC.is_dir():
        return None
    with rasterio.open(LULC / "lulc_mask.tif") as f:
        mask = f.read(1)
    out: dict[int, list[np.ndarray]] = {c: [] for c in CLASSES.values()}
    for scene in sorted(LULC.glob("s2_l1c_reference_scene_*.tif")):
        with rasterio.open(scene) as f:
            order = [f.descriptions.index(b) for b in TORCHGEO_BANDS]
            values = f.read()[order]  # [13, H, W]
        for c in out:
            out[c].append(values[:, mask == c].T)
    return {c: np.concatenate(v) for c, v in out.items()}


def write_eurosat(
    root: Path, size: int = 64, split_sizes: dict[str, int] | None = None, seed: int = 0
) -> dict[str, list[tuple[str, int]]]:
    """Write the fixture under ``root``; returns split → [(file name, class index)]."""
    split_sizes = split_sizes or SPLIT_SIZES
    rng = np.random.default_rng(seed)
    real = class_pixels()
    per_class = sum(split_sizes.values())
    names = sorted(CLASSES)  # torchgeo's ImageFolder numbers classes in sorted folder order
    splits: dict[str, list[tuple[str, int]]] = {s: [] for s in split_sizes}
    for k, name in enumerate(names):
        folder = root / EUROSAT_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        spectrum = 800 + 600 * k + 150 * np.arange(13)  # synthetic fallback only
        for n in range(1, per_class + 1):
            if real is not None:
                pool = real[CLASSES[name]]
                image = pool[rng.integers(len(pool), size=size * size)].T.reshape(13, size, size)
            else:
                noise = rng.normal(0, 120, (13, size, size))
                image = np.clip(spectrum[:, None, None] + noise, 0, 65535).astype(np.uint16)
            path = folder / f"{name}_{n}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=13,
                               dtype="uint16", crs="EPSG:32633",
                               transform=from_origin(465000, 5080000, 10, 10)) as f:  # fmt: skip
                f.write(image.astype(np.uint16))
            bounds = np.cumsum([0, *split_sizes.values()])
            split = list(split_sizes)[int(np.searchsorted(bounds, n, side="left")) - 1]
            splits[split].append((f"{name}_{n}", k))
    for split, items in splits.items():
        (root / f"eurosat-{split}.txt").write_text("".join(f"{f}.jpg\n" for f, _ in items))
    return splits
