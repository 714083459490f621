"""RS tiles from a built store: selection, normalization, augmentation, lazy per-worker opening."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from data_pipelines.store.read import read_calibrated
from geomed_mim.data.datamodules import RSDataModule, concat_crops
from geomed_mim.data.rs import RSTileDataset, random_resized_crop_params
from tests.geomed_mim.conftest import build_store
from tests.geomed_mim.samples import training_image


def test_datamodule_uses_the_stores_band_stats(demo_store):
    dm = RSDataModule(str(demo_store), batch_size=8, num_workers=0)
    import zarr

    attrs = zarr.open_group(str(demo_store / "store.zarr"), mode="r").attrs["band_stats"]
    assert dm.metadata()["stats_source"] == "store attribute band_stats"
    assert dm.metadata()["mean"] == attrs["mean"]
    assert dm.metadata()["std"] == attrs["std"]


def test_datamodule_metadata_and_on_the_fly_stats(demo_store, tmp_path, caplog):
    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    meta_path = store / "store.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["band_stats"]  # a store built before statistics existed
    meta_path.write_text(json.dumps(meta))
    demo_store = store
    dm = RSDataModule(str(demo_store), batch_size=8, num_workers=0)
    assert dm.in_chans == 13
    assert dm.img_size == 32
    assert dm.spatial_dims == 2
    assert dm.bands[0] == "B01"
    assert dm.bands[-1] == "B12"
    meta = dm.metadata()
    assert "no band_stats" in caplog.text  # the store of this build has none: computed, and said so
    assert meta["bands"] == dm.bands
    assert len(meta["mean"]) == 13
    assert meta["preview_bands"] == [3, 2, 1]  # B04, B03, B02
    dm.setup("fit")
    manifest = pq.read_table(demo_store / "manifest.parquet").to_pandas()
    kept = manifest[manifest.excluded.isna() & manifest.dup_of.isna()]
    assert len(dm.train_dataset) == (kept.split == "train").sum()
    assert len(dm.val_dataset) == (kept.split == "val").sum()
    # without augmentation, normalized training tiles have ~zero mean and unit std per band
    plain = RSTileDataset(demo_store, meta["mean"], meta["std"], split="train", augment=False)
    stack = torch.stack([training_image(plain, i) for i in range(len(plain))])  # [N, C, H, W]
    per_band = stack.transpose(0, 1).reshape(13, -1)
    torch.testing.assert_close(per_band.mean(1), torch.zeros(13), atol=0.05, rtol=0)
    torch.testing.assert_close(per_band.std(1), torch.ones(13), atol=0.05, rtol=0)


def test_store_band_stats_are_used_when_present(demo_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    meta_path = store / "store.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["band_stats"] = {"mean": [1000.0] * 13, "std": [500.0] * 13}
    meta_path.write_text(json.dumps(meta))
    dm = RSDataModule(str(store), batch_size=4, num_workers=0, crop_size=16)
    assert dm.metadata()["mean"] == [1000.0] * 13
    assert dm.metadata()["stats_source"] == "store attribute band_stats"
    dm.setup("fit")
    values = read_calibrated(store, *dm.train_dataset.index.sample(0))  # TOA reflectance
    plain = RSTileDataset(store, [1000.0] * 13, [500.0] * 13, augment=False)
    torch.testing.assert_close(training_image(plain, 0), (torch.from_numpy(values) - 1000) / 500)
    assert training_image(dm.train_dataset, 0).shape == (13, 16, 16)


def test_loader_with_workers_opens_store_lazily(demo_store):
    dm = RSDataModule(str(demo_store), batch_size=8, num_workers=2, persistent_workers=False)
    dm.setup("fit")
    assert not dm.train_dataset.reader.is_open  # nothing opened in the parent
    batches = list(dm.train_dataloader())
    assert not dm.train_dataset.reader.is_open
    assert len(batches) == -(-len(dm.train_dataset) // 8)  # the last batch may be short
    compact = batches[0]
    assert compact["tile"].dtype == torch.uint16  # the stored DN travel, not float32
    assert compact["tile"].shape == (8, 13, 32, 32)
    image = dm.on_after_batch_transfer(compact, 0)["image"]
    assert image.shape == (8, 13, 32, 32)
    assert image.dtype == torch.float32
    seen = torch.cat([b["index"] for b in batches])
    assert len(set(seen.tolist())) == len(seen)


def test_random_resized_crop_params_in_bounds():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_params(32, 48, (0.2, 1.0), (3 / 4, 4 / 3), gen)
        assert top >= 0
        assert top + h <= 32
        assert left >= 0
        assert left + w <= 48
        assert 0.15 * 32 * 48 <= h * w <= 32 * 48


def test_ct_crops_are_concatenated_into_one_batch():
    items = [{"image": torch.randn(3, 1, 8, 8, 8), "index": i} for i in range(2)]
    batch = concat_crops(items)
    assert batch["image"].shape == (6, 1, 8, 8, 8)
    assert batch["index"].tolist() == [0, 1, 2, 3, 4, 5]
    loader = DataLoader(items, batch_size=2, collate_fn=concat_crops)
    assert next(iter(loader))["image"].shape[0] == 6


def _first_train_row(store):
    manifest = pq.read_table(store / "manifest.parquet").to_pandas()
    rows = manifest[manifest.excluded.isna() & manifest.dup_of.isna() & (manifest.split == "train")]
    return rows.iloc[0]


def test_nodata_pixels_become_zero_after_normalization(demo_store, tmp_path):
    """A compact store's nodata DN (0 for Sentinel-2) calibrates to NaN, which normalizes to 0."""
    import zarr

    store = tmp_path / "store"
    shutil.copytree(demo_store, store)
    row = _first_train_row(store)
    arr = zarr.open_array(str(store / "store.zarr" / row["array"]), mode="r+")
    tile = arr[row["index"]]
    tile[:, :4, :4] = 0  # a nodata corner
    arr[row["index"]] = tile
    ds = RSTileDataset(store, [0.1] * 13, [0.05] * 13, split="train", augment=False)
    k = [ds.index.sample(i) for i in range(len(ds))].index((row["array"], int(row["index"])))
    assert torch.isnan(torch.from_numpy(read_calibrated(store, row["array"], row["index"]))).any()
    image = training_image(ds, k)
    assert torch.isfinite(image).all()
    assert (image[:, :4, :4] == 0).all()
    assert (image[:, 4:, 4:] != 0).any()


