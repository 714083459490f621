"""Labeled RS tiles: the columnar index with label arrays, compact batches, and the batched
transform equal to the per-sample reference (flips and quarter turns for image and label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.store.index import build_sample_index
from data_pipelines.store.read import LazyZarrArrays, read_calibrated
from geomed_mim.data.segmentation import RSSegDataModule, RSSegDataset
from tests.geomed_mim.conftest import REPO_ROOT, build_store


@pytest.fixture(scope="module")
def lulc_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg_data") / "store"
    build_store("--config", str(REPO_ROOT / "configs/data/demo_lulc.yaml"), "--output", str(out))
    return out


def test_batched_flips_and_turns_equal_the_per_sample_reference(lulc_store) -> None:
    index = build_sample_index(lulc_store, None, labels=True)
    mean, std = [0.1] * 13, [0.05] * 13
    ds = RSSegDataset(lulc_store, index, mean, std, augment=True)
    rows = list(range(min(len(ds), 8)))
    seeds = [100 + i for i in rows]
    out = ds.transform(ds.load_batch(rows, seeds))
    assert out["label"].dtype == torch.int64
    assert set(out) == {"image", "label", "index"}
    reader = LazyZarrArrays(lulc_store)
    turns = set()
    for k, (i, seed) in enumerate(zip(rows, seeds, strict=True)):
        torch.manual_seed(seed)  # the per-tile loader drew from torch's generator like this
        flip_lr, flip_ud, turn = torch.rand(()) < 0.5, torch.rand(()) < 0.5, torch.randint(4, ())
        turns.add(int(turn))
        values = torch.from_numpy(read_calibrated(lulc_store, *index.sample(i)))
        image = torch.nan_to_num((values - 0.1) / 0.05, nan=0.0)
        label = torch.from_numpy(
            reader.read(index.label_path(i), index.sample(i)[1]).astype(np.int64)
        )
        if flip_lr:
            image, label = image.flip(-1), label.flip(-1)
        if flip_ud:
            image, label = image.flip(-2), label.flip(-2)
        image, label = image.rot90(int(turn), (-2, -1)), label.rot90(int(turn), (-2, -1))
        assert torch.equal(out["image"][k], image)
        assert torch.equal(out["label"][k], label)
    assert len(turns) > 1


def test_data_module_subset_and_hook(lulc_store) -> None:
    dm = RSSegDataModule(str(lulc_store), batch_size=4, val_split=None, train_fraction=0.5)
    dm.setup("fit")
    full = build_sample_index(lulc_store, "train", labels=True)
    assert len(dm.train_dataset) == max(1, round(len(full) * 0.5))
    subset = {dm.train_dataset.index.sample(i) for i in range(len(dm.train_dataset))}
    assert subset <= {full.sample(i) for i in range(len(full))}
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["image"].shape == (4, 13, 32, 32)
    assert batch["label"].shape == (4, 32, 32)
    assert dm.on_after_batch_transfer({"path": "scene.tif"}, 0) == {"path": "scene.tif"}


@pytest.mark.parametrize(("fraction", "scenes"), [(0.25, 1), (0.5, 2), (0.01, 1), (1.0, 4)])
def test_scene_budget_takes_whole_scenes(lulc_store, fraction, scenes) -> None:
    """``subset_unit="scene"``: round(fraction · 4 training scenes), at least one, each with all
    its usable tiles; the seed picks which."""
    import pandas as pd

    manifest = pd.read_parquet(lulc_store / "manifest.parquet")
    usable = manifest[(manifest["split"] == "train") & manifest["dup_of"].isna()]
    tiles_per_scene = usable.groupby("scene").size().to_dict()  # near-duplicates left out
    picked = set()
    for seed in range(6):
        dm = RSSegDataModule(str(lulc_store), val_split=None, train_fraction=fraction,
                             subset_seed=seed, subset_unit="scene")  # fmt: skip
        dm.setup("fit")
        index = dm.train_dataset.index
        chosen = {index.paths[a].rsplit("/", 1)[-1] for a in np.unique(index.array)}
        assert len(chosen) == scenes
        assert len(index) == sum(tiles_per_scene[s] for s in chosen)
        picked |= chosen
    assert len(picked) > scenes or scenes == 4  # different seeds, different scenes
    with pytest.raises(ValueError, match="subset_unit"):
        RSSegDataModule(str(lulc_store), subset_unit="pixel")
