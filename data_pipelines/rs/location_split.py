"""Train/val split by location: every date of a place lands on the same side.

An archive that revisits the same ground (a time series, overlapping orbits) split by scene puts
one date of a field in training and another date of the same field in validation; a model that
recalls the place scores well without generalising. Split by location instead:

1. each tile's footprint comes from its stored pixels' ``transform`` (CRS units; tiles without a
   CRS, MODIS swath tiles, use their centre ``lon``/``lat`` in degrees);
2. the ground is cut into square blocks of ``block`` CRS units, aligned to the archive's
   top-left corner per CRS, and a tile belongs to the block of its centre;
3. ``round(val_fraction × blocks)`` blocks (at least one when ``val_fraction > 0``), those with the
   smallest hash of (CRS, block), hold the validation tiles;
4. a training tile whose footprint comes within ``margin`` of a validation tile's footprint
   (overlaps it, for ``margin`` 0) is set aside as ``margin``: no validation pixel's ground is
   ever trained on. Loaders read ``train`` and ``val`` only.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

SPLIT_BY_SCENE, SPLIT_BY_LOCATION = "scene", "location"
SPLIT_BY_CHOICES = (SPLIT_BY_SCENE, SPLIT_BY_LOCATION)
TRAIN, VAL, MARGIN = "train", "val", "margin"
METRES_PER_DEGREE = 111_320.0  # tiles without a CRS: block and margin in degrees of latitude


def footprints(
    crs: Sequence[str],
    transforms: Sequence[Sequence[float]],
    sizes: Sequence[int],
    lon: Sequence[float],
    lat: Sequence[float],
) -> np.ndarray:
    """[N, 4] (xmin, ymin, xmax, ymax) of each tile in its CRS; a tile without a CRS is the
    point at its centre ``lon``/``lat``."""
    boxes = np.empty((len(sizes), 4), dtype=np.float64)
    for i, (c, t, s) in enumerate(zip(crs, transforms, sizes, strict=True)):
        if c:  # north-up affine of the stored pixels: x = c0 + a·col, y = f + e·row
            a, _, x0, _, e, y0 = (float(v) for v in t)
            xs, ys = (x0, x0 + a * s), (y0, y0 + e * s)
            boxes[i] = (min(xs), min(ys), max(xs), max(ys))
        else:
            boxes[i] = (lon[i], lat[i], lon[i], lat[i])
    return boxes


def block_keys(crs: Sequence[str], boxes: np.ndarray, block: float) -> list[tuple[str, int, int]]:
    """(CRS, column, row) of the block holding each tile's centre; blocks start at the
    archive's left and top edges in each CRS."""
    keys: list[tuple[str, int, int]] = []
    crs_arr = np.asarray(list(crs), dtype=object)
    origin = {c: (boxes[crs_arr == c, 0].min(), boxes[crs_arr == c, 3].max()) for c in set(crs)}
    for c, box in zip(crs, boxes, strict=True):
        size = block if c else block / METRES_PER_DEGREE
        x0, y0 = origin[c]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        keys.append((c, int((cx - x0) // size), int((y0 - cy) // size)))
    return keys


def block_hash(key: tuple[str, int, int]) -> int:
    return int.from_bytes(hashlib.sha1(repr(key).encode()).digest()[:8], "big")


def validation_blocks(keys: Sequence[tuple[str, int, int]], val_fraction: float) -> set:
    """The ``round(val_fraction × blocks)`` blocks (≥ 1 when the fraction is > 0) of lowest hash."""
    blocks = sorted(set(keys), key=block_hash)
    if val_fraction <= 0 or not blocks:
        return set()
    count = min(max(round(val_fraction * len(blocks)), 1), len(blocks))
    return set(blocks[:count])


def near(a: np.ndarray, b: np.ndarray, margin: float) -> np.ndarray:
    """Whether box ``a`` [4] comes within ``margin`` of each box in ``b`` [M, 4] (0: overlaps,
    sharing an edge does not count)."""
    gap_x = np.maximum(b[:, 0] - a[2], a[0] - b[:, 2])
    gap_y = np.maximum(b[:, 1] - a[3], a[1] - b[:, 3])
    if margin <= 0:
        return (gap_x < 0) & (gap_y < 0)
    return np.maximum(np.maximum(gap_x, 0), np.maximum(gap_y, 0)) < margin


def location_splits(
    crs: Sequence[str],
    transforms: Sequence[Sequence[float]],
    sizes: Sequence[int],
    lon: Sequence[float],
    lat: Sequence[float],
    val_fraction: float,
    block: float,
    margin: float = 0.0,
) -> list[str]:
    """``train`` / ``val`` / ``margin`` for each tile (see the module docstring)."""
    crs = [str(c or "") for c in crs]
    boxes = footprints(crs, transforms, sizes, lon, lat)
    keys = block_keys(crs, boxes, block)
    held_out = validation_blocks(keys, val_fraction)
    splits = [VAL if k in held_out else TRAIN for k in keys]
    val_by_crs: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(splits):
        if s == VAL:
            val_by_crs[crs[i]].append(i)
    val_boxes = {c: boxes[idx] for c, idx in val_by_crs.items()}
    for i, s in enumerate(splits):
        if s == TRAIN and crs[i] in val_boxes:
            m = margin if crs[i] else margin / METRES_PER_DEGREE
            if near(boxes[i], val_boxes[crs[i]], m).any():
                splits[i] = MARGIN
    return splits


def default_block(gsd: Sequence[float], sizes: Sequence[int]) -> float:
    """Twice the largest tile edge on the ground (metres): blocks of 2 × 2 tiles."""
    edges = [float(g) * int(s) for g, s in zip(gsd, sizes, strict=True) if math.isfinite(g)]
    return 2 * max(edges) if edges else 1.0
