"""Splits by location with the shipped evaluation configs: the LULC demo's spatial hold-out
checked against the manifest's windows, held-out select locations, and the CT demo's slab
split checked against the crops training actually reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml

from geomed_mim.data.segmentation import CTSegDataModule, RSSegDataModule
from tests.conftest import REPO_ROOT

LULC = REPO_ROOT / "configs/evaluate/lulc_sentinel2_demo.yaml"
CT = REPO_ROOT / "configs/evaluate/ct_organs_demo.yaml"


def shipped_args(config, **changes) -> dict:
    return {**yaml.safe_load(config.read_text())["data"]["init_args"], **changes}


def usable_manifest(store) -> pd.DataFrame:
    m = pd.read_parquet(store / "manifest.parquet")
    return m[m["excluded"].isna() & m["dup_of"].isna() & m["label_array"].notna()]


def manifest_rows(store, index) -> pd.DataFrame:
    """The manifest rows of a data module's sample index, by (array, row)."""
    m = usable_manifest(store).set_index(["array", "index"])
    return m.loc[[index.sample(i) for i in range(len(index))]].reset_index()


def places(tiles: pd.DataFrame) -> set[tuple[int, int]]:
    """The (row_off, col_off) windows of ``tiles``: their locations, whatever the date."""
    return set(zip(tiles.row_off, tiles.col_off, strict=True))


def gap(a: pd.Series, b: pd.Series) -> int:
    """Scene pixels between two windows (negative: they overlap), the larger of the axes."""
    cols = max(b.col_off - (a.col_off + a.width), a.col_off - (b.col_off + b.width))
    rows = max(b.row_off - (a.row_off + a.height), a.row_off - (b.row_off + b.height))
    return max(cols, rows)


def test_spatial_holdout_keeps_validation_clear_of_training(lulc_store):
    args = shipped_args(LULC, store=str(lulc_store))
    dm = RSSegDataModule(**args)
    dm.setup("fit")
    train = manifest_rows(lulc_store, dm.train_dataset.index)
    val = manifest_rows(lulc_store, dm.val_dataset.index)
    margin = args["holdout_margin"]
    assert args["val_split"] == "spatial"
    assert args["holdout_side"] == "east"
    assert margin > 0
    # no validation tile within the margin of any training tile (every pair, every date)
    assert min(gap(t, v) for _, t in train.iterrows() for _, v in val.iterrows()) >= margin
    assert (val.col_off.min() >= train.col_off + train.width + margin).all()  # east of it
    # the line is the tile edge leaving the share nearest the configured fraction
    width = int((usable_manifest(lulc_store).col_off + usable_manifest(lulc_store).width).max())
    edges = np.unique(usable_manifest(lulc_store).col_off)
    edges = edges[edges > 0]
    line = edges[np.argmin(np.abs((width - edges) / width - args["holdout_fraction"]))]
    assert val.col_off.min() == line
    assert f"east {(width - line) / width:.0%}" in dm.split_description
    # a location's dates all on one side; both sides hold every date (budgets count dates)
    every = usable_manifest(lulc_store)
    side = {**{(r.row_off, r.col_off): "train" for r in train.itertuples()},
            **{(r.row_off, r.col_off): "val" for r in val.itertuples()}}  # fmt: skip
    assert not places(train) & places(val)
    for (row, col), tiles in every.groupby(["row_off", "col_off"]):
        chosen = train if side.get((row, col)) == "train" else val
        n = ((chosen.row_off == row) & (chosen.col_off == col)).sum()
        assert n in (0, len(tiles)), (row, col)  # every usable date of it, or none
    assert set(train.scene) == set(val.scene) == set(every.scene)
    assert len(set(every.scene)) == 5


def test_select_holds_out_whole_training_locations(lulc_store):
    args = shipped_args(LULC, store=str(lulc_store), select_fraction=0.25)
    full = RSSegDataModule(**args)
    full.setup("fit")
    dm = RSSegDataModule(**{**args, "select_fraction": 0.25, "subset_seed": 1})
    dm.setup("fit")
    train = manifest_rows(lulc_store, dm.train_dataset.index)
    select = manifest_rows(lulc_store, dm.select_dataset.index)
    both = manifest_rows(lulc_store, full.train_dataset.index)
    both = pd.concat([both, manifest_rows(lulc_store, full.select_dataset.index)])
    locations = places(both)
    held = places(select)
    assert not held & places(train)
    assert len(held) == dm.select_locations == round(0.25 * len(locations))
    assert len(train) + len(select) == len(both)  # every date of a held-out location
    val = manifest_rows(lulc_store, dm.val_dataset.index)
    assert not held & places(val)


def test_select_is_empty_where_it_would_round_to_no_location(lulc_store):
    dm = RSSegDataModule(**shipped_args(LULC, store=str(lulc_store), select_fraction=0.05))
    dm.setup("fit")
    assert dm.select_dataset is None
    assert dm.select_locations == 0


def test_slab_split_training_crops_never_touch_the_validation_slab(ct_organs_store):
    args = shipped_args(CT, stores=[str(ct_organs_store)])
    dm = CTSegDataModule(**args)
    dm.setup("fit")
    axis, margin, crop = args["slab_axis"], args["slab_margin"], args["crop_size"]
    assert args["val_split"] == "slab"
    assert args["slab_side"] == "start"
    assert margin > 0
    whole = CTSegDataModule(**{**args, "val_split": "train"})
    whole.setup("fit")
    full = whole.val_dataset[0]["label"][0, 0].numpy()
    size = round(full.shape[axis] * args["slab_fraction"])
    val = dm.val_dataset[0]["label"][0, 0].numpy()
    np.testing.assert_array_equal(val, np.take(full, range(size), axis=axis))
    assert all((val == c).any() for c in (1, 2, 3))  # every organ is in the slab
    origins = np.concatenate([dm.train_dataset[i]["origin"].numpy() for i in range(100)])
    assert origins[:, axis].min() >= size + margin  # clear of the slab and its margin
    assert (origins[:, axis] + crop <= full.shape[axis]).all()
    assert len(np.unique(origins[:, axis])) > 1  # drawn, not pinned to one place
