"""Labeled pixels of a segmentation data module, in physical units, for the baselines.

They come through the data module's own loaders (the tiles/volumes the segmenters see), with
the standardization (RS: the store's band mean/std) or the HU window (CT: ``[lo, hi] → [0, 1]``)
undone, so the baselines work on reflectance and HU. CT windows clip HU to the window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geomed_mim.data.segmentation import CTVolumeDataset
from geomed_mim.evaluation.baselines import Pixels


def _labeled(images: list[torch.Tensor], labels: list[torch.Tensor], ignore: int) -> Pixels:
    """images [B, C, *S], labels [B, *S] → the labeled pixels with a value in every band
    (nodata is NaN after calibration)."""
    values = torch.cat([x.movedim(1, -1).reshape(-1, x.shape[1]) for x in images])  # [N, C]
    ids = torch.cat([y.reshape(-1) for y in labels])  # [N]
    keep = (ids != ignore) & torch.isfinite(values).all(dim=1)
    return Pixels(values[keep].double().numpy(), ids[keep].numpy())


def rs_pixels(dm: Any, split: str) -> Pixels:
    """Reflectance and labels of every pixel of ``split`` (``"train"`` or ``"val"``)."""
    dataset = dm.train_dataset if split == "train" else dm.val_dataset
    mean = torch.tensor(dm.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(dm.std, dtype=torch.float64).view(1, -1, 1, 1)
    images, labels = [], []
    for batch in dm._loader(dataset, shuffle=False, drop_last=False):
        batch = dm.on_after_batch_transfer(batch, 0)
        images.append(batch["image"].double() * std + mean)  # [B, C, H, W] physical
        labels.append(batch["label"].long())  # [B, H, W]
    return _labeled(images, labels, int(dm.classes.get("ignore_index", 255)))


def ct_pixels(dm: Any, split: str) -> Pixels:
    """HU (within the window) and labels of every voxel the training crops may read
    (``"train"``) or of the validation volumes (any other ``split``: the data module's own,
    e.g. the held-out slabs of ``val_split="slab"``)."""
    if split == "train":
        volumes = CTVolumeDataset(dm._crops("train", augment=False))
    else:
        volumes = dm.val_dataset
    lo, hi = dm.window
    images, labels = [], []
    for i in range(len(volumes)):
        item = volumes[i]
        images.append(item["image"][:, :1].double() * (hi - lo) + lo)  # [1, 1, X, Y, Z] HU
        labels.append(item["label"][:, 0].long())  # [1, X, Y, Z]
    return _labeled(images, labels, int(dm.classes.get("ignore_index", 255)))


def pixels(dm: Any, split: str) -> Pixels:
    """:func:`rs_pixels` or :func:`ct_pixels` by the data module's dimensionality."""
    return ct_pixels(dm, split) if dm.spatial_dims == 3 else rs_pixels(dm, split)


def subsample(p: Pixels, limit: int, seed: int) -> Pixels:
    """At most ``limit`` pixels, a seeded uniform draw (all of them when fewer)."""
    if len(p.labels) <= limit:
        return p
    rows = np.sort(np.random.default_rng(seed).choice(len(p.labels), limit, replace=False))
    return Pixels(p.values[rows], p.labels[rows])
