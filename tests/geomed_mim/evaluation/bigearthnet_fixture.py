"""A small dataset in BigEarthNet-S2 v1.0's on-disk layout, as torchgeo's ``BigEarthNet`` reads
it (``bands="s2"``): ``BigEarthNet-v1.0/<patch>/<patch>_B01.tif … _B8A.tif`` (one GeoTIFF per
band at 10/20/60 m) with ``<patch>_labels_metadata.json`` (CORINE label names), and the split
files ``bigearthnet-{train,val,test}.csv`` (``<S2 patch>,<S1 patch>`` per line).

The patches are the 6 real BigEarthNet-S2 patches of the shared sample data. Training holds
them as they are; validation and test hold copies flipped left-right (3 each), so no evaluated
image is one the probes trained on, though each shows the same place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import rasterio

from tests.conftest import SHARED_DATA

PATCHES = SHARED_DATA / "rs" / "bigearthnet_s2"
S2_DIR = "BigEarthNet-v1.0"


def flipped_copy(source: Path, target: Path, suffix: str) -> str:
    """``source`` patch folder → ``target/<name><suffix>``, every band flipped left-right."""
    name = source.name + suffix
    folder = target / name
    folder.mkdir(parents=True)
    for tif in sorted(source.glob("*.tif")):
        with rasterio.open(tif) as f:
            profile, pixels = f.profile, f.read()
        band = tif.name.rsplit("_", 1)[1]
        with rasterio.open(folder / f"{name}_{band}", "w", **profile) as f:
            f.write(np.ascontiguousarray(pixels[:, :, ::-1]))
    meta = json.loads(next(source.glob("*_labels_metadata.json")).read_text())
    (folder / f"{name}_labels_metadata.json").write_text(json.dumps(meta))
    return name


def write_bigearthnet(root: Path) -> dict[str, list[str]]:
    """Write the fixture under ``root``; returns split → patch names."""
    patches = sorted(p for p in PATCHES.iterdir() if p.is_dir())
    s2 = root / S2_DIR
    s2.mkdir(parents=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, patch in enumerate(patches):
        shutil.copytree(patch, s2 / patch.name)
        splits["train"].append(patch.name)
        split = "val" if i % 2 == 0 else "test"
        splits[split].append(flipped_copy(patch, s2, "_flipped"))
    for split, names in splits.items():
        lines = "".join(f"{n},S1_{n}\n" for n in names)  # the S1 folder is not read for "s2"
        (root / f"bigearthnet-{split}.csv").write_text(lines)
    return splits
