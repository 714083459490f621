"""Where a tile is cut: the grid of windows over a scene."""

from __future__ import annotations

from dataclasses import dataclass


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
