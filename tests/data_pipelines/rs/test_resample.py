"""Masked resampling of coarse bands onto a finer grid: the same kernels as GDAL where every
pixel is valid, and nodata that never leaks into its neighbours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from data_pipelines.rs.resample import masked_resample, sample_weights


@pytest.mark.parametrize("kind", ["bilinear", "cubic", "average"])
def test_all_valid_matches_gdal_upsampling(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    coarse = rng.uniform(100, 4000, (12, 12)).astype(np.float32)
    path = tmp_path / "coarse.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=12, height=12, count=1, dtype="float32",
        crs="EPSG:32632", transform=from_origin(0, 720, 60, 60),
    ) as dst:  # fmt: skip
        dst.write(coarse, 1)
    with rasterio.open(path) as src:
        gdal = src.read(1, out_shape=(72, 72), resampling=Resampling[kind]).astype(np.float64)
    weights = sample_weights(0.0, 1 / 6, 72, 12, kind)
    ours, kept = masked_resample(coarse, np.ones_like(coarse, dtype=bool), weights, weights)
    assert kept.all()
    np.testing.assert_allclose(ours, gdal, rtol=1e-5, atol=0.05)


@pytest.mark.parametrize("kind", ["bilinear", "cubic", "average"])
def test_nodata_stays_nodata_and_never_blends_in(kind: str) -> None:
    coarse = np.full((6, 6), 2000.0)
    coarse[:, 4:] = 0.0  # nodata beyond the edge
    valid = coarse != 0
    weights = sample_weights(0.0, 0.5, 12, 6, kind)  # 20 m -> 10 m
    out, kept = masked_resample(coarse, valid, weights, weights)
    assert not kept[:, 8:].any()  # under nodata: nodata
    assert np.isnan(out[:, 8:]).all()
    assert kept[:, :8].all()
    np.testing.assert_allclose(out[:, :8], 2000.0)  # only valid neighbours: no fringe


def test_weights_drop_taps_beyond_the_edge() -> None:
    w = sample_weights(0.0, 1 / 3, 9, 3, "bilinear")
    np.testing.assert_allclose(w[1:-1].sum(1), 1.0)
    # the first centre (1/6) lies before pixel 0's centre: the tap at -1 is dropped
    np.testing.assert_allclose(w[0], [2 / 3, 0.0, 0.0])
    # output 4 (centre 1.5) sits on source pixel 1's centre
    np.testing.assert_allclose(w[4], [0.0, 1.0, 0.0])
