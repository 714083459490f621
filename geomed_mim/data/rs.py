"""Remote-sensing tiles from a built store, normalized per band, with crop/flip augmentation.

The store is read through ``data_pipelines.store`` and lazily: the parent process reads only
``zarr.json`` and the manifest (plain files); each DataLoader worker opens the zarr group
itself on first use.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data_pipelines.store.read import LazyZarrArrays, select_samples

log = logging.getLogger(__name__)


def compute_band_stats(
    store_dir: str | Path,
    samples: Sequence[tuple[str, int]],
    max_tiles: int = 512,
    nodata: float | None = None,
) -> tuple[list[float], list[float]]:
    """Per-band mean/std over up to ``max_tiles`` evenly spaced samples (float64 sums).

    Pixels where every band equals ``nodata`` are left out.
    """
    if not samples:
        raise ValueError(f"no usable samples in {store_dir} to compute band statistics from")
    reader = LazyZarrArrays(store_dir)
    picks = np.linspace(0, len(samples) - 1, min(max_tiles, len(samples))).round().astype(int)
    total = total_sq = None
    count = 0
    for i in sorted(set(picks.tolist())):
        tile = reader.read(*samples[i]).astype(np.float64)  # [C, H, W]
        pixels = tile.reshape(tile.shape[0], -1)  # [C, H*W]
        if nodata is not None:
            pixels = pixels[:, ~np.all(pixels == nodata, axis=0)]
        if total is None:
            total = np.zeros(pixels.shape[0])
            total_sq = np.zeros(pixels.shape[0])
        total += pixels.sum(axis=1)
        total_sq += (pixels**2).sum(axis=1)
        count += pixels.shape[1]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-6).tolist()


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w), with an optional generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=gen))
        aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio, generator=gen)))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    # fallback: the whole image, clipped to the ratio range (torchvision's rule)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RSTileDataset(Dataset):
    """Tiles of one split as float tensors [C, S, S], standardized with per-band mean/std.

    Each item is ``{"image": FloatTensor[C, S, S], "index": int}``; ``index`` is the position in
    this dataset (the training task derives per-sample mask seeds from it).
    """

    def __init__(
        self,
        store_dir: str | Path,
        mean: Sequence[float],
        std: Sequence[float],
        split: str | None = "train",
        crop_size: int | None = None,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flips: bool = True,
        augment: bool = True,
        include_duplicates: bool = False,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.samples = select_samples(store_dir, split, include_duplicates)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.crop_size = crop_size
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.flips = flips
        self.augment = augment
        self.reader = LazyZarrArrays(store_dir)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        tile = torch.from_numpy(self.reader.read(*self.samples[i]).astype(np.float32))  # [C,H,W]
        if tile.shape[0] != self.mean.shape[0]:
            raise ValueError(
                f"tile has {tile.shape[0]} bands but the statistics have {self.mean.shape[0]}"
            )
        # nodata pixels are NaN in calibrated stores: after normalization they become the mean (0)
        image = torch.nan_to_num((tile - self.mean) / self.std, nan=0.0, posinf=0.0, neginf=0.0)
        size = self.crop_size or image.shape[-1]
        if self.augment:
            top, left, h, w = random_resized_crop_params(
                image.shape[-2], image.shape[-1], self.crop_scale, self.crop_ratio
            )
            image = image[:, top : top + h, left : left + w]
            if self.flips:
                if torch.rand(()) < 0.5:
                    image = image.flip(-1)
                if torch.rand(()) < 0.5:
                    image = image.flip(-2)
        if tuple(image.shape[-2:]) != (size, size):
            image = F.interpolate(
                image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )[0]
        return {"image": image.contiguous(), "index": i}
