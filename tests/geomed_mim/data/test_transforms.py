"""The batched transform equals a per-sample reference: normalization bit for bit, the same crop
and flips per seed whatever the batch, and the antialiased resize of ``F.interpolate``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_pipelines.store.read import read_calibrated
from geomed_mim.data.rs import RSTileDataset
from geomed_mim.data.transforms import (
    TileBatchTransform,
    as_int64,
    flip_rotate,
    resized_crop,
    standardize,
    uint16_via_int16,
)

MEAN = [0.05 + 0.01 * c for c in range(13)]
STD = [0.02 + 0.003 * c for c in range(13)]


def reference_image(store, ds: RSTileDataset, i: int, crop, flip, size: int) -> torch.Tensor:
    """One sample the way the per-tile loader made it: calibrated tile (NumPy), standardized,
    NaN -> 0, cropped, flipped, resized with antialiasing when its shape differs."""
    values = torch.from_numpy(read_calibrated(store, *ds.index.sample(i)))  # [C, H, W]
    mean = torch.tensor(MEAN).view(-1, 1, 1)
    std = torch.tensor(STD).view(-1, 1, 1)
    image = torch.nan_to_num((values - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)
    top, left, h, w = crop
    image = image[:, top : top + h, left : left + w]
    if flip[0]:
        image = image.flip(-1)
    if flip[1]:
        image = image.flip(-2)
    if tuple(image.shape[-2:]) != (size, size):
        image = F.interpolate(image[None], size=(size, size), mode="bilinear",
                              align_corners=False, antialias=True)[0]  # fmt: skip
    return image


def test_normalization_equals_the_per_sample_reference_bit_for_bit(demo_store) -> None:
    ds = RSTileDataset(demo_store, MEAN, STD, split=None, augment=False)
    rows = list(range(len(ds)))
    batch = ds.load_batch(rows, rows)
    assert batch["tile"].dtype == torch.uint16
    got = ds.transform.image(batch)  # [B, C, H, W]
    for k, i in enumerate(rows):
        values = torch.from_numpy(read_calibrated(demo_store, *ds.index.sample(i)))
        expected = (values - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)
        assert torch.equal(got[k], torch.nan_to_num(expected, nan=0.0))


@pytest.mark.parametrize("size", [32, 24, 48])
def test_crops_and_flips_follow_the_sample_seed_not_the_batch(demo_store, size) -> None:
    ds = RSTileDataset(demo_store, MEAN, STD, split=None, crop_size=size)
    rows = [3, 0, 7, 12, 5, 9]
    seeds = [1000 + 17 * i for i in rows]
    batch = ds.load_batch(rows, seeds)
    alone = ds.load_batch(rows[2:3], seeds[2:3])  # another batch: the same sample, the same crop
    assert torch.equal(alone["crop"][0], batch["crop"][2])
    assert torch.equal(alone["flip"][0], batch["flip"][2])
    images = ds.transform(batch)["image"]
    assert images.shape == (len(rows), 13, size, size)
    assert len({tuple(c) for c in batch["crop"].tolist()}) > 1  # really random boxes
    for k, (i, seed) in enumerate(zip(rows, seeds, strict=True)):
        torch.manual_seed(seed)
        item = ds[i]  # the per-sample path, torch's global generator seeded the same way
        assert torch.equal(item["crop"], batch["crop"][k])
        assert torch.equal(item["flip"], batch["flip"][k])
        assert torch.equal(item["tile"], batch["tile"][k])
        expected = reference_image(demo_store, ds, i, item["crop"].tolist(),
                                   item["flip"].tolist(), size)  # fmt: skip
        torch.testing.assert_close(images[k], expected, atol=2e-4, rtol=1e-4)


def test_resized_crop_mixes_enlarged_and_shrunk_boxes_in_one_batch() -> None:
    x = torch.randn(5, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    crop = torch.tensor([[0, 0, 40, 40], [3, 5, 20, 30], [10, 0, 30, 12], [0, 0, 7, 40],
                         [5, 5, 16, 16]])  # fmt: skip
    flip = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [1, 0]], dtype=torch.bool)
    out = resized_crop(x, crop, 24, flip)
    for b in range(5):
        top, left, h, w = crop[b].tolist()
        box = x[b, :, top : top + h, left : left + w]
        box = box.flip(-1) if flip[b, 0] else box
        box = box.flip(-2) if flip[b, 1] else box
        ref = F.interpolate(box[None], size=(24, 24), mode="bilinear", antialias=True)[0]
        torch.testing.assert_close(out[b], ref, atol=2e-4, rtol=1e-4)


def test_whole_tiles_are_only_flipped() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    crop = torch.tensor([[0, 0, 4, 4]] * 2)
    flip = torch.tensor([[True, False], [False, True]])
    out = resized_crop(x, crop, 4, flip)
    assert torch.equal(out[0], x[0].flip(-1))
    assert torch.equal(out[1], x[1].flip(-2))


def test_flip_rotate_moves_image_and_label_alike() -> None:
    image = torch.arange(3 * 2 * 5 * 5, dtype=torch.float32).view(3, 2, 5, 5)
    label = image[:, 0].long()
    flip = torch.tensor([[True, False], [False, True], [True, True]])
    rot = torch.tensor([1, 0, 3])
    got_image, got_label = flip_rotate(image, flip, rot), flip_rotate(label, flip, rot)
    for b in range(3):
        ref = image[b]
        ref = ref.flip(-1) if flip[b, 0] else ref
        ref = ref.flip(-2) if flip[b, 1] else ref
        ref = ref.rot90(int(rot[b]), (-2, -1))
        assert torch.equal(got_image[b], ref)
        assert torch.equal(got_label[b], ref[0].long())


def test_standardize_maps_nodata_to_the_mean() -> None:
    x = torch.tensor([[[[float("nan"), 2.0, float("inf")]]]])
    out = standardize(x.clone(), torch.tensor([1.0]), torch.tensor([0.5]))
    assert out.tolist() == [[[[0.0, 2.0, 0.0]]]]


def test_band_count_mismatch_is_an_error(demo_store) -> None:
    ds = RSTileDataset(demo_store, MEAN, STD, split=None, augment=False)
    batch = ds.load_batch([0], [0])
    with pytest.raises(ValueError, match="13 bands but the statistics have 2"):
        TileBatchTransform([0.0, 0.0], [1.0, 1.0], None)(batch)
    assert np.isfinite(ds.transform(batch)["image"].numpy()).all()


def test_uint16_read_through_int16_bits_is_exact() -> None:
    """The GPU path for uint16 (few CUDA kernels) gives the same numbers as a direct cast."""
    values = torch.arange(0, 65536, 7, dtype=torch.int32).to(torch.uint16)
    assert torch.equal(uint16_via_int16(values), values.to(torch.float32))
    assert torch.equal(as_int64(values), values.to(torch.int64))
