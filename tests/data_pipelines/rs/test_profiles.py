from __future__ import annotations

from pathlib import Path

import pytest

from data_pipelines.rs.profiles import (
    ProfileError,
    available_profiles,
    load_profile,
    normalize_band_token,
)


def test_shipped_profiles_load() -> None:
    names = available_profiles()
    assert {"sentinel2_l1c", "sentinel2_l2a", "landsat8_l1", "modis_toa14", "rgb8"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name
        assert len(p.band_names) == len(set(p.band_names))


def test_band_counts_and_order() -> None:
    assert len(load_profile("sentinel2_l1c").bands) == 13
    assert "B10" not in load_profile("sentinel2_l2a").band_names
    modis = load_profile("modis_toa14")
    assert modis.band_names == [
        "B1", "B2", "B3", "B6", "B7", "B21", "B26",
        "B27", "B28", "B29", "B30", "B31", "B32", "B33",
    ]  # fmt: skip


def test_band_tokens_match_with_or_without_zero_padding() -> None:
    s2 = load_profile("sentinel2_l1c")
    assert s2.band_index("B1") == 0
    assert s2.band_index("b8a") == 8
    assert s2.band_index("B10") == 10
    assert s2.band_index("B13") is None
    assert normalize_band_token("B01") == normalize_band_token("B1") == "B1"


def test_unknown_profile_names_the_flag_and_choices() -> None:
    with pytest.raises(
        ProfileError, match=r"--profile: unknown sensor profile 'nope'.*sentinel2_l1c"
    ):
        load_profile("nope")


def test_invalid_profile_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbands:\n  - {name: B1}\n  - {name: B01}\n")
    with pytest.raises(ProfileError, match="duplicate band names"):
        load_profile(bad)
    bad.write_text("name: x\nbands: []\n")
    with pytest.raises(ProfileError, match="non-empty"):
        load_profile(bad)


def test_product_sections_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbands: [{name: B1}]\nproducts: {modis_l2: {}}\n")
    with pytest.raises(ProfileError, match=r"products.modis_l2 is not one of"):
        load_profile(bad)
    bad.write_text("name: x\nbands: [{name: B1}]\nproducts: {modis_l1b: {bands: []}}\n")
    with pytest.raises(ProfileError, match=r"products.modis_l1b sets \['bands'\]"):
        load_profile(bad)


def test_for_product_overrides_only_the_raw_encoding() -> None:
    modis = load_profile("modis_toa14")
    l1b = modis.for_product("modis_l1b")
    assert (l1b.raw_dtype, l1b.nodata_above, l1b.valid_range) == ("uint16", 32767, (0, 32767))
    assert l1b.band_names == modis.band_names
    assert modis.raw_dtype == "float32"  # the GeoTIFF encoding is untouched
    with pytest.raises(ProfileError, match="does not read"):
        modis.for_product("landsat_c2_l1")
