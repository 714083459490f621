"""Splits by location, not by date: what a validation score needs when one area is imaged
many times under one label map.

* RS: :func:`tile_footprints` (each tile's ground box from the manifest's ``transform``),
  :func:`spatial_holdout` (validation = the tiles on one side of the area, training = the
  tiles clear of it by a margin, every date of a location on the same side) and
  :func:`hold_out_locations` (a seeded share of locations, every date, e.g. for early stopping).
* CT: :class:`SlabSplit`, a slab of each volume for validation and the rest, less a margin,
  for training crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_pipelines.store.index import SampleIndex
from data_pipelines.store.layout import COL_ARRAY, COL_INDEX
from data_pipelines.store.read import read_manifest

SIDES = ("east", "west", "north", "south")
SLAB_SIDES = ("start", "end")


def tile_footprints(store: str, index: SampleIndex) -> tuple[np.ndarray, np.ndarray]:
    """Per sample of ``index``: its ground box ``[x0, y0, x1, y1]`` (CRS units) and the
    size of one scene pixel, from the manifest's ``transform`` and window (``width``,
    ``height`` in scene pixels; ``scale`` scene pixels per stored pixel)."""
    cols = [COL_ARRAY, COL_INDEX, "transform", "width", "height", "scale"]
    table = read_manifest(store, cols).to_pydict()
    if "transform" not in table:
        raise ValueError(f"store {store}: its manifest has no 'transform' column")
    keys = zip(table[COL_ARRAY], table[COL_INDEX], strict=True)
    row_of = {(a, int(i)): k for k, (a, i) in enumerate(keys)}
    rows = [row_of[index.sample(i)] for i in range(len(index))]
    affine = np.array([table["transform"][r] for r in rows], dtype=np.float64).reshape(-1, 6)
    scale = np.array([table["scale"][r] or 1.0 for r in rows], dtype=np.float64)
    w = np.array([table["width"][r] for r in rows], dtype=np.float64) / scale
    h = np.array([table["height"][r] for r in rows], dtype=np.float64) / scale
    a, b, c, d, e, f = affine.T
    # the four corners of the stored window, through the affine (rotation terms included)
    xs = np.stack([c, c + a * w, c + b * h, c + a * w + b * h])
    ys = np.stack([f, f + d * w, f + e * h, f + d * w + e * h])
    boxes = np.stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)], axis=1)
    return boxes, np.abs(a) / scale


def location_keys(boxes: np.ndarray, pixel: np.ndarray) -> np.ndarray:
    """One integer per distinct footprint (a location, whatever its date); boxes equal to a
    hundredth of a pixel are the same location."""
    size = float(np.median(pixel)) if len(pixel) else 1.0
    snapped = np.round(boxes / (size / 100)).astype(np.int64)
    return np.unique(snapped, axis=0, return_inverse=True)[1].reshape(-1)


@dataclass(frozen=True)
class SpatialSplit:
    """Which samples train, validate or are dropped, and what that means on the ground."""

    train: np.ndarray  # bool [N]
    val: np.ndarray  # bool [N]
    share: float  # of the area's extent along the side's axis that validation covers
    description: str


def spatial_holdout(
    boxes: np.ndarray, pixel: np.ndarray, side: str, fraction: float, margin: int
) -> SpatialSplit:
    """Validation: the tiles beginning at or past a line across the area, the tile edge that
    leaves the share nearest ``fraction`` of the area's extent on ``side``; training: the
    tiles ending at least ``margin`` scene pixels before that line. Tiles in between
    (overlapping the validation area or within the margin) are dropped, so no validation
    pixel's location is trained on. A location's dates share its footprint, hence its side."""
    if side not in SIDES:
        raise ValueError(f"holdout_side {side!r}: use one of {list(SIDES)}")
    if not 0 < fraction < 1:
        raise ValueError(f"holdout_fraction {fraction}: give a share in (0, 1), e.g. 0.3")
    if margin < 0:
        raise ValueError(f"holdout_margin {margin}: give scene pixels >= 0")
    # u grows towards ``side``: the hold-out is the high end of u
    axis, sign = {"east": (0, 1), "west": (0, -1), "north": (1, 1), "south": (1, -1)}[side]
    lo_hi = boxes[:, [axis, axis + 2]] * sign
    lo, hi = lo_hi.min(1), lo_hi.max(1)
    start, end = float(lo.min()), float(hi.max())
    edges = np.unique(lo[lo > start])  # lines that leave tiles on both sides
    if not len(edges):
        raise ValueError(f"holdout_side {side}: the area is one tile across; "
                         "no room for a spatial hold-out")  # fmt: skip
    line = float(edges[np.argmin(np.abs((end - edges) / (end - start) - fraction))])
    val = lo >= line
    train = hi <= line - margin * float(np.median(pixel))
    if not train.any():
        raise ValueError(f"holdout_margin {margin}: leaves no training tile; give a smaller "
                         "margin or holdout_fraction")  # fmt: skip
    share = (end - line) / (end - start)
    keys = location_keys(boxes, pixel)
    dropped = len(np.unique(keys[~train & ~val]))
    description = (
        f"spatial hold-out: the {side} {share:.0%} of the area "
        f"({len(np.unique(keys[val]))} locations, every date), {margin} px margin "
        f"({dropped} locations between dropped)"
    )
    return SpatialSplit(train, val, share, description)


def hold_out_locations(keys: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``round(fraction · locations)`` of the distinct ``keys`` (every sample of a
    chosen location), as a bool mask; none when that rounds to 0, and never every location."""
    locations = np.unique(keys)
    count = min(round(fraction * len(locations)), len(locations) - 1)
    if count < 1:
        return np.zeros(len(keys), dtype=bool)
    chosen = np.random.default_rng(seed).permutation(locations)[:count]
    return np.isin(keys, chosen)


@dataclass(frozen=True)
class SlabSplit:
    """A CT volume split along ``axis``: validation is the ``fraction`` of it at ``side``
    (``start`` or ``end`` of the axis), training crops stay ``margin`` voxels clear of it."""

    axis: int = 2
    fraction: float = 0.25
    margin: int = 4
    side: str = "start"

    def __post_init__(self) -> None:
        if self.axis not in (0, 1, 2):
            raise ValueError(f"slab_axis {self.axis}: give 0, 1 or 2 (the store's X, Y, Z)")
        if not 0 < self.fraction < 1:
            raise ValueError(f"slab_fraction {self.fraction}: give a share in (0, 1), e.g. 0.25")
        if self.margin < 0:
            raise ValueError(f"slab_margin {self.margin}: give voxels >= 0")
        if self.side not in SLAB_SIDES:
            raise ValueError(f"slab_side {self.side!r}: use one of {list(SLAB_SIDES)}")

    def bounds(self, length: int, part: str) -> tuple[int, int]:
        """[lo, hi) voxels of ``part`` ("train" or "val") along the axis of a volume that long."""
        size = max(1, round(length * self.fraction))
        if self.side == "start":
            return (0, size) if part == "val" else (size + self.margin, length)
        return (length - size, length) if part == "val" else (0, length - size - self.margin)

    def describe(self) -> str:
        names = "XYZ"
        return (f"slab hold-out: the {self.side} {self.fraction:.0%} of each volume along "
                f"{names[self.axis]}, {self.margin} voxel margin")  # fmt: skip


__all__ = [
    "SIDES",
    "SlabSplit",
    "SpatialSplit",
    "hold_out_locations",
    "location_keys",
    "spatial_holdout",
    "tile_footprints",
]
