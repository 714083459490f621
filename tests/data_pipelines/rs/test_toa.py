"""Calibration checked against the product formulas, computed by hand for a few pixels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from data_pipelines.rs.discover import discover_scenes
from data_pipelines.rs.profiles import load_profile
from data_pipelines.rs.reader import SceneReader
from data_pipelines.rs.toa import CalibrationError, make_calibrator, read_mtl


def test_landsat8_toa_reflectance_and_brightness_temperature(demo_data: Path) -> None:
    profile = load_profile("landsat8_l1")
    scene = discover_scenes(str(demo_data / "landsat8_l1"), profile).scenes[0]
    cal = make_calibrator(profile, "toa", {}, scene.metadata_files)
    with SceneReader(scene, profile) as reader:
        raw = reader.read_window(Window(100, 50, 4, 4))
    toa = cal.apply(raw)
    # straight from the MTL text, written out independently of the calibrator
    mtl = {}
    for line in Path(scene.metadata_files[0]).read_text().splitlines():
        if "=" in line:
            k, v = (s.strip() for s in line.split("=", 1))
            mtl[k] = v.strip('"')
    sun = math.sin(math.radians(float(mtl["SUN_ELEVATION"])))
    for c, name in enumerate(profile.band_names):
        n = int(name[1:])
        for i, j in [(0, 0), (2, 3)]:
            dn = float(raw[c, i, j])
            if name in ("B10", "B11"):
                radiance = float(mtl[f"RADIANCE_MULT_BAND_{n}"]) * dn + float(
                    mtl[f"RADIANCE_ADD_BAND_{n}"]
                )
                k1, k2 = float(mtl[f"K1_CONSTANT_BAND_{n}"]), float(mtl[f"K2_CONSTANT_BAND_{n}"])
                expected = k2 / math.log(k1 / radiance + 1)
                assert 250 < expected < 330  # plausible land/cloud-top temperatures in kelvin
                assert toa[c, i, j] == pytest.approx(expected, rel=1e-5)
            else:
                rho = float(mtl[f"REFLECTANCE_MULT_BAND_{n}"]) * dn + float(
                    mtl[f"REFLECTANCE_ADD_BAND_{n}"]
                )
                assert toa[c, i, j] == pytest.approx(rho / sun, rel=1e-5, abs=1e-6)


def test_landsat_without_mtl_is_a_clear_error(demo_data: Path) -> None:
    with pytest.raises(CalibrationError, match="MTL"):
        make_calibrator(load_profile("landsat8_l1"), "toa", {}, ())


def parse_mtl(path: Path) -> dict[str, str]:
    """``KEY = VALUE`` pairs of a Landsat MTL file, groups flattened (first occurrence wins)."""
    flat: dict[str, str] = {}
    for values in read_mtl(path).values():
        for k, v in values.items():
            flat.setdefault(k, v)
    return flat


def test_parse_mtl_reads_groups_and_quotes(demo_data: Path) -> None:
    mtl = parse_mtl(demo_data / "landsat8_l1" / "l8_MTL.txt")
    assert mtl["DATA_TYPE"] == "L1T"
    assert float(mtl["K2_CONSTANT_BAND_10"]) == pytest.approx(1321.0789)


def test_sentinel2_offset_follows_processing_baseline() -> None:
    profile = load_profile("sentinel2_l1c")
    dn = np.array([[[0, 1000, 2500]]] * 13, dtype=np.uint16)  # [13, 1, 3]
    old = make_calibrator(profile, "toa", {"PROCESSING_BASELINE": "03.01"}).apply(dn)
    new = make_calibrator(profile, "toa", {"PROCESSING_BASELINE": "04.00"}).apply(dn)
    assert np.isnan(old[0, 0, 0])  # DN 0 is nodata
    assert old[0, 0, 2] == pytest.approx(0.25)
    assert new[0, 0, 2] == pytest.approx(0.15)  # (2500 - 1000) / 10000
    explicit = make_calibrator(profile, "toa", {"BOA_ADD_OFFSET_B1": "-1000"}).apply(dn)
    assert explicit[0, 0, 1] == pytest.approx(0.0, abs=1e-7)


def test_sentinel2_l2a_real_patch_in_reflectance_range(shared_data: Path) -> None:
    profile = load_profile("sentinel2_l2a")
    scene = discover_scenes(str(shared_data / "rs" / "bigearthnet_s2"), profile).scenes[0]
    with SceneReader(scene, profile) as reader:
        raw = reader.read_window(Window(0, 0, 120, 120))
        cal = make_calibrator(profile, "toa", reader.tags())
    refl = cal.apply(raw)
    assert np.nanmax(refl) < 1.5
    np.testing.assert_allclose(refl, raw.astype(np.float32) / 10000, rtol=1e-6)


def test_modis_toa14_on_a_written_geotiff(tmp_path: Path) -> None:
    """No MODIS sample exists here: write a 14-band GeoTIFF with values in physical ranges."""
    profile = load_profile("modis_toa14")
    rng = np.random.default_rng(0)
    data = np.empty((14, 16, 16), dtype=np.float32)
    for c, band in enumerate(profile.bands):
        if band.kind == "emissive":
            data[c] = rng.uniform(band.extra["bt_min_k"], band.extra["bt_max_k"], (16, 16))
        else:
            data[c] = rng.uniform(0, 100, (16, 16))  # percent reflectance
    path = tmp_path / "modis.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=16, height=16, count=14, dtype="float32",
        crs="EPSG:4326", transform=rasterio.transform.from_origin(0, 10, 0.01, 0.01),
    ) as dst:  # fmt: skip
        dst.write(data)
    scene = discover_scenes(str(path), profile).scenes[0]
    with SceneReader(scene, profile) as reader:
        raw = reader.read_window(Window(0, 0, 16, 16))
    out = make_calibrator(profile, "toa").apply(raw)
    b21 = profile.band_index("B21")
    lo, hi = 223.1222, 352.7182
    np.testing.assert_allclose(out[b21], (data[b21] - lo) / (hi - lo), rtol=1e-5)
    b33 = profile.band_index("B33")
    np.testing.assert_allclose(out[b33], (data[b33] - 203.3537) / (285.9848 - 203.3537), rtol=1e-5)
    np.testing.assert_allclose(out[0], data[0] * 0.01, rtol=1e-6)
    assert out[b21].min() >= 0.0
    assert out[b21].max() <= 1.0


def test_calibrate_none_returns_no_calibrator() -> None:
    assert make_calibrator(load_profile("sentinel2_l1c"), "none") is None
