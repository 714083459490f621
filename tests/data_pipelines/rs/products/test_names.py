"""Provider product names, told apart without opening a file."""

from __future__ import annotations

from pathlib import Path

from data_pipelines.rs.products.names import GranuleName, LandsatFile, safe_kind, safe_stem


def test_modis_granule_names() -> None:
    g = GranuleName.parse("MYD021KM.A2020366.2355.061.2021001083012.hdf")
    assert (g.platform, g.product, g.collection) == ("Aqua", "021KM", "061")
    assert g.acquired == "2020-12-31T23:55:00Z"  # day 366 of a leap year
    geo = GranuleName.parse("MYD03.A2020366.2355.061.2021001080000.hdf")
    assert (geo.product, geo.key) == ("03", g.key)
    assert GranuleName.parse("MOD021KM.A2020366.2355.hdf") is None
    assert GranuleName.parse("MOD09GA.A2020366.h18v04.061.2021001083012.hdf") is None


def test_safe_names(tmp_path: Path) -> None:
    name = "S2A_MSIL2A_20240105T103421_N0510_R108_T32TMT_20240105T122301"
    folder = tmp_path / f"{name}.SAFE"
    folder.mkdir()
    assert safe_kind(folder) == "sentinel2_l2a_safe"
    assert safe_kind(tmp_path / f"{name}.SAFE.zip") == "sentinel2_l2a_safe"
    assert safe_kind(tmp_path / f"{name.replace('L2A', 'L1C')}.zip") == "sentinel2_l1c_safe"
    assert safe_kind(tmp_path / "S2A_MSIL2A_broken.zip") is None
    assert safe_stem(tmp_path / f"{name}.SAFE.zip") == name


def test_landsat_file_roles() -> None:
    pid = "LC09_L2SP_044034_20220402_20230421_02_T1"
    assert LandsatFile.parse(f"{pid}_SR_B4.TIF") == LandsatFile(pid, "landsat_c2_l2", "band", "B4")
    assert LandsatFile.parse(f"{pid}_ST_B10.TIF").token == "B10"
    assert LandsatFile.parse(f"{pid}_QA_PIXEL.TIF").role == "qa"
    assert LandsatFile.parse(f"{pid}_MTL.json").role == "mtl"
    assert LandsatFile.parse(f"{pid}_ST_QA.TIF").role == "other"
    c1 = LandsatFile.parse("LC08_L1TP_044034_20170105_20170218_01_T1_BQA.TIF")
    assert (c1.kind, c1.role) == ("landsat_c1_l1", "qa")
    assert LandsatFile.parse("LC08_L1GT_044034_20210508_20210518_02_RT_B1.TIF").kind == (
        "landsat_c2_l1"
    )
    assert LandsatFile.parse("LC80200392015216LGN00_B4.TIF") is None  # pre-collection name
