"""Splits by location with the shipped evaluation configs: the LULC demo's spatial hold-out
checked against the manifest's windows, held-out select locations, and the CT demo's slab
split checked against the crops training actually reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from geomed_mim.data.datamodules import CTDataModule
from geomed_mim.data.segmentation import CTSegDataModule, RSSegDataModule
from geomed_mim.data.splits import SlabSplit, spatial_holdout
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
    reach = int(args["crop_overhang"] * crop)  # crops may overhang the part; that is padding
    assert origins[:, axis].min() >= size + margin - reach
    assert (origins[:, axis] + crop <= full.shape[axis] + reach).all()
    assert len(np.unique(origins[:, axis])) > 1  # drawn, not pinned to one place


def test_crops_overhanging_the_training_part_read_padding_there(ct_organs_store):
    """With the shipped overhang, crops reach past the training part's end at the slab (as
    sliding-window inference pads the slab): what lies past it is padding and background,
    never the margin's or the slab's voxels; the rest of the crop is the volume."""
    args = shipped_args(CT, stores=[str(ct_organs_store)])
    assert args["crop_overhang"] > 0
    assert args["slab_axis"] == 2
    dm = CTSegDataModule(**args)
    crops = dm.crops(
        "train", False, return_labels=True, slab=dm.slab, slab_part="train",
        overhang=args["crop_overhang"], samples_per_epoch=40,
    )  # fmt: skip
    crop, case = args["crop_size"], crops.cases[0]
    volume = crops._array(str(ct_organs_store), case.array)
    labels = crops._array(str(ct_organs_store), case.label_array).read_all()
    first = crops.extent(case)[2][0]  # the first training slice
    # the volume padded by a crop on every side, as the loader reads past its edges
    padded = np.pad(volume.read_all(), crop, constant_values=volume.fill_value)
    padded_labels = np.pad(labels, crop)
    pad = float(crops.to_intensity(np.array(volume.fill_value)))
    overhanging = 0
    for i in range(len(crops)):
        item = crops[i]
        for image, label, origin in zip(item["image"], item["label"], item["origin"], strict=True):
            x, y, z = (int(v) + crop for v in origin)  # into the padded volume
            outside = max(0, first - int(origin[2]))  # slices before the training part
            assert bool((image[0, :, :, :outside] == pad).all())
            assert not label[0, :, :, :outside].any()
            box = (slice(x, x + crop), slice(y, y + crop), slice(z + outside, z + crop))
            expected = crops.to_intensity(np.ascontiguousarray(padded[box]))
            np.testing.assert_array_equal(image[0, :, :, outside:].numpy(), expected)
            np.testing.assert_array_equal(label[0, :, :, outside:].numpy(), padded_labels[box])
            overhanging += outside > 0
    assert overhanging > 0  # some crops did reach past the training part


def grid_boxes(n: int, size: float = 10.0, dates: int = 2) -> np.ndarray:
    """``dates`` copies of an n × n grid of touching ``size``-unit tiles: [x0, y0, x1, y1]."""
    x, y = np.meshgrid(np.arange(n) * size, np.arange(n) * size)
    one = np.stack([x.ravel(), y.ravel(), x.ravel() + size, y.ravel() + size], axis=1)
    return np.concatenate([one] * dates)


@pytest.mark.parametrize(
    ("side", "axis", "high"),
    [("east", 0, True), ("west", 0, False), ("north", 1, True), ("south", 1, False)],
)
def test_every_side_holds_out_its_share_with_the_margin(side, axis, high):
    """A 10 × 10 grid of 10-unit tiles (pixel 1 unit), 2 dates: 30 % on ``side`` validates,
    the 2-tile-wide margin band (margin 12 px: the column touching the line and the next) is
    dropped, the rest trains."""
    boxes = grid_boxes(10)
    split = spatial_holdout(boxes, np.ones(len(boxes)), side, 0.3, margin=12)
    start = boxes[:, axis] if high else 100 - boxes[:, axis + 2]  # distance from the far side
    np.testing.assert_array_equal(split.val, start >= 70)
    np.testing.assert_array_equal(split.train, start + 10 <= 70 - 12)
    assert split.share == pytest.approx(0.3)
    assert split.train.sum() == 2 * 10 * 5  # 5 of 10 columns, both dates
    assert f"the {side} 30% of the area" in split.description


def test_refusals_name_the_option():
    boxes, pixel = grid_boxes(4), np.ones(32)
    with pytest.raises(ValueError, match=r"^holdout_side 'up'"):
        spatial_holdout(boxes, pixel, "up", 0.3, 0)
    with pytest.raises(ValueError, match=r"^holdout_margin 40"):
        spatial_holdout(boxes, pixel, "east", 0.3, 40)
    with pytest.raises(ValueError, match=r"^holdout_fraction 1"):
        spatial_holdout(boxes, pixel, "east", 1.0, 0)
    with pytest.raises(ValueError, match=r"^slab_fraction 0"):
        SlabSplit(fraction=0.0)


@pytest.mark.parametrize("side", ["start", "end"])
def test_slab_bounds_leave_the_margin_between(side):
    slab = SlabSplit(axis=2, fraction=0.25, margin=4, side=side)
    val, train = slab.bounds(59, "val"), slab.bounds(59, "train")
    assert val[1] - val[0] == 15  # round(59 × 0.25)
    gap = train[0] - val[1] if side == "start" else val[0] - train[1]
    assert gap == 4
    assert min(val[0], train[0]) == 0
    assert max(val[1], train[1]) == 59


def test_ct_pretraining_validation_reads_the_same_crops_at_every_validation(ct_organs_store):
    """The CT pretraining demo's data settings: its validation crops, inside the held-out slab,
    are the same at every validation and in any worker (each item seeded by its index), and
    every volume is visited ``val_visits_per_volume`` times; training crops keep being drawn."""
    demo = REPO_ROOT / "configs/pretrain/hi_end_mae_demo_ct_cpu.yaml"
    args = shipped_args(demo, stores=[str(ct_organs_store)])
    dm = CTDataModule(**args)
    dm.setup("fit")
    val = dm.val_dataset
    assert len(val) == args["val_visits_per_volume"] * len(val.dataset.cases)
    first = [val[i]["origin"] for i in range(len(val))]
    again = CTDataModule(**args)
    again.setup("fit")
    for i in reversed(range(len(val))):  # another order, another dataset object
        torch.testing.assert_close(again.val_dataset[i]["origin"], first[i])
        torch.testing.assert_close(again.val_dataset[i]["image"], val[i]["image"])
    assert len({tuple(o.flatten().tolist()) for o in first}) == len(first)  # visits differ
    # the case's slab (30 % of 59 Z slices) is shorter than a crop: each crop holds the whole
    # slab and padding beyond it, never the margin or the training slices behind it
    axis, crop = args["slab_axis"], args["crop_size"]
    size = round(val.dataset.cases[0].shape[axis] * args["slab_fraction"])
    assert size < crop
    pad = float(val.dataset.to_intensity(np.array(val.dataset._array(
        str(ct_organs_store), val.dataset.cases[0].array).fill_value)))  # fmt: skip
    blanked = 0
    for i, origins in enumerate(first):
        images = val[i]["image"]  # [crops, 1, D, H, W]
        for image, start in zip(images, origins[:, axis].tolist(), strict=True):
            inside = torch.movedim(image[0], axis, 0)  # the slab axis first
            assert start <= 0 < start + crop  # the crop begins at or before the slab
            beyond = inside[size - start :]
            assert bool((beyond == pad).all())
            blanked += beyond.shape[0]
            assert not bool((inside[-start : size - start] == pad).all())  # the slab is read
    assert blanked > 0  # crops that would have reached past the slab
    train = [dm.train_dataset[0]["origin"] for _ in range(2)]
    assert not torch.equal(*train)  # training crops are drawn anew
