from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from data_pipelines.dedup import (
    exact_hash,
    group_representatives,
    hamming,
    mark_duplicates,
    near_duplicate_pairs,
    near_pairs_exhaustive,
    near_pairs_mih,
    perceptual_hash,
)


def _real_tile(demo_data: Path, i: int = 0) -> np.ndarray:
    path = demo_data / "sentinel2_l1c" / "scenes" / f"s2_l1c_reference_scene_{i}.tif"
    with rasterio.open(path) as src:
        return src.read()[:, :64, :64]


def test_exact_hash_sees_pixels_shape_and_dtype(demo_data: Path) -> None:
    t = _real_tile(demo_data)
    assert exact_hash(t) == exact_hash(t.copy())
    assert exact_hash(t) != exact_hash(t.astype(np.int32))
    assert exact_hash(t) != exact_hash(t.reshape(13, 32, 128))
    u = t.copy()
    u[0, 0, 0] += 1
    assert exact_hash(t) != exact_hash(u)


def test_perceptual_hash_survives_gain_offset_but_not_other_content(demo_data: Path) -> None:
    t = _real_tile(demo_data, 1)
    brighter = (t.astype(np.float64) * 1.08 + 40).round().astype(np.uint16)
    assert hamming(np.uint64(perceptual_hash(t)), np.uint64(perceptual_hash(brighter))) <= 2
    other = _real_tile(demo_data, 1)[:, ::-1, :]  # same statistics, different layout
    assert hamming(np.uint64(perceptual_hash(t)), np.uint64(perceptual_hash(other))) > 10


def test_mih_search_equals_exhaustive_search() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=6000, dtype=np.int64).view(np.uint64)
    for k in range(300):  # plant near copies at distance 0..5
        j = 3000 + k
        hashes[j] = hashes[k]
        for b in rng.choice(64, k % 6, replace=False):
            hashes[j] ^= np.uint64(1) << np.uint64(int(b))
    for radius in (0, 2, 4, 5):
        mih = {tuple(p) for p in near_pairs_mih(hashes, radius).tolist()}
        brute = {tuple(p) for p in near_pairs_exhaustive(hashes, radius).tolist()}
        assert mih == brute
        assert len(brute) >= sum(1 for k in range(300) if k % 6 <= radius)
    assert len(near_duplicate_pairs(hashes[:1], 4)) == 0


def test_union_find_keeps_first_of_each_group() -> None:
    pairs = np.array([[1, 4], [4, 6], [2, 3]])
    assert group_representatives(7, pairs).tolist() == [0, 1, 2, 2, 1, 5, 1]


def test_mark_duplicates_exact_before_near_and_skips_excluded() -> None:
    exact = ["a", "b", "a", None, "c", "d"]
    # item 1 is 5 bits from everything, item 4 is 1 bit from item 0, item 5 is 3 bits from it
    phash = np.array([0, 0b11111 << 50, 0, 0, 0b1 << 20, 0b111 << 40], dtype=np.uint64)
    candidates = np.array([True, True, True, False, True, True])
    dup_of, kind = mark_duplicates(exact, phash, candidates, radius=4)
    assert dup_of.tolist() == [-1, -1, 0, -1, 0, 0]
    assert kind == [None, None, "exact", None, "near", "near"]
    dup_of, kind = mark_duplicates(exact, phash, candidates, radius=None)
    assert kind == [None, None, "exact", None, None, None]
