"""Landsat Collection 2 scenes (made from the shared Landsat-8 subset) through the build CLI:
QA_PIXEL bits drive the exclusion reasons, TOA/SR/ST values equal the MTL formulas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import zarr

from data_pipelines.rs.discover import discover_scenes
from data_pipelines.rs.exclusion import ExclusionRules, exclusion_reason, measure
from data_pipelines.rs.profiles import load_profile
from data_pipelines.store.read import read_calibrated
from geomed_mim.build_dataset import main
from tests.data_pipelines.rs.products.landsat_files import (
    QA_CLEAR,
    old_mtl,
    product_id,
    write_c2_scene,
)

RUN = ["--tile-size", "64", "--workers", "1", "--no_preview"]


def _build(folder: Path, out: Path, profile: str, *extra: str) -> tuple[dict, zarr.Group]:
    argv = ["--input", str(folder), "--output", str(out), "--profile", profile, *RUN, *extra]
    assert main(argv) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return {r["id"].split("/")[-1]: r for r in rows}, zarr.open_group(str(out / "store.zarr"))


def _dn(path: Path, row: dict) -> np.ndarray:
    with rasterio.open(path) as src:
        window = ((row["row_off"], row["row_off"] + 64), (row["col_off"], row["col_off"] + 64))
        return src.read(1, window=window).astype(np.float64)


def test_c2_l1_qa_pixel_cloud_tiles_are_excluded_and_toa_follows_the_mtl(
    shared_data: Path, tmp_path: Path
) -> None:
    prefix = write_c2_scene(shared_data, tmp_path / "in")
    out = tmp_path / "out"
    rows, root = _build(tmp_path / "in", out, "landsat8_l1")
    assert root[rows["r128_c128"]["array"]].dtype == np.uint16  # compact: DN + calibration
    # QA_PIXEL: high-confidence cloud over rows/cols 0-127, shadow over rows 0-63 x cols
    # 256-319, fill over rows 192-255 x cols 0-63
    for tile in ("r0_c0", "r0_c64", "r64_c0", "r64_c64"):
        assert rows[tile]["excluded"] == "cloud"
        assert rows[tile]["cloud_fraction"] == 1.0
    assert rows["r0_c256"]["excluded"] == "cloud_shadow"
    assert rows["r192_c0"]["excluded"] == "nodata"
    counts = json.loads((out / "build.json").read_text())["counts"]
    assert counts["excluded:cloud"] == 4
    assert counts["excluded:cloud_shadow"] == 1
    assert {r["cloud_mask"] for r in rows.values()} == {"QA_PIXEL"}  # clouds checked
    assert "scenes_without_cloud_mask" not in counts
    row = rows["r128_c128"]
    assert row["excluded"] is None
    assert row["cloud_fraction"] == 0.0
    # TOA reflectance and brightness temperature written out from the MTL coefficients
    mtl = old_mtl(shared_data)
    sun = math.sin(math.radians(float(mtl["SUN_ELEVATION"])))
    tile = read_calibrated(out, row["array"], row["index"])
    profile = load_profile("landsat8_l1")
    for name in ("B2", "B5", "B10"):
        n = int(name[1:])
        dn = _dn(Path(f"{prefix}_B{n}.TIF"), row)
        if name == "B10":
            radiance = float(mtl[f"RADIANCE_MULT_BAND_{n}"]) * dn + float(
                mtl[f"RADIANCE_ADD_BAND_{n}"]
            )
            k1, k2 = float(mtl[f"K1_CONSTANT_BAND_{n}"]), float(mtl[f"K2_CONSTANT_BAND_{n}"])
            expected = k2 / np.log(k1 / radiance + 1.0)
        else:
            expected = (float(mtl[f"REFLECTANCE_MULT_BAND_{n}"]) * dn
                        + float(mtl[f"REFLECTANCE_ADD_BAND_{n}"])) / sun  # fmt: skip
        np.testing.assert_allclose(tile[profile.band_index(name)], expected, rtol=1e-5)
    assert row["platform"] == "LANDSAT_8"
    assert row["processing_baseline"] == "C2 L1TP T1"
    assert row["acquired"] == "2015-08-04T16:19:21Z"
    assert row["product"] == product_id()


def test_json_mtl_builds_the_same_tiles(shared_data: Path, tmp_path: Path) -> None:
    write_c2_scene(shared_data, tmp_path / "txt", mtl=("txt",))
    write_c2_scene(shared_data, tmp_path / "json", mtl=("json",))
    rows_txt, root_txt = _build(tmp_path / "txt", tmp_path / "out_txt", "landsat8_l1")
    rows_json, root_json = _build(tmp_path / "json", tmp_path / "out_json", "landsat8_l1")
    assert {k: r["excluded"] for k, r in rows_txt.items()} == {
        k: r["excluded"] for k, r in rows_json.items()
    }
    for key in ("r128_c128", "r448_c512"):
        a = np.asarray(root_txt[rows_txt[key]["array"]][rows_txt[key]["index"]])
        b = np.asarray(root_json[rows_json[key]["array"]][rows_json[key]["index"]])
        np.testing.assert_array_equal(a, b)


def test_c2_l2_surface_reflectance_and_temperature(shared_data: Path, tmp_path: Path) -> None:
    prefix = write_c2_scene(shared_data, tmp_path / "in", level="L2SP")
    rows, root = _build(tmp_path / "in", tmp_path / "out", "landsat8_c2_l2")
    profile = load_profile("landsat8_c2_l2")
    row = rows["r128_c128"]
    tile = read_calibrated(tmp_path / "out", row["array"], row["index"])
    assert tile.shape == (8, 64, 64)
    sr = _dn(Path(f"{prefix}_SR_B4.TIF"), row) * 2.75e-5 - 0.2
    np.testing.assert_allclose(tile[profile.band_index("B4")], sr, rtol=1e-5, atol=1e-6)
    st = _dn(Path(f"{prefix}_ST_B10.TIF"), row) * 0.00341802 + 149.0
    np.testing.assert_allclose(tile[profile.band_index("B10")], st, rtol=1e-6)
    assert rows["r0_c0"]["excluded"] == "cloud"
    assert row["processing_baseline"] == "C2 L2SP T1"
    source = root[row["array"]].attrs["calibration"]["source"]
    assert source == {"mtl": f"{product_id('L2SP')}_MTL.txt"}


def test_landsat9_reads_through_the_same_profile(shared_data: Path, tmp_path: Path) -> None:
    write_c2_scene(shared_data, tmp_path / "in", satellite="09")
    rows, _ = _build(tmp_path / "in", tmp_path / "out", "landsat8_l1")
    assert {r["platform"] for r in rows.values()} == {"LANDSAT_9"}
    assert rows["r0_c0"]["excluded"] == "cloud"


def test_level2_under_the_level1_profile_is_ignored_naming_the_right_one(
    shared_data: Path, tmp_path: Path
) -> None:
    write_c2_scene(shared_data, tmp_path / "in", level="L2SP")
    found = discover_scenes(str(tmp_path / "in"), load_profile("landsat8_l1"))
    assert found.scenes == []
    (why,) = dict(found.ignored).values()
    assert "Collection 2 Level-2" in why
    assert "--profile landsat8_c2_l2" in why


def test_other_sensor_is_quarantined(shared_data: Path, tmp_path: Path) -> None:
    prefix = write_c2_scene(shared_data, tmp_path / "in")
    mtl = Path(f"{prefix}_MTL.txt")
    mtl.write_text(mtl.read_text().replace('"OLI_TIRS"', '"ETM"'))
    out = tmp_path / "out"
    main(["--input", str(tmp_path / "in"), "--output", str(out), "--profile", "landsat8_l1",
          *RUN])  # fmt: skip
    (line,) = (out / "quarantine.jsonl").read_text().splitlines()
    assert "ETM scene; profile landsat8_l1 reads OLI_TIRS" in json.loads(line)["reason"]


# -- the QA layouts, bit by bit (values written out from the USGS bit tables) -------------------


def _qa_reason(profile, qa_value: int, rules: ExclusionRules | None = None) -> str | None:
    rng = np.random.default_rng(0)
    tile = rng.integers(5000, 20000, size=(len(profile.bands), 16, 16)).astype(np.uint16)
    qa = np.full((16, 16), qa_value, dtype=np.uint16)
    return exclusion_reason(measure(tile, profile, qa), rules or ExclusionRules(), profile)


@pytest.mark.parametrize(
    ("bits", "reason"),
    [
        (1 << 0, "nodata"),  # fill
        (1 << 1, "cloud"),  # dilated cloud
        (1 << 2, "cloud"),  # cirrus
        (1 << 3, "cloud"),  # cloud
        (3 << 8, "cloud"),  # cloud confidence high
        (3 << 14, "cloud"),  # cirrus confidence high
        (1 << 4, "cloud_shadow"),  # cloud shadow
        (3 << 10, "cloud_shadow"),  # cloud shadow confidence high
        (2 << 8, None),  # cloud confidence medium: kept
        (1 << 7, None),  # water
        (QA_CLEAR, None),
    ],
)
def test_c2_qa_pixel_bits(bits: int, reason: str | None) -> None:
    for name, kind in (("landsat8_l1", "landsat_c2_l1"), ("landsat8_c2_l2", "landsat_c2_l2")):
        assert _qa_reason(load_profile(name).for_product(kind), bits) == reason


def test_c2_snow_is_measured_and_excluded_only_on_request() -> None:
    profile = load_profile("landsat8_l1").for_product("landsat_c2_l1")
    for bits in (1 << 5, 3 << 12):
        assert _qa_reason(profile, bits) is None
        assert _qa_reason(profile, bits, ExclusionRules(max_snow_fraction=0.5)) == "snow"


def test_collection1_bqa_layout_differs_from_pre_collection() -> None:
    l8 = load_profile("landsat8_l1")
    c1, pre = l8.for_product("landsat_c1_l1"), l8.for_product("landsat_pre_collection_l1")
    assert _qa_reason(c1, 1 << 4) == "cloud"  # C1 bit 4: cloud
    assert _qa_reason(pre, 1 << 4) is None  # pre-collection bit 4: water confidence
    assert _qa_reason(pre, 3 << 14) == "cloud"  # pre-collection cloud confidence high
    assert _qa_reason(c1, 3 << 7) == "cloud_shadow"  # C1 bits 7-8: shadow confidence high