def test_float32_store_nan_pixels_become_zero_after_normalization(tmp_path):
    """A --store-dtype float32 store holds NaN at nodata; the loader maps it to 0 as well."""
    import zarr

    out = tmp_path / "f32"
    build_store("--output", str(out), "--store-dtype", "float32", "--tile-size", "32")
    row = _first_train_row(out)
    arr = zarr.open_array(str(out / "store.zarr" / row["array"]), mode="r+")
    assert arr.dtype == np.float32
    tile = arr[row["index"]]
    tile[:, :4, :4] = np.nan
    arr[row["index"]] = tile
    ds = RSTileDataset(out, [0.1] * 13, [0.05] * 13, split="train", augment=False)
    k = [ds.index.sample(i) for i in range(len(ds))].index((row["array"], int(row["index"])))
    image = training_image(ds, k)
    assert torch.isfinite(image).all()
    assert (image[:, :4, :4] == 0).all()


def test_dataset_pickles_as_its_index_arrays(demo_store):
    """A worker receives the index arrays and a few strings: nothing per sample."""
    import pickle

    ds = RSTileDataset(demo_store, [0.0] * 13, [1.0] * 13, split=None)
    ds.load_batch([0, 1], [0, 1])  # opened and cached things are not part of the pickle
    blob = pickle.dumps(ds)
    assert len(blob) < ds.index.nbytes + 64_000
    copy = pickle.loads(blob)
    assert not copy.reader.is_open
    assert torch.equal(copy.load_batch([4], [9])["tile"], ds.load_batch([4], [9])["tile"])
    for value in vars(ds.index).values():
        assert isinstance(value, np.ndarray | tuple | dict | int | type(None))
        if isinstance(value, tuple):
            assert len(value) <= len(ds.index.paths)
