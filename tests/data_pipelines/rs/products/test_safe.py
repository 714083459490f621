"""Sentinel-2 .SAFE products (folders and zips) through the build CLI: offsets and
quantification from the product's MTD XML per baseline, MSK_CLASSI / SCL cloud exclusion, and
quarantine when the offsets cannot be determined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from data_pipelines.rs.discover import discover_scenes
from data_pipelines.rs.products.safe import SafeMetadata
from data_pipelines.rs.profiles import load_profile
from data_pipelines.store.read import read_calibrated
from geomed_mim.build_dataset import main
from tests.data_pipelines.rs.products.safe_files import (
    BANDS,
    L2A_OFFSETS,
    RESOLUTION,
    SENSING,
    TILE,
    mtd_xml,
    write_jp2,
    write_l1c,
    write_l2a,
    zip_safe,
)

RUN = ["--tile-size", "32", "--workers", "1", "--no_dedup", "--no_preview"]
TEN_M = ("B02", "B03", "B04", "B08")  # native 10 m bands: the stored grid, no resampling


def _build(folder: Path, out: Path, profile: str, *extra: str) -> tuple[dict, zarr.Group]:
    argv = ["--input", str(folder), "--output", str(out), "--profile", profile, *RUN, *extra]
    assert main(argv) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    return {r["id"].split("/")[-1]: r for r in rows}, zarr.open_group(str(out / "store.zarr"))


def _tile(root: zarr.Group, row: dict) -> np.ndarray:
    """The tile in physical units, read through the calibration its part records."""
    return read_calibrated(Path(root.store.root).parent, row["array"], row["index"])


def _window(dn: np.ndarray, row: dict) -> np.ndarray:
    r, c = row["row_off"], row["col_off"]
    return dn[r : r + 32, c : c + 32].astype(np.float64)


def test_l1c_baseline_05_stores_dn_minus_1000_over_10000(tmp_path: Path) -> None:
    product = write_l1c(tmp_path / "in", baseline="05.09")
    rows, root = _build(tmp_path / "in", tmp_path / "out", "sentinel2_l1c")
    profile = load_profile("sentinel2_l1c")
    row = rows["r64_c64"]  # clear of the mask's clouds
    assert row["excluded"] is None
    tile = _tile(root, row)
    assert tile.shape == (13, 32, 32)
    for band in TEN_M:
        expected = (_window(product.dn[band], row) - 1000.0) / 10000.0
        np.testing.assert_allclose(tile[profile.band_index(band)], expected, atol=1e-6)
    assert row["processing_baseline"] == "05.09"
    assert row["platform"] == "Sentinel-2B"
    assert row["acquired"] == "2023-06-01T10:36:29.024Z"
    assert row["product"] == product.path.name.removesuffix(".SAFE")
    source = root[row["array"]].attrs["calibration"]["source"]
    assert source["dn_offsets"] == [-1000.0] * 13
    assert source["quantification"] == 10000.0


def test_l1c_msk_classi_drives_cloud_exclusion(tmp_path: Path) -> None:
    write_l1c(tmp_path / "in", baseline="05.09")
    out = tmp_path / "out"
    rows, _ = _build(tmp_path / "in", out, "sentinel2_l1c")
    # opaque clouds over 10 m rows/cols 0-59, cirrus over rows 0-59 x cols 72-119
    assert rows["r0_c0"]["excluded"] == "cloud"
    assert rows["r0_c0"]["cloud_fraction"] == 1.0
    assert rows["r0_c88"]["excluded"] == "cloud"  # cirrus
    assert rows["r32_c32"]["cloud_fraction"] == pytest.approx(28 * 28 / 1024)  # 60 m -> 10 m
    assert rows["r32_c32"]["excluded"] == "cloud"
    assert rows["r64_c32"]["cloud_fraction"] == 0.0
    assert rows["r64_c32"]["excluded"] is None
    # snow/ice over rows 72-119 x cols 0-59: measured, kept (default --max-snow-fraction 1.0)
    assert rows["r88_c0"]["snow_fraction"] == 1.0
    assert rows["r88_c0"]["excluded"] is None
    counts = json.loads((out / "build.json").read_text())["counts"]
    # four tiles under each cloud area reach over half cloud
    assert counts["excluded:cloud"] == sum(r["excluded"] == "cloud" for r in rows.values()) == 8


def test_l1c_baseline_03_stores_dn_over_10000_without_a_mask(tmp_path: Path) -> None:
    product = write_l1c(tmp_path / "in", baseline="03.01")
    assert product.offsets is None  # pre-04.00 products list no offsets
    rows, root = _build(tmp_path / "in", tmp_path / "out", "sentinel2_l1c")
    profile = load_profile("sentinel2_l1c")
    row = rows["r0_c0"]  # cloudy in the 05.xx product, but 03.xx has no mask to say so
    assert row["excluded"] is None
    tile = _tile(root, row)
    for band in TEN_M:
        expected = _window(product.dn[band], row) / 10000.0
        np.testing.assert_allclose(tile[profile.band_index(band)], expected, atol=1e-6)
    assert row["processing_baseline"] == "03.01"
    assert row["cloud_fraction"] is None  # before 04.00 the cloud mask is vector GML: not read
    assert row["cloud_mask"] is None  # ... and the manifest says so
    record = json.loads((tmp_path / "out" / "build.json").read_text())
    assert record["counts"]["scenes_without_cloud_mask"] == 1


def test_scenes_without_a_cloud_mask_are_counted_in_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_l1c(tmp_path / "in" / "old", baseline="03.01", seed=1)  # no raster mask
    write_l1c(tmp_path / "in" / "new", baseline="05.09")  # MSK_CLASSI
    _build(tmp_path / "in", tmp_path / "out", "sentinel2_l1c")
    masks = {r["processing_baseline"]: r["cloud_mask"] for r in rows_all(tmp_path / "out")}
    assert masks == {"03.01": None, "05.09": "MSK_CLASSI"}
    lines = [line for line in capsys.readouterr().out.splitlines() if "clouds not checked" in line]
    assert len(lines) == 1
    assert "1 of 2 scene(s)" in lines[0]


def rows_all(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def test_l2a_stores_dn_plus_boa_add_offset_over_10000_by_band_id(tmp_path: Path) -> None:
    product = write_l2a(tmp_path / "in", baseline="05.09")
    rows, root = _build(tmp_path / "in", tmp_path / "out", "sentinel2_l2a")
    profile = load_profile("sentinel2_l2a")
    row = rows["r64_c32"]
    assert row["excluded"] is None
    tile = _tile(root, row)
    assert tile.shape == (12, 32, 32)
    for band in TEN_M:  # B03's offset is -1100: the per-band value is the one used
        expected = (_window(product.dn[band], row) + L2A_OFFSETS[band]) / 10000.0
        np.testing.assert_allclose(tile[profile.band_index(band)], expected, atol=1e-6)
    # SCL: cloud (9) rows/cols 0-59, shadow (3) rows 0-59 x cols 72-119, no data (0) corner
    assert rows["r0_c0"]["excluded"] == "cloud"
    assert rows["r0_c88"]["excluded"] == "cloud_shadow"
    assert rows["r0_c88"]["cloud_shadow_fraction"] == 1.0
    assert rows["r88_c88"]["excluded"] == "nodata"


def test_zipped_safe_builds_like_the_folder(tmp_path: Path) -> None:
    product = write_l1c(tmp_path / "unzipped", baseline="04.00")
    zipped = zip_safe(product, tmp_path / "in")
    rows_zip, root_zip = _build(tmp_path / "in", tmp_path / "out_zip", "sentinel2_l1c")
    rows_dir, root_dir = _build(tmp_path / "unzipped", tmp_path / "out_dir", "sentinel2_l1c")
    assert set(rows_zip) == set(rows_dir)
    assert len(rows_zip) == 16
    for key in ("r64_c32", "r64_c64"):
        np.testing.assert_array_equal(
            _tile(root_zip, rows_zip[key]), _tile(root_dir, rows_dir[key])
        )
        assert rows_zip[key]["excluded"] == rows_dir[key]["excluded"]
    assert zipped.name.endswith(".SAFE.zip")
    assert rows_zip["r0_c0"]["source"] == str(zipped)


def test_offsets_that_cannot_be_determined_are_quarantined_never_guessed(tmp_path: Path) -> None:
    write_l1c(tmp_path / "in", baseline="05.09", offsets=False)
    out = tmp_path / "out"
    main(["--input", str(tmp_path / "in"), "--output", str(out), "--profile", "sentinel2_l1c",
          *RUN])  # fmt: skip
    (line,) = (out / "quarantine.jsonl").read_text().splitlines()
    reason = json.loads(line)["reason"]
    assert "processing baseline 05.09" in reason
    assert "RADIO_ADD_OFFSET" in reason
    assert "never guessed" in reason
    assert not [p for p in (out / "store.zarr" / "tiles").iterdir() if p.is_dir()]
    # raw DN need no offset: the same product builds with --calibrate none
    rows, root = _build(tmp_path / "in", tmp_path / "raw", "sentinel2_l1c", "--calibrate", "none")
    assert root[rows["r64_c64"]["array"]].dtype == np.uint16


def test_radiometry_names_missing_bands_and_reads_offsets_by_band_id() -> None:
    profile = load_profile("sentinel2_l1c")
    partial = {b: -1000 for b in BANDS if b not in ("B8A", "B12")}
    meta = SafeMetadata.parse(mtd_xml("L1C", "05.10", partial).encode(), "L1C")
    problem = meta.radiometry(profile, "MTD_MSIL1C.xml")["problem"]
    assert "B8A, B12" in problem
    shifted = {b: -1000 - i for i, b in enumerate(BANDS)}  # band_id order = file order
    meta = SafeMetadata.parse(mtd_xml("L1C", "05.10", shifted).encode(), "L1C")
    offsets = meta.radiometry(profile, "MTD_MSIL1C.xml")["offsets"]
    assert offsets["B8A"] == -1008
    assert offsets["B09"] == -1009
    assert offsets["B12"] == -1012


def test_product_under_the_wrong_profile_is_ignored_naming_the_right_one(tmp_path: Path) -> None:
    product = write_l2a(tmp_path / "in")
    found = discover_scenes(str(tmp_path / "in"), load_profile("sentinel2_l1c"))
    assert found.scenes == []
    assert "--profile sentinel2_l2a" in dict(found.ignored)[str(product.path)]
    # the files inside the .SAFE are the product's, never scenes of their own
    found = discover_scenes(str(product.path), load_profile("sentinel2_l2a"))
    assert [s.product for s in found.scenes] == ["sentinel2_l2a_safe"]
    assert found.ignored == []


# -- a swath edge: ESA's DN 0 beyond the orbit's footprint --------------------------------------
def _outside_footprint(res: int) -> np.ndarray:
    """Pixels (centres, at ``res`` metres) beyond a slanted swath edge, as ESA marks them."""
    n = 1200 // res
    centre = (np.arange(n) + 0.5) * res
    y, x = np.meshgrid(centre, centre, indexing="ij")
    return x + y / 4 >= 900


def _bilinear_from_valid(dn: np.ndarray, valid: np.ndarray, r: int, c: int, res: int) -> float:
    """The 10 m pixel (r, c) interpolated bilinearly from the valid ``res`` m pixels around it
    (weights renormalised over the valid ones); NaN when the pixel under its centre is nodata."""
    n, k = dn.shape[0], res / 10
    y, x = (r + 0.5) / k - 0.5, (c + 0.5) / k - 0.5
    if not valid[int((r + 0.5) / k), int((c + 0.5) / k)]:
        return float("nan")
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    total = weight = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            yi, xi = min(max(yy, 0), n - 1), min(max(xx, 0), n - 1)  # edge pixels repeat
            if valid[yi, xi]:
                total += wy * wx * float(dn[yi, xi])
                weight += wy * wx
    return total / weight


def test_nodata_margin_stays_nodata_in_coarser_bands(tmp_path: Path) -> None:
    product = write_l1c(tmp_path / "in", baseline="05.09")
    granule = next((product.path / "GRANULE").iterdir()) / "IMG_DATA"
    for band in BANDS:
        res = RESOLUTION[band]
        product.dn[band][_outside_footprint(res)] = 0
        write_jp2(granule / f"{TILE}_{SENSING}_{band}.jp2", product.dn[band], res)
    rows, root = _build(
        tmp_path / "in", tmp_path / "out", "sentinel2_l1c",
        "--max-nodata-fraction", "1.0", "--max-cloud-fraction", "1.0",
    )  # fmt: skip
    profile = load_profile("sentinel2_l1c")
    edge_tiles = 0
    for row in rows.values():
        if row["excluded"] == "constant":  # wholly beyond the edge: nothing stored
            continue
        tile = _tile(root, row)
        r0, c0 = row["row_off"], row["col_off"]
        edge_tiles += bool(np.isnan(tile).any())
        for band in BANDS:
            res, dn = RESOLUTION[band], product.dn[band]
            if res == 10:
                continue
            valid = dn != 0
            got = tile[profile.band_index(band)]
            expected = np.array(
                [[_bilinear_from_valid(dn, valid, r0 + i, c0 + j, res) for j in range(32)]
                 for i in range(32)]
            )  # fmt: skip
            expected = (expected - 1000.0) / 10000.0
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=band)
            np.testing.assert_allclose(got, expected, atol=0.6e-4, err_msg=band)  # DN rounding
            low = (dn[valid].min() - 1000.0) / 10000.0
            assert np.nanmin(got) >= low - 1e-6, f"{band}: a value below any valid pixel"
    assert edge_tiles >= 3  # the edge crosses several kept tiles
