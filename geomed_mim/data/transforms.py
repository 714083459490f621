"""Batched tile transforms, applied after a batch reaches its device.

DataLoader workers only decode: they deliver *compact batches* of stored integers plus, per
sample, the numbers that say what to do with them (its part's calibration, its crop box and
flips, drawn from its own seeded generator). The data module's ``on_after_batch_transfer`` then
runs :class:`TileBatchTransform` on the whole batch where the batch is: on the GPU when there is
one, on the CPU on CPU-only runs, with the same ops.

Compact batch (keys)::

    tile         [B, C, H, W]  as stored: uint16 DN in compact stores, float32 in float stores
    calibration  [B, C, 8]     float32 StoredCalibration.table() of the sample's part
    invalid      [B, 2]        float32 raw nodata value and flag threshold (NaN: none)
    crop         [B, 4]        int64 box (top, left, height, width) in the tile
    flip         [B, 2]        bool: left-right, up-down
    rot90        [B]           int64 quarter turns (segmentation batches)
    label        [B, H, W]     class ids as stored (segmentation batches)
    index        [B]           int64 position in the dataset

The transform computes, per sample, exactly what the per-tile loader did: calibration (NaN at
nodata and flags), per-band standardization, NaN -> 0, the crop, its flips and the
antialiased bilinear resize of ``F.interpolate(..., antialias=True)``, here as a separable
gather with per-sample taps so that a batch of different boxes is one set of tensor ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

TILE_KEY = "tile"  # marks a compact batch


def is_compact_batch(batch: Any) -> bool:
    return isinstance(batch, dict) and TILE_KEY in batch


# -- calibration and standardization ------------------------------------------------------------


def calibrate(tile: torch.Tensor, table: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` stored values -> float32 physical values (``StoredCalibration.apply``
    on each sample): affine, then Planck inversion, temperature correction and min-max scaling
    on the bands whose coefficients are set; raw nodata / flagged values become NaN."""
    x = tile.to(torch.float32)
    B, C = x.shape[:2]
    nodata = invalid[:, 0].to(torch.float32).view(B, 1, 1, 1)
    above = invalid[:, 1].to(torch.float32).view(B, 1, 1, 1)
    bad = (x == nodata) | (x > above)  # NaN thresholds compare False: no mask
    coef = table.to(torch.float32).view(B, C, 8, 1, 1)
    out = x * coef[:, :, 0] + coef[:, :, 1]
    k1, k2 = coef[:, :, 2], coef[:, :, 3]
    if torch.isfinite(k1).any():
        out = torch.where(torch.isfinite(k1), k2 / torch.log(k1 / out + 1.0), out)
    tci, tcs = coef[:, :, 4], coef[:, :, 5]
    if torch.isfinite(tci).any():
        out = torch.where(torch.isfinite(tci), (out - tci) / tcs, out)
    lo, span = coef[:, :, 6], coef[:, :, 7]
    if torch.isfinite(lo).any():
        out = torch.where(torch.isfinite(lo), (out - lo) / span, out)
    return out.masked_fill(bad, float("nan"))


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` per band; NaN (nodata) and infinities become 0, the mean."""
    z = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)


# -- crop, flip and resize ----------------------------------------------------------------------


def resize_taps(
    start: torch.Tensor, length: torch.Tensor, size: int, flip: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows and weights ``[B, size, K]`` that resize ``[start, start + length)`` of each
    sample to ``size`` pixels: torch's antialiased bilinear filter (triangle of width
    ``max(scale, 1)``, weights normalized over the pixels inside the box); reversed where
    ``flip`` (a flipped box resized equals the resized box flipped: the filter is symmetric)."""
    device = start.device
    scale = length.to(torch.float64) / size  # [B]
    support = scale.clamp(min=1.0)
    center = scale[:, None] * (torch.arange(size, device=device, dtype=torch.float64) + 0.5)
    lo = (center - support[:, None] + 0.5).floor().clamp(min=0)  # [B, S]
    hi = torch.minimum((center + support[:, None] + 0.5).floor(), length[:, None].double())
    K = max(int((hi - lo).max()), 1)
    j = lo[..., None] + torch.arange(K, device=device, dtype=torch.float64)  # [B, S, K]
    w = (1.0 - ((j - center[..., None] + 0.5) / support[:, None, None]).abs()).clamp(min=0.0)
    w = torch.where(j < hi[..., None], w, 0.0)
    w = w / w.sum(-1, keepdim=True)
    rows = torch.minimum(j, (length - 1)[:, None, None].double()).long() + start[:, None, None]
    if flip is not None:
        flipped = flip.view(-1, 1, 1)
        rows = torch.where(flipped, rows.flip(1), rows)
        w = torch.where(flipped, w.flip(1), w)
    return rows, w.to(torch.float32)


def _resample_rows(x: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, C, S, W]``: output row s of sample b is the weighted sum of
    input rows ``rows[b, s, :]``."""
    b = torch.arange(x.shape[0], device=x.device)[:, None]  # [B, 1]
    out = None
    for k in range(rows.shape[-1]):
        term = x[b, :, rows[:, :, k]] * weights[:, :, k, None, None]  # [B, S, C, W]
        out = term if out is None else out + term
    return out.permute(0, 2, 1, 3)


def resized_crop(
    x: torch.Tensor, crop: torch.Tensor, size: int, flip: torch.Tensor
) -> torch.Tensor:
    """Each sample's box ``crop[b] = (top, left, h, w)``, flipped as ``flip[b]`` says (left-right,
    up-down), resized to ``size × size``: ``[B, C, H, W] -> [B, C, size, size]``."""
    B, _, H, W = x.shape
    crop = crop.to(device=x.device, dtype=torch.int64)
    flip = flip.to(device=x.device, dtype=torch.bool)
    whole = (crop[:, 0] == 0) & (crop[:, 1] == 0) & (crop[:, 2] == H) & (crop[:, 3] == W)
    if H == W == size and bool(whole.all()):  # nothing to resample (validation): flips only
        out = torch.where(flip[:, 0].view(B, 1, 1, 1), x.flip(-1), x)
        return torch.where(flip[:, 1].view(B, 1, 1, 1), out.flip(-2), out)
    rows, row_w = resize_taps(crop[:, 0], crop[:, 2], size, flip[:, 1])
    cols, col_w = resize_taps(crop[:, 1], crop[:, 3], size, flip[:, 0])
    y = _resample_rows(x, rows, row_w)  # [B, C, size, W]
    y = _resample_rows(y.transpose(2, 3), cols, col_w)  # [B, C, size(W), size(H)]
    return y.transpose(2, 3).contiguous()


def flip_rotate(
    x: torch.Tensor, flip: torch.Tensor, rot90: torch.Tensor | None = None
) -> torch.Tensor:
    """Per sample: flip left-right, then up-down (as ``flip[b]`` says), then ``rot90[b]``
    quarter turns in the last two axes (square images); ``x`` is ``[B, ..., H, W]``."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    flip = flip.to(device=x.device, dtype=torch.bool)
    x = torch.where(flip[:, 0].view(shape), x.flip(-1), x)
    x = torch.where(flip[:, 1].view(shape), x.flip(-2), x)
    if rot90 is not None:
        turns = rot90.to(x.device) % 4
        x = x.clone()
        for k in (1, 2, 3):
            chosen = turns == k
            if bool(chosen.any()):
                x[chosen] = x[chosen].rot90(k, (-2, -1))
    return x


# -- the transform the data modules run ---------------------------------------------------------


class TileBatchTransform:
    """Compact batch -> ``{"image": float32 [B, C, S, S], "index": ..., ...}`` on the batch's
    device: calibrate, standardize with the store's band statistics, then crop/flip/resize
    (pretraining) or flip/rotate image and label alike (segmentation, ``size=None``)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: int | None) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)
        self.size = size

    def image(self, batch: dict[str, Any]) -> torch.Tensor:
        """The standardized full tiles ``[B, C, H, W]`` (before any crop)."""
        tile = batch[TILE_KEY]
        if tile.shape[1] != len(self.mean):
            raise ValueError(
                f"tiles have {tile.shape[1]} bands but the statistics have {len(self.mean)}"
            )
        x = calibrate(tile, batch["calibration"], batch["invalid"])
        return standardize(x, self.mean.to(x.device), self.std.to(x.device))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        x = self.image(batch)
        out = {k: v for k, v in batch.items() if k not in _COMPACT_KEYS}
        if "label" in batch:  # segmentation: geometric only, never resampled
            out["image"] = flip_rotate(x, batch["flip"], batch.get("rot90"))
            out["label"] = flip_rotate(batch["label"], batch["flip"], batch.get("rot90")).long()
            return out
        size = self.size or x.shape[-1]
        out["image"] = resized_crop(x, batch["crop"], size, batch["flip"])
        return out


_COMPACT_KEYS = frozenset({TILE_KEY, "calibration", "invalid", "crop", "flip", "rot90", "label"})
