"""Batched tile transforms, applied after a batch reaches its device.

DataLoader workers only decode: they deliver *compact batches* of stored integers plus, per
sample, the numbers that say what to do with them (its part's calibration, its crop box and
flips, drawn from its own seeded generator). The data module's ``on_after_batch_transfer`` then
runs :class:`TileBatchTransform` on the whole batch where the batch is: on the GPU when there is
one, on the CPU on CPU-only runs, with the same ops.

Compact batch (keys)::

    tile         [B, C, H, W]  as stored: uint16 DN in compact stores, float32 in float stores
    calibration  [B, C, 8]     float32 StoredCalibration.table() of the sample's part
                               (columns CAL_* of data_pipelines.store.calibration)
    invalid      [B, 2]        float32 raw nodata value and flag threshold (NaN: none;
                               INVALID_NODATA, INVALID_ABOVE)
    crop         [B, 4]        int64 box (top, left, height, width) in the tile
    flip         [B, 2]        bool: left-right, up-down
    rot90        [B]           int64 quarter turns (after flips and the crop)
    label        [B, H, W]     class ids as stored (segmentation batches)
    index        [B]           int64 position in the dataset
    buffer       [k, 4]        tickets of the reusable buffers (``geomed_mim.data.buffers``)

The transform computes, per sample, exactly what the per-tile loader did: calibration (NaN at
nodata and flags), per-band standardization, NaN -> 0, the crop, its flips and the
antialiased bilinear resize of ``F.interpolate(..., antialias=True)``; boxes of different sizes
are resampled together by one ``grid_sample`` at exactly the coordinates ``F.interpolate``
samples (when a box is enlarged, as with the default crop size, antialiasing changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from data_pipelines.store.calibration import (
    BT_CORRECTION_COLUMNS,
    BT_RANGE_COLUMNS,
    CAL_OFFSET,
    CAL_SCALE,
    INVALID_ABOVE,
    INVALID_NODATA,
    THERMAL_COLUMNS,
)

TILE_KEY = "tile"  # marks a compact batch


def is_compact_batch(batch: Any) -> bool:
    return isinstance(batch, dict) and TILE_KEY in batch


# -- calibration and standardization ------------------------------------------------------------


def _on_channels(
    x: torch.Tensor,
    coef: torch.Tensor,
    step: Callable[..., torch.Tensor],
    columns: tuple[int, int],
) -> None:
    """Apply ``step(values, a, b)`` in place on the bands whose coefficients in the table's
    ``columns`` are set (finite) for some sample; samples without them keep their values."""
    first, second = columns
    a, b = coef[:, :, first], coef[:, :, second]  # [B, C]
    channels = torch.isfinite(a).any(0).nonzero().flatten().tolist()
    if not channels:
        return
    sub = x[:, channels]  # [B, c, H, W] (a copy)
    a, b = a[:, channels, None, None], b[:, channels, None, None]
    x[:, channels] = torch.where(torch.isfinite(a), step(sub, a, b), sub)


def as_float32(tile: torch.Tensor) -> torch.Tensor:
    """A new float32 tensor of the stored values. torch has few kernels for uint16 off the CPU
    (a "barebones" unsigned type), so there the bits are read as int16 and shifted back,
    exactly (every uint16 is a float32 integer)."""
    if tile.dtype == torch.uint16 and tile.device.type != "cpu":
        return uint16_via_int16(tile)
    return tile.to(torch.float32, copy=True)


def uint16_via_int16(tile: torch.Tensor) -> torch.Tensor:
    x = tile.view(torch.int16).to(torch.float32)  # a view changes no bits
    return torch.where(x < 0, x + 65536.0, x)


def as_int64(labels: torch.Tensor) -> torch.Tensor:
    """Class ids as int64 (uint16 ids read through their int16 bits, as in :func:`as_float32`)."""
    if labels.dtype == torch.uint16:
        return labels.view(torch.int16).to(torch.int64) & 0xFFFF
    return labels.to(torch.int64)


def calibrate(tile: torch.Tensor, table: torch.Tensor, invalid: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` stored values -> float32 physical values (``StoredCalibration.apply``
    on each sample, the same float32 operations in the same order): affine, then Planck
    inversion, temperature correction and min-max scaling on the bands whose coefficients are
    set; raw nodata / flagged values become NaN. Returns a new tensor."""
    x = as_float32(tile)
    B = x.shape[0]
    bad = None
    thresholds = ((invalid[:, INVALID_NODATA], torch.eq), (invalid[:, INVALID_ABOVE], torch.gt))
    for value, op in thresholds:
        if bool(torch.isfinite(value).any()):  # NaN thresholds compare False: no mask
            hit = op(x, value.to(torch.float32).view(B, 1, 1, 1))
            bad = hit if bad is None else bad.logical_or_(hit)
    coef = table.to(torch.float32)  # [B, C, 8]
    x.mul_(coef[:, :, CAL_SCALE, None, None]).add_(coef[:, :, CAL_OFFSET, None, None])
    _on_channels(x, coef, lambda v, k1, k2: k2 / torch.log(k1 / v + 1.0), THERMAL_COLUMNS)
    _on_channels(x, coef, lambda v, tci, tcs: (v - tci) / tcs, BT_CORRECTION_COLUMNS)
    _on_channels(x, coef, lambda v, lo, span: (v - lo) / span, BT_RANGE_COLUMNS)
    return x.masked_fill_(bad, float("nan")) if bad is not None else x


