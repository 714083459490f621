from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.rs.exclusion import ExclusionRules, exclusion_reason, measure
from data_pipelines.rs.profiles import load_profile

S2 = load_profile("sentinel2_l1c")
L8 = load_profile("landsat8_l1")


def _textured(C: int = 13, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(500, 4000, size=(C, size, size)).astype(np.uint16)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda t: t.__setitem__((slice(None), slice(0, 20)), 0), "nodata"),
        (lambda t: t.__setitem__((3, slice(0, 8)), 65535), "saturated"),
        (lambda t: t.__setitem__(slice(None), 1234), "constant"),
        (lambda t: None, None),
    ],
)
def test_reasons(edit, reason: str | None) -> None:
    tile = _textured()
    edit(tile)
    q = measure(tile, S2, None)
    assert exclusion_reason(q, ExclusionRules(), S2) == reason


def test_out_of_range_on_float_profile() -> None:
    modis = load_profile("modis_toa14")
    tile = np.random.default_rng(0).uniform(0, 100, size=(14, 16, 16)).astype(np.float32)
    tile[:, :4] = 900.0  # a quarter of the pixels far outside [-100, 400]
    q = measure(tile, modis, None)
    assert q.out_of_range_fraction == pytest.approx(0.25)
    assert exclusion_reason(q, ExclusionRules(), modis) == "out_of_range"


def test_nan_counts_as_nodata() -> None:
    modis = load_profile("modis_toa14")
    tile = np.random.default_rng(0).uniform(0, 100, size=(14, 16, 16)).astype(np.float32)
    tile[2, :10] = np.nan
    assert measure(tile, modis, None).nodata_fraction == pytest.approx(10 / 16)


def test_cloud_from_landsat_bqa_bits() -> None:
    tile = _textured(C=10)
    qa = np.full((32, 32), 20480, dtype=np.uint16)  # cloud confidence "no"
    qa[:20] = 53248  # bits 14-15 = 3: cloud confidence high
    q = measure(tile, L8, qa)
    assert q.cloud_fraction == pytest.approx(20 / 32)
    assert exclusion_reason(q, ExclusionRules(), L8) == "cloud"
    assert exclusion_reason(q, ExclusionRules(max_cloud_fraction=0.7), L8) is None
    qa[:] = 1  # designated fill
    assert measure(tile, L8, qa).nodata_fraction == 1.0


def test_thresholds_are_configurable() -> None:
    tile = _textured()
    tile[:, :10] = 0  # ~31 % nodata
    q = measure(tile, S2, None)
    assert exclusion_reason(q, ExclusionRules(max_nodata_fraction=0.5), S2) is None
    assert exclusion_reason(q, ExclusionRules(max_nodata_fraction=0.2), S2) == "nodata"


def test_values_above_nodata_above_are_nodata() -> None:
    l1b = load_profile("modis_toa14").for_product("modis_l1b")
    tile = np.random.default_rng(1).integers(100, 30000, size=(14, 16, 16)).astype(np.uint16)
    tile[5, :10] = 65533  # one band's L1B saturation flag over 10 of 16 rows
    q = measure(tile, l1b, None)
    assert q.nodata_fraction == pytest.approx(10 / 16)
    assert q.out_of_range_fraction == 0.0  # flags are nodata, not out of range
    assert exclusion_reason(q, ExclusionRules(), l1b) == "nodata"
