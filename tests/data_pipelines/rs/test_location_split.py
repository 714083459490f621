"""Splits by location: every date of a place on one side, held-out blocks with a margin, on
synthetic footprints and on the shipped demo build (5 dates of one area)."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_pipelines.rs.location_split import MARGIN, TRAIN, VAL, location_splits
from geomed_mim.build_dataset import main

REPO_ROOT = Path(__file__).resolve().parents[3]


def grid_tiles(dates: int, n: int, edge: float, step: float) -> dict[str, list]:
    """``dates`` copies of an n x n grid of tiles of ``edge`` metres every ``step`` metres
    (step < edge: overlapping tiles), UTM-like north-up transforms."""
    cols: dict[str, list] = {"crs": [], "transform": [], "size": [], "lon": [], "lat": []}
    for _ in range(dates):
        for r in range(n):
            for c in range(n):
                x0, y0 = 500_000.0 + c * step, 5_000_000.0 - r * step
                cols["crs"].append("EPSG:32633")
                cols["transform"].append([edge / 32, 0.0, x0, 0.0, -edge / 32, y0])
                cols["size"].append(32)
                cols["lon"].append(math.nan)
                cols["lat"].append(math.nan)
    return cols


def split(cols: dict[str, list], fraction: float, block: float, margin: float = 0.0) -> list[str]:
    return location_splits(
        cols["crs"], cols["transform"], cols["size"], cols["lon"], cols["lat"], fraction, block,
        margin,
    )  # fmt: skip


def boxes_of(cols: dict[str, list]) -> np.ndarray:
    """Footprints written out from the transforms, independently of the module."""
    out = []
    for t, s in zip(cols["transform"], cols["size"], strict=True):
        a, _, x0, _, e, y0 = t
        out.append((x0, y0 + e * s, x0 + a * s, y0))
    return np.array(out)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Gap between two boxes (negative both ways: they overlap)."""
    dx = max(b[0] - a[2], a[0] - b[2])
    dy = max(b[1] - a[3], a[1] - b[3])
    if dx < 0 and dy < 0:
        return -1.0
    return math.hypot(max(dx, 0.0), max(dy, 0.0)) if dx > 0 and dy > 0 else max(dx, dy, 0.0)


@pytest.mark.parametrize("margin", [0.0, 150.0])
def test_held_out_ground_is_never_trained_on_and_every_date_of_a_place_agrees(margin):
    cols = grid_tiles(dates=3, n=8, edge=320.0, step=240.0)  # tiles overlap by 80 m
    splits = split(cols, 0.25, 640.0, margin)
    splits = np.array(splits)
    per_place = splits.reshape(3, 64)
    assert (per_place == per_place[0]).all()  # all dates of a place on one side
    assert {TRAIN, VAL} <= set(splits)
    boxes = boxes_of(cols)
    val, train = boxes[splits == VAL], boxes[splits == TRAIN]
    for box in train:  # brute force: no training tile within the margin of a validation tile
        gaps = [distance(box, v) for v in val]
        assert min(gaps) >= margin if margin else min(gaps) >= 0
    # overlapping neighbours of validation tiles were set aside, not dropped silently
    assert (splits == MARGIN).sum() > 0
    assert len(splits) == 3 * 64


def test_the_held_out_share_is_a_share_of_blocks():
    cols = grid_tiles(dates=2, n=8, edge=320.0, step=320.0)  # no overlap: 4 x 4 blocks of 2 x 2
    for fraction, blocks in ((0.25, 4), (0.1, 2), (0.01, 1), (0.0, 0)):
        splits = split(cols, fraction, 640.0)
        assert splits.count(VAL) == blocks * 4 * 2, fraction  # 4 tiles a block, 2 dates
        assert MARGIN not in splits  # edge-sharing tiles share no pixel: kept for training


def test_tiles_without_a_crs_split_by_their_centre_coordinates():
    n = 40
    lon = list(np.repeat(np.linspace(10.0, 12.0, n), 1))
    cols = {"crs": [""] * n, "transform": [[1, 0, 0, 0, 1, 0]] * n, "size": [32] * n,
            "lon": lon, "lat": [45.0] * n}  # fmt: skip
    splits = split(cols, 0.3, 50_000.0)
    width = 50_000 / 111_320  # degrees
    blocks = {int((x - 10.0) // width) for x in lon}  # 5 blocks over 2 degrees
    val_blocks = {int((x - 10.0) // width) for x, s in zip(lon, splits, strict=True) if s == VAL}
    assert len(val_blocks) == round(0.3 * len(blocks))  # whole blocks of longitude
    for b in val_blocks:  # every tile of a held-out block is held out
        assert all(s == VAL for x, s in zip(lon, splits, strict=True) if (x - 10.0) // width == b)


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("location_split") / "store"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["--output", str(out), "--workers", "1", "--scheduler", "synchronous"])
    assert code == 0
    return out


def test_the_demo_validates_on_held_out_ground_in_every_date(demo_build):
    m = pq.read_table(demo_build / "manifest.parquet").to_pandas()
    val = m[m["split"] == VAL]
    assert set(val["scene"]) == set(m["scene"])  # every date has validation tiles...
    places = {s: set(zip(g.row_off, g.col_off, strict=True)) for s, g in val.groupby("scene")}
    assert len({frozenset(p) for p in places.values()}) == 1  # ...at the same places
    for scene, tiles in m.groupby("scene"):
        held = tiles[tiles["split"] == VAL]
        trained = tiles[tiles["split"] == TRAIN]
        assert len(trained) > len(held) > 0, scene
        for _, t in trained.iterrows():  # windows of the same scene grid: no shared pixel
            for _, v in held.iterrows():
                rows = min(t.row_off + t.height, v.row_off + v.height) - max(t.row_off, v.row_off)
                cols = min(t.col_off + t.width, v.col_off + v.width) - max(t.col_off, v.col_off)
                assert rows <= 0 or cols <= 0, (scene, t.id, v.id)


def test_split_flags_are_checked_before_any_work(tmp_path: Path, capsys) -> None:
    for flag, extra in {
        "--split-by": ["--split-by", "date"],
        "--split-block": ["--split-by", "location", "--split-block", "0"],
        "--split-margin": ["--split-by", "location", "--split-margin", "-1"],
    }.items():
        assert main(["--output", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"error: {flag}"), err
    assert not (tmp_path / "o").exists()