def standardize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """In place: ``(x - mean) / std`` per band; NaN (nodata) and infinities become 0, the mean."""
    x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)


# -- crop, flip and resize ----------------------------------------------------------------------


def _source_coords(start: torch.Tensor, length: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, size]`` pixel coordinates sampled by a bilinear resize of ``[start, start +
    length)`` to ``size`` (torch's ``align_corners=False`` rule, clamped to the box)."""
    centers = torch.arange(size, device=start.device, dtype=torch.float64) + 0.5
    length = length.to(torch.float64)[:, None]
    inside = (centers * (length / size) - 0.5).clamp(min=0).minimum(length - 1)
    return start.to(torch.float64)[:, None] + inside


def _upsample(x: torch.Tensor, crop: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """Boxes no larger than ``size`` (no antialiasing needed): one batched ``grid_sample``
    at exactly the coordinates ``F.interpolate(box, size, mode="bilinear")`` samples."""
    B, _, H, W = x.shape
    ys = _source_coords(crop[:, 0], crop[:, 2], size)  # [B, size]
    xs = _source_coords(crop[:, 1], crop[:, 3], size)
    xs = torch.where(flip[:, :1], xs.flip(1), xs)  # a flipped box = mirrored coordinates
    ys = torch.where(flip[:, 1:], ys.flip(1), ys)
    gx = (xs * (2.0 / max(W - 1, 1)) - 1.0).to(x.dtype)  # align_corners=True: pixel centres
    gy = (ys * (2.0 / max(H - 1, 1)) - 1.0).to(x.dtype)
    grid = torch.stack([gx[:, None, :].expand(B, size, size), gy[:, :, None].expand(B, size, size)],
                       dim=-1)  # fmt: skip
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def resized_crop(
    x: torch.Tensor, crop: torch.Tensor, size: int, flip: torch.Tensor
) -> torch.Tensor:
    """Each sample's box ``crop[b] = (top, left, h, w)``, flipped as ``flip[b]`` says (left-right,
    up-down), resized to ``size × size`` as ``F.interpolate(mode="bilinear", antialias=True)``
    resizes it: ``[B, C, H, W] -> [B, C, size, size]``. Boxes that shrink (only when ``size`` is
    smaller than the tile) take the antialiased resize one by one; all others one batched
    bilinear sampling (antialiasing changes nothing when enlarging)."""
    B, C, H, W = x.shape
    crop = crop.to(device=x.device, dtype=torch.int64)
    flip = flip.to(device=x.device, dtype=torch.bool)
    whole = (crop[:, 0] == 0) & (crop[:, 1] == 0) & (crop[:, 2] == H) & (crop[:, 3] == W)
    if H == W == size and bool(whole.all()):  # nothing to resample (validation): flips only
        out = torch.where(flip[:, 0].view(B, 1, 1, 1), x.flip(-1), x)
        return torch.where(flip[:, 1].view(B, 1, 1, 1), out.flip(-2), out)
    enlarge = (crop[:, 2] <= size) & (crop[:, 3] <= size)
    if bool(enlarge.all()):
        return _upsample(x, crop, size, flip)
    out = torch.empty((B, C, size, size), dtype=x.dtype, device=x.device)
    if bool(enlarge.any()):
        out[enlarge] = _upsample(x[enlarge], crop[enlarge], size, flip[enlarge])
    for b in (~enlarge).nonzero().flatten().tolist():
        top, left, h, w = crop[b].tolist()
        box = x[b, :, top : top + h, left : left + w]
        box = box.flip(-1) if flip[b, 0] else box
        box = box.flip(-2) if flip[b, 1] else box
        out[b] = F.interpolate(box[None], size=(size, size), mode="bilinear",
                               align_corners=False, antialias=True)[0]  # fmt: skip
    return out


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
            out["label"] = flip_rotate(as_int64(batch["label"]), batch["flip"], batch.get("rot90"))
            return out
        size = self.size or x.shape[-1]
        out["image"] = resized_crop(x, batch["crop"], size, batch["flip"])
        turns = batch.get("rot90")
        if turns is not None and bool(turns.any()):  # square after the crop: turns keep shape
            out["image"] = flip_rotate(out["image"], torch.zeros_like(batch["flip"]), turns)
        return out


_COMPACT_KEYS = frozenset(
    {TILE_KEY, "calibration", "invalid", "crop", "flip", "rot90", "label", "buffer"}
)
