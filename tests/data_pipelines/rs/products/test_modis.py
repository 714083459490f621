"""MOD021KM/MYD021KM granules through the build CLI: calibration against the L1B formulas and
SatPy, flags as nodata, tile-centre geolocation, granule facts in the manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from data_pipelines.rs.products.modis import interpolate_5km
from data_pipelines.rs.profiles import load_profile
from data_pipelines.store.read import read_calibrated
from geomed_mim.build_dataset import main
from tests.data_pipelines.rs.products.modis_files import (
    band_of,
    expected_bt,
    great_circle_km,
    set_pixels,
    write_mod021km,
    write_mod03,
)

PROFILE = load_profile("modis_toa14")
RUN = ["--profile", "modis_toa14", "--tile-size", "128", "--workers", "1"]


def _build(folder: Path, out: Path, *extra: str) -> tuple[dict, zarr.Group]:
    assert main(["--input", str(folder), "--output", str(out), *RUN, *extra]) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return {r["id"].split("/")[-1]: r for r in rows}, zarr.open_group(str(out / "store.zarr"))


def _stored(root: zarr.Group, row: dict) -> np.ndarray:
    """The tile in physical units, read through the calibration its part records."""
    return read_calibrated(Path(root.store.root).parent, row["array"], row["index"])


def test_granule_builds_14_band_tiles_equal_to_the_l1b_formulas(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    granule = write_mod021km(tmp_path / "in")
    rows, root = _build(tmp_path / "in", tmp_path / "out")
    assert len(rows) == 9  # 260 x 262 swath, 128-px tiles, edges snapped
    row = rows["r128_c0"]
    assert row["excluded"] is None
    tile = _stored(root, row)  # [14, 128, 128]
    assert tile.shape == (14, 128, 128)
    r0, c0 = row["row_off"], row["col_off"]
    for c, band in enumerate(PROFILE.bands):
        sds, i = band_of(granule, band.name[1:])
        dn = granule.dn[sds][i, r0 : r0 + 128, c0 : c0 + 128]
        attrs = granule.attrs[sds]
        if band.kind == "reflectance":
            scale = float(attrs["reflectance_scales"][i])
            offset = float(attrs["reflectance_offsets"][i])
            expected = scale * (dn.astype(np.float64) - offset)
            assert 0.04 < expected.mean() < 0.7
            np.testing.assert_allclose(tile[c], expected, rtol=2e-6, atol=2e-6)
        else:
            bt = expected_bt(dn, attrs["radiance_scales"][i], attrs["radiance_offsets"][i],
                             band.name[1:])  # fmt: skip
            lo, hi = band.extra["bt_min_k"], band.extra["bt_max_k"]
            assert 215 < bt.mean() < 305
            np.testing.assert_allclose(tile[c] * (hi - lo) + lo, bt, atol=0.01)
    # the granule's facts on every row
    assert row["platform"] == "Terra"
    assert row["day_night"] == "Day"
    assert row["acquired"] == "2021-05-03T12:35:00Z"
    assert row["product"] == granule.path.stem
    assert row["processing_baseline"] == "C061"


def test_tile_centres_come_from_the_5km_tie_points(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    granule = write_mod021km(tmp_path / "in")
    rows, _ = _build(tmp_path / "in", tmp_path / "out")
    for row in rows.values():
        rc, cc = row["row_off"] + 63.5, row["col_off"] + 63.5
        # the 1-km field the tie points were sampled from, at the exact centre
        lat = 45.0 - 0.009 * rc + 0.0015 * cc
        lon = 10.0 + 0.0105 * cc + 0.002 * rc
        assert great_circle_km(row["lat"], row["lon"], lat, lon) < 0.2
    assert granule.lat5.shape == (52, 52)  # 2 rows per scan, frames 2, 7, ..., 257


def test_mod03_beside_the_granule_is_the_geolocation(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    granule = write_mod021km(tmp_path / "in")
    write_mod03(tmp_path / "in", granule, lat_shift=0.5)  # tells the two sources apart
    rows, root = _build(tmp_path / "in", tmp_path / "out")
    assert len(rows) == 9  # MOD03 is not a scene of its own
    row = rows["r0_c0"]
    # the centre of a 128-px tile sits between 1-km pixels 63 and 64: their mean
    lat = 45.0 - 0.009 * 63.5 + 0.0015 * 63.5 + 0.5
    assert row["lat"] == pytest.approx(lat, abs=1e-3)
    attrs = root[row["array"]].attrs["calibration"]["source"]
    assert attrs["granule"] == granule.path.stem


def test_flagged_dn_are_nodata_and_counted(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    granule = write_mod021km(tmp_path / "in")
    # band 6 (EV_500 index 3): the saturation flag; band 31: no uncertainty estimate
    set_pixels(granule.path, "EV_500_Aggr1km_RefSB", 3, slice(0, 100), slice(0, 128), 65533)
    set_pixels(granule.path, "EV_1KM_Emissive_Uncert_Indexes", 10, slice(140, 144),
               slice(10, 14), 15)  # fmt: skip
    out = tmp_path / "out"
    rows, root = _build(tmp_path / "in", out)
    assert rows["r0_c0"]["excluded"] == "nodata"  # 100x128 of 128x128 flagged in one band
    assert rows["r0_c0"]["nodata_fraction"] == pytest.approx(100 / 128)
    record = json.loads((out / "build.json").read_text())
    assert record["counts"]["excluded:nodata"] == 1
    tile = _stored(root, rows["r128_c0"])
    b31 = PROFILE.band_index("B31")
    assert np.isnan(tile[b31, 12:16, 10:14]).all()  # SatPy masks uncertainty index 15
    assert np.isfinite(tile[b31, :12]).all()
    assert np.isfinite(tile[:b31, 12:16, 10:14]).all()  # only that band's pixels


def test_aqua_night_granule_facts(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write_mod021km(tmp_path / "in", platform="Aqua", day_night="Night", when="A2020001.0005")
    rows, _ = _build(tmp_path / "in", tmp_path / "out")
    row = next(iter(rows.values()))
    assert (row["platform"], row["day_night"]) == ("Aqua", "Night")
    assert row["acquired"] == "2020-01-01T00:05:00Z"
    assert row["product"].startswith("MYD021KM.A2020001.0005.061")


def test_calibrate_none_stores_the_dn(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    granule = write_mod021km(tmp_path / "in")
    rows, root = _build(tmp_path / "in", tmp_path / "out", "--calibrate", "none")
    row = rows["r0_c128"]
    tile = np.asarray(root[row["array"]][row["index"]])  # as stored
    assert tile.dtype == np.uint16
    assert root[row["array"]].attrs["stored_values"] == "raw"
    sds, i = band_of(granule, "26")
    np.testing.assert_array_equal(
        tile[PROFILE.band_index("B26")], granule.dn[sds][i, 0:128, 128:256]
    )


def test_built_tiles_match_satpys_calibration_of_the_same_file(tmp_path: Path) -> None:
    """SatPy's modis_l1b file handler reads the written granule on its own; every stored tile
    equals its reflectance and, within 0.1 K, its brightness temperature."""
    modis_l1b = pytest.importorskip("satpy.readers.modis_l1b", reason="satpy not installed")
    (tmp_path / "in").mkdir()
    granule = write_mod021km(tmp_path / "in", seed=3)
    # a few flagged pixels (fill, dead detector) and pixels without an uncertainty estimate
    set_pixels(granule.path, "EV_250_Aggr1km_RefSB", 1, slice(5, 9), slice(30, 40), 65535)
    set_pixels(granule.path, "EV_1KM_Emissive", 6, slice(200, 203), slice(3, 9), 65531)
    set_pixels(granule.path, "EV_1KM_Emissive_Uncert_Indexes", 12, slice(50, 52),
               slice(140, 150), 15)  # fmt: skip
    rows, root = _build(tmp_path / "in", tmp_path / "out")
    handler = modis_l1b.HDFEOSBandReader(str(granule.path), {"platform_indicator": "O"}, {})
    compared = flagged = 0
    for c, band in enumerate(PROFILE.bands):
        emissive = band.kind == "emissive"
        key = {
            "name": band.name[1:],
            "resolution": 1000,
            "calibration": "brightness_temperature" if emissive else "reflectance",
        }
        reference = np.asarray(handler.get_dataset(key, {}))  # [rows, frames]: K or %
        for row in rows.values():
            r0, c0 = row["row_off"], row["col_off"]
            ref = reference[r0 : r0 + 128, c0 : c0 + 128]
            got = _stored(root, row)[c]
            if emissive:
                lo, hi = band.extra["bt_min_k"], band.extra["bt_max_k"]
                assert np.nanmax(np.abs(got * (hi - lo) + lo - ref)) < 0.1, band.name
            else:
                np.testing.assert_allclose(got, ref / 100.0, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
            compared += 1
            flagged += int(np.isnan(got).sum())
    assert compared == 14 * 9
    assert flagged >= 40 + 18 + 20  # every flagged pixel is NaN in both (overlaps counted twice)


def test_5km_interpolation_reproduces_a_smooth_field() -> None:
    rows, frames = 60, 132
    r, c = np.meshgrid(np.arange(rows), np.arange(frames), indexing="ij")
    lat = -20.0 + 0.01 * r - 0.002 * c + 1e-5 * c**2
    lon = 179.0 + 0.011 * c + 0.001 * r  # crosses the antimeridian
    lon = (lon + 180) % 360 - 180
    tie_rows = np.concatenate([[10 * s + 2, 10 * s + 7] for s in range(rows // 10)])
    tie_cols = np.arange(2, frames, 5)
    lat5, lon5 = lat[np.ix_(tie_rows, tie_cols)], lon[np.ix_(tie_rows, tie_cols)]
    got_lat, got_lon = interpolate_5km(lat5, lon5, r, c)  # incl. extrapolated edges
    assert np.abs(got_lat - lat).max() < 2e-3
    dlon = (got_lon - lon + 180) % 360 - 180
    assert np.abs(dlon).max() < 2e-3
    lat5[0, 0] = -999.0  # fill tie point: the pixels that use it have no geolocation
    got_lat, _ = interpolate_5km(lat5, lon5, np.array([0.0, 30.0]), np.array([0.0, 60.0]))
    assert np.isnan(got_lat[0])
    assert np.isfinite(got_lat[1])


def test_other_modis_files_and_profiles_are_ignored_with_the_reason(tmp_path: Path, capsys) -> None:
    (tmp_path / "in").mkdir()
    granule = write_mod021km(tmp_path / "in")
    (tmp_path / "in" / "MOD02HKM.A2021123.1235.061.2021124012345.hdf").write_bytes(b"x")
    from data_pipelines.rs.discover import discover_scenes

    found = discover_scenes(str(tmp_path / "in"), PROFILE)
    assert [s.scene_id for s in found.scenes] == [granule.path.stem]
    assert any("MOD02HKM is not read" in why for _, why in found.ignored)
    other = discover_scenes(str(tmp_path / "in"), load_profile("sentinel2_l1c"))
    assert other.scenes == []
    why = dict(other.ignored)[str(granule.path)]
    assert "--profile modis_toa14" in why


def test_damaged_granule_is_quarantined(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    good = write_mod021km(tmp_path / "in")
    bad = tmp_path / "in" / "MYD021KM.A2021123.1240.061.2021124012345.hdf"
    bad.write_bytes(good.path.read_bytes()[:5000])  # truncated download
    out = tmp_path / "out"
    assert main(["--input", str(tmp_path / "in"), "--output", str(out), *RUN]) == 0
    lines = (out / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert bad.name in record["source"]
    assert "\n" not in record["reason"]
    assert "HDF4" in record["reason"]


@pytest.mark.slow
def test_build_dataset_command_on_a_granule_folder(tmp_path: Path, child_env) -> None:
    (tmp_path / "in").mkdir()
    granule = write_mod021km(tmp_path / "in", platform="Aqua")
    write_mod03(tmp_path / "in", granule)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "geomed_mim.build_dataset", "--input", str(tmp_path / "in"),
           "--output", str(out), *RUN]  # fmt: skip
    done = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "build_dataset: modis_toa14" in done.stdout
    assert "tiles written       9" in done.stdout
    table = pq.read_table(out / "manifest.parquet")
    assert set(table.column("platform").to_pylist()) == {"Aqua"}
    assert table.column("lat").null_count == 0
