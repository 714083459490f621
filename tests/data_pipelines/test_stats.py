from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.stats import BandMoments, BandSample, percentiles_from_samples


def test_chan_merge_equals_moments_of_the_concatenation() -> None:
    rng = np.random.default_rng(0)
    tiles = [rng.normal(loc=c, scale=2.0, size=(3, 8, 8)) for c in range(10)]
    tiles[3][1, :2] = np.nan  # NaNs are skipped per band
    total = BandMoments.empty(3)
    for t in reversed(tiles):  # order must not matter
        total = total.merge(BandMoments.of_tile(t))
    flat = np.concatenate([t.reshape(3, -1) for t in tiles], axis=1)
    for c in range(3):
        v = flat[c][np.isfinite(flat[c])]
        assert total.count[c] == len(v)
        assert total.mean[c] == pytest.approx(v.mean(), rel=1e-12)
        assert total.std[c] == pytest.approx(v.std(), rel=1e-10)
        assert total.minimum[c] == v.min()
        assert total.maximum[c] == v.max()


def test_percentiles_from_merged_samples() -> None:
    s1, s2 = BandSample(1, limit=10_000), BandSample(1, limit=10_000)
    s1.add_tile(np.arange(0, 500, dtype=float).reshape(1, 1, -1), per_tile=500)
    s2.add_tile(np.arange(500, 1000, dtype=float).reshape(1, 1, -1), per_tile=500)
    p = percentiles_from_samples([s1.finish(), s2.finish()], 1)
    assert p["p50"][0] == pytest.approx(499.5)
    assert p["p1"][0] == pytest.approx(9.99)
