"""Where a tile is cut: the grid of windows over a scene."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileWindow:
    row_off: int
    col_off: int
    size: int


def grid_offsets(length: int, tile_size: int, stride: int, cover_edges: bool) -> list[int]:
    """Offsets along one axis. With ``cover_edges`` a last tile is snapped to the far edge so no
    pixel is left out (it overlaps its neighbour); otherwise a partial last tile is dropped."""
    if length < tile_size:
        return []
    offsets = list(range(0, length - tile_size + 1, stride))
    if cover_edges and offsets[-1] + tile_size < length:
        offsets.append(length - tile_size)
    return offsets


def tile_grid(
    height: int, width: int, tile_size: int, stride: int | None = None, cover_edges: bool = True
) -> list[list[TileWindow]]:
    """Square windows of ``tile_size`` every ``stride`` pixels, grouped by row (row-major).

    Grouping by row lets the reader fetch one strip of ``tile_size`` rows at a time, which is
    the cheap way through strip- or block-organised GeoTIFFs.
    """
    stride = stride or tile_size
    if tile_size <= 0 or stride <= 0:
        raise ValueError(f"tile_size and stride must be positive (got {tile_size}, {stride})")
    cols = grid_offsets(width, tile_size, stride, cover_edges)
    return [
        [TileWindow(r, c, tile_size) for c in cols]
        for r in grid_offsets(height, tile_size, stride, cover_edges)
    ]


# -- several sizes per scene -----------------------------------------------------------------------


def multi_size_grid(
    height: int, width: int, sizes: list[int], overlap: float, cover_edges: bool
) -> list[TileWindow]:
    """A grid per size (stride ``size x (1 - overlap)``), all sizes' windows together."""
    windows = []
    for size in sizes:
        stride = max(1, round(size * (1 - overlap)))
        for row in tile_grid(height, width, size, stride, cover_edges):
            windows.extend(row)
    return windows


def scene_seed(scene_id: str, seed: int) -> int:
    """A seed that depends only on the scene and the build's ``--seed``: a re-run, a resumed
    run and another worker draw the same crops for the scene."""
    digest = hashlib.sha256(f"{seed}:{scene_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def random_crops(
    height: int, width: int, size_range: tuple[int, int], count: int, seed: int
) -> list[TileWindow]:
    """``count`` square crops at uniform positions, edges drawn log-uniformly from
    ``size_range`` (each scale as likely as the next, as small objects are as common as large
    ones), clipped to the scene. Fewer when the scene is smaller than the smallest size."""
    low, high = size_range[0], min(size_range[1], height, width)
    if count <= 0 or high < low:
        return []
    rng = np.random.default_rng(seed)
    sizes = np.exp(rng.uniform(np.log(low), np.log(high + 1), count)).astype(int)
    sizes = np.clip(sizes, low, high)
    rows = (rng.random(count) * (height - sizes + 1)).astype(int)
    cols = (rng.random(count) * (width - sizes + 1)).astype(int)
    return [TileWindow(int(r), int(c), int(s)) for r, c, s in zip(rows, cols, sizes, strict=True)]


def crops_for_area(height: int, width: int, pixel_area_m2: float, per_km2: float) -> int:
    """How many crops ``--crops-per-km2`` asks for on a scene of this size (at least one)."""
    return max(1, round(height * width * pixel_area_m2 / 1e6 * per_km2))


def strips(windows: list[TileWindow]) -> list[list[TileWindow]]:
    """Windows grouped by (size, first row), row-major: each group is read as one strip of
    ``size`` rows spanning its windows' columns."""
    groups: dict[tuple[int, int], list[TileWindow]] = {}
    for w in windows:
        groups.setdefault((w.size, w.row_off), []).append(w)
    return [sorted(g, key=lambda w: w.col_off) for _, g in sorted(groups.items())]
