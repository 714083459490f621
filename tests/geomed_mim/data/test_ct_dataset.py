"""CTCropDataset on a real store: crop size, window, labels, foreground bias, workers, seeds."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from geomed_mim.data.chunked_volume import ChunkedVolume
from geomed_mim.data.ct import CTCropDataset


def _stored_crop(store: Path, array: str, origin, size, fill: int) -> np.ndarray:
    """The crop at ``origin`` read through zarr itself, padded with ``fill`` outside."""
    z = zarr.open_array(str(store / "store.zarr" / array), mode="r")
    out = np.full(size, fill, dtype=z.dtype)
    lo = [max(0, o) for o in origin]
    hi = [min(d, o + s) for d, o, s in zip(z.shape, origin, size, strict=True)]
    src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    dst = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin, strict=True))
    out[dst] = z[src]
    return out


def test_crops_have_requested_size_and_window(ct_demo_store: Path) -> None:
    size = (96, 80, 64)  # the abdomen is 59 voxels deep: the last axis is padded with air
    ds = CTCropDataset(ct_demo_store, crop_size=size, crops_per_volume=3, window=(-1000, 1000),
                       split=None, augment=False, foreground_fraction=0.0)  # fmt: skip
    assert len(ds) == 2  # the byte copy is a duplicate and left out
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 1, *size)
        assert item["image"].dtype == torch.float32
        assert item["origin"].shape == (3, 3)
        ref = next(c for c in ds.cases if c.case == item["case"])
        for crop, origin in zip(item["image"], item["origin"].tolist(), strict=True):
            hu = _stored_crop(ct_demo_store, ref.array, origin, size, -1024).astype(np.float32)
            expected = np.clip((hu + 1000) / 2000, 0, 1)
            assert torch.allclose(crop[0], torch.from_numpy(expected), atol=1e-6)


def test_default_window_maps_minus175_to_0_and_250_to_1(ct_demo_store: Path) -> None:
    ds = CTCropDataset(ct_demo_store, split=None)
    assert ds.window == (-175.0, 250.0)
    out = ds.to_intensity(np.array([-1024, -175, 37, 250, 3000], dtype=np.int16))
    assert out.tolist() == pytest.approx([0.0, 0.0, 212 / 425, 1.0, 1.0])


def test_labels_aligned_and_foreground_crops_hit_labels(ct_demo_store: Path) -> None:
    ds = CTCropDataset(ct_demo_store, crop_size=64, crops_per_volume=4, split=None, augment=False,
                       foreground_fraction=1.0, return_labels=True, window=None)  # fmt: skip
    for i in range(len(ds)):
        item = ds[i]
        ref = next(c for c in ds.cases if c.case == item["case"])
        assert item["label"].shape == item["image"].shape
        for img, lab, origin in zip(item["image"], item["label"], item["origin"].tolist(),
                                    strict=True):  # fmt: skip
            assert lab.sum() > 0, "a crop centred on a label voxel must contain labels"
            hu = _stored_crop(ct_demo_store, ref.array, origin, (64,) * 3, -1024)
            seg = _stored_crop(ct_demo_store, ref.label_array, origin, (64,) * 3, 0)
            assert np.array_equal(img[0].numpy(), hu.astype(np.float32))
            assert np.array_equal(lab[0].numpy(), seg)


def test_augment_moves_image_and_label_together(ct_demo_store: Path) -> None:
    ds = CTCropDataset(ct_demo_store, crop_size=8, split=None, intensity_jitter=0.0)
    img = np.arange(8**3, dtype=np.float32).reshape(8, 8, 8)
    rng = np.random.default_rng(3)
    changed = 0
    for _ in range(20):
        a, b = ds._flip_rotate(img, img.astype(np.int32), rng)
        assert np.array_equal(a, b)
        changed += not np.array_equal(a, img)
    assert changed >= 15


def test_foreground_bias_moves_crops_towards_labels(ct_demo_store: Path) -> None:
    """On the chest scan (one small label: the pulmonary artery) centred crops hold far more
    label than uniform ones."""

    def label_fraction(fg: float) -> float:
        torch.manual_seed(0)
        ds = CTCropDataset(ct_demo_store, crop_size=32, crops_per_volume=8, split=None,
                           augment=False, foreground_fraction=fg, return_labels=True)  # fmt: skip
        chest = next(i for i, c in enumerate(ds.cases) if c.case == "chest_ctpa")
        return float(np.mean([(ds[chest]["label"] > 0).float().mean() for _ in range(5)]))

    assert label_fraction(1.0) > 3 * label_fraction(0.0)


def test_seeded_and_reproducible(ct_demo_store: Path) -> None:
    def origins(seed: int) -> list:
        torch.manual_seed(123)
        ds = CTCropDataset(ct_demo_store, split=None, seed=seed)
        return [ds[i % 2]["origin"].tolist() for i in range(4)]

    assert origins(0) == origins(0)
    assert origins(0) != origins(1)


def test_multiworker_dataloader_opens_stores_in_workers_only(ct_demo_store: Path) -> None:
    ds = CTCropDataset(ct_demo_store, crop_size=48, crops_per_volume=2, split=None,
                       samples_per_epoch=8)  # fmt: skip

    def run() -> list:
        torch.manual_seed(7)
        loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
        batches = list(loader)
        assert all(b["image"].shape == (2, 2, 1, 48, 48, 48) for b in batches)
        return [o for b in batches for o in b["origin"].reshape(-1, 3).tolist()]

    first = run()
    assert len(first) == 16
    assert ds._pid is None  # the parent never opened an array
    assert ds._arrays == {}
    assert len({tuple(o) for o in first}) > 8, "workers must not repeat each other's crops"
    assert run() == first  # same torch seed -> same crops, worker for worker


def test_duplicates_included_on_request_and_empty_split_is_empty(ct_demo_store: Path) -> None:
    assert len(CTCropDataset(ct_demo_store, split=None, include_duplicates=True)) == 3
    assert len(CTCropDataset(ct_demo_store, split="val")) == 0  # built with --val-fraction 0


def test_pickled_dataset_drops_opened_arrays(ct_demo_store: Path) -> None:
    ds = CTCropDataset(ct_demo_store, crop_size=32, split=None)
    ds[0]
    assert ds._arrays
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays == {}
    assert clone[0]["image"].shape == (4, 1, 32, 32, 32)


def test_chunk_reader_matches_zarr_fast_and_fallback(tmp_path: Path) -> None:
    from zarr.codecs import BloscCodec

    rng = np.random.default_rng(0)
    data = rng.integers(-1024, 2000, size=(70, 50, 40), dtype=np.int16)
    plain = zarr.create_array(store=str(tmp_path / "p"), shape=data.shape, chunks=(16, 16, 16),
                              dtype="int16", fill_value=-1024,
                              compressors=[BloscCodec(cname="lz4", shuffle="shuffle")])  # fmt: skip
    sharded = zarr.create_array(store=str(tmp_path / "s"), shape=data.shape, chunks=(8, 8, 8),
                                shards=(16, 16, 16), dtype="int16", fill_value=-1024)  # fmt: skip
    plain[...] = data
    sharded[...] = data
    fast, slow = ChunkedVolume(tmp_path / "p"), ChunkedVolume(tmp_path / "s")
    assert fast.fast
    assert not slow.fast
    cache: dict = {}
    for _ in range(20):
        origin = tuple(int(rng.integers(-10, s)) for s in data.shape)
        size = (24, 20, 30)
        ref = np.full(size, -1024, np.int16)
        lo = [max(0, o) for o in origin]
        hi = [min(d, o + s) for d, o, s in zip(data.shape, origin, size, strict=True)]
        ref[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin, strict=True))] = data[
            tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        ]
        assert np.array_equal(fast.read(origin, size, cache), ref)
        assert np.array_equal(slow.read(origin, size), ref)


def test_crops_from_a_store_on_s3_equal_the_local_crops(ct_demo_store: Path) -> None:
    """The store published to a real S3-compatible server (moto) is read in place, chunk by
    ranged chunk, into the same crops and labels as the local folder for the same seeds."""
    import boto3

    from data_pipelines.store.object_store import publish
    from tests.data_pipelines.s3_server import moto_s3

    def crops(store: str) -> list[dict]:
        torch.manual_seed(7)
        ds = CTCropDataset(store, crop_size=40, crops_per_volume=2, split=None, seed=5,
                           return_labels=True)  # fmt: skip
        return [ds[i % len(ds.cases)] for i in range(3)]

    with moto_s3() as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ctstores")
        publish(ct_demo_store, "s3://ctstores/demo")
        remote = crops("s3://ctstores/demo")
    for got, want in zip(remote, crops(str(ct_demo_store)), strict=True):
        assert got.keys() == want.keys()
        for key in got:
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def test_overhang_is_a_share_of_the_crop_up_to_half(ct_demo_store: Path) -> None:
    with pytest.raises(ValueError, match=r"^overhang: 0\.6 is not in \[0, 0\.5\]"):
        CTCropDataset(ct_demo_store, crop_size=32, overhang=0.6)
    # half a crop at most: every crop keeps at least half of itself inside the volume
    ds = CTCropDataset(ct_demo_store, crop_size=32, split=None, augment=False,
                       foreground_fraction=0.0, overhang=0.5, samples_per_epoch=20)  # fmt: skip
    shapes = {c.case: np.array(c.shape) for c in ds.cases}
    reached = False
    for i in range(len(ds)):
        item = ds[i]
        origins = item["origin"].numpy()
        assert (origins >= -16).all()
        assert (origins + 32 <= shapes[item["case"]] + 16).all()
        reached |= bool((origins < 0).any())
    assert reached  # crops do reach past the volume's start


@pytest.mark.parametrize(
    ("flip_axes", "rotate90", "kept"), [([], False, True), ([0, 1, 2], True, False)]
)
def test_orientation_augmentation_can_keep_crops_as_stored(
    ct_demo_store: Path, flip_axes: list[int], rotate90: bool, kept: bool
) -> None:
    """Augmented crops with no flip axes, no rot90 and no jitter are the stored voxels; with
    every axis and rot90 some of them are turned (so the comparison can fail)."""
    size = (32, 32, 32)
    ds = CTCropDataset(ct_demo_store, crop_size=size, crops_per_volume=4, split=None, augment=True,
                       flip_axes=flip_axes, rotate90=rotate90, intensity_jitter=0.0,
                       window=(-1000, 1000), samples_per_epoch=4)  # fmt: skip
    same = []
    for i in range(len(ds)):
        item = ds[i]
        ref = next(c for c in ds.cases if c.case == item["case"])
        for crop, origin in zip(item["image"], item["origin"].tolist(), strict=True):
            hu = _stored_crop(ct_demo_store, ref.array, origin, size, -1024).astype(np.float32)
            same.append(
                torch.allclose(crop[0], torch.from_numpy(np.clip((hu + 1000) / 2000, 0, 1)))
            )
    assert all(same) if kept else not all(same)
    with pytest.raises(ValueError, match=r"^flip_axes: \[3\] must be axes among 0, 1, 2"):
        CTCropDataset(ct_demo_store, flip_axes=[3])
