from __future__ import annotations

import pytest

from data_pipelines.rs.tiling import grid_offsets, tile_grid


def test_offsets_without_edge_cover_drop_partial_tile() -> None:
    assert grid_offsets(100, 32, 32, cover_edges=False) == [0, 32, 64]


def test_offsets_with_edge_cover_snap_last_tile_to_edge() -> None:
    assert grid_offsets(100, 32, 32, cover_edges=True) == [0, 32, 64, 68]
    # exact fit: no extra tile
    assert grid_offsets(96, 32, 32, cover_edges=True) == [0, 32, 64]


def test_overlapping_stride() -> None:
    assert grid_offsets(64, 32, 16, cover_edges=False) == [0, 16, 32]


def test_scene_smaller_than_tile_gives_no_tiles() -> None:
    assert tile_grid(20, 500, 32) == []


def test_grid_is_row_major_and_covers_every_pixel() -> None:
    rows = tile_grid(101, 100, 32, 32, cover_edges=True)
    assert [r[0].row_off for r in rows] == [0, 32, 64, 69]
    covered = set()
    for row in rows:
        assert [w.col_off for w in row] == [0, 32, 64, 68]
        for w in row:
            covered |= {(w.row_off + i, w.col_off + j) for i in range(32) for j in range(32)}
    assert len(covered) == 101 * 100


def test_invalid_sizes_raise() -> None:
    with pytest.raises(ValueError, match="positive"):
        tile_grid(10, 10, 0)
