"""End-to-end tests of ``python -m geomed_mim.build_dataset`` on real imagery."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import zarr
from rasterio.windows import Window

from data_pipelines.config import field_help
from data_pipelines.ct.config import CTBuildConfig
from data_pipelines.rs.config import RSBuildConfig
from data_pipelines.store.read import read_calibrated
from geomed_mim.build_dataset import (
    INTERRUPTED,
    build_parser,
    display_path,
    kebab_negations,
    main,
    parse_config,
)
from tests.build_hooks import PAUSE_AFTER_PARTS_ENV
from tests.conftest import subprocess_env

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "data").glob("*.yaml"))
CT = ["--modality", "ct", "--input", "demo:ct"]

S2_BANDS = [  # product order
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "geomed_demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["--output", str(out), "--workers", "1"]) == 0
    (out.parent / "stdout.txt").write_text(printed.getvalue())
    return out


def test_demo_build_names_an_absolute_output_as_given(demo_build: Path) -> None:
    said = (demo_build.parent / "stdout.txt").read_text()
    assert f"building the embedded demo archive into {demo_build}/\n" in said
    assert display_path("geomed_demo") == "./geomed_demo"


def test_demo_manifest_agrees_with_store(demo_build: Path) -> None:
    manifest = pq.read_table(demo_build / "manifest.parquet").to_pandas()
    root = zarr.open_group(str(demo_build / "store.zarr"), mode="r")
    # 5 scenes of 100x101 px, 32 px tiles with edge-snapped last row/column: 4x4 per scene
    assert len(manifest) == 5 * 16
    assert manifest["id"].is_unique
    kept = manifest[manifest["excluded"].isna()]
    for array_path, rows in kept.groupby("array"):
        arr = root[array_path]
        assert arr.shape == (len(rows), 13, 32, 32)
        assert sorted(rows["index"]) == list(range(len(rows)))
    assert set(manifest["split"]) <= {"train", "val"}
    # the 5 dates of one area split by location: the same places held out in every date
    val = manifest[manifest["split"] == "val"]
    assert val["scene"].nunique() == 5
    assert val.groupby(["row_off", "col_off"])["scene"].nunique().eq(5).all()
    record = json.loads((demo_build / "build.json").read_text())
    assert record["counts"]["samples_written"] == len(kept)
    assert record["counts"]["tiles_total"] == len(manifest)
    assert record["versions"]["zarr"].startswith("3")
    assert (demo_build / "quarantine.jsonl").read_text() == ""


def test_tile_pixels_equal_direct_windowed_read(demo_build: Path) -> None:
    manifest = pq.read_table(demo_build / "manifest.parquet").to_pandas()
    root = zarr.open_group(str(demo_build / "store.zarr"), mode="r")
    # an interior tile and an edge-snapped one (col 68 = 100 - 32)
    for _, row in manifest[manifest["col_off"].isin([32, 68])].head(6).iterrows():
        with rasterio.open(row["source"]) as src:
            expected = src.read(window=Window(row["col_off"], row["row_off"], 32, 32))
        assert root[row["array"]].dtype == np.uint16  # the DN, with the calibration recorded
        got = read_calibrated(demo_build, row["array"], row["index"])
        # read as TOA reflectance: DN / 10000 (no baseline offset in these products)
        np.testing.assert_array_equal(got, expected.astype(np.float32) * np.float32(1e-4))
        # the tile transform places the tile's top-left pixel at its map position
        with rasterio.open(row["source"]) as src:
            x, y = src.xy(row["row_off"], row["col_off"], offset="ul")
        assert row["transform"][2] == pytest.approx(x)
        assert row["transform"][5] == pytest.approx(y)


def test_calibrate_none_stores_raw_pixels_bit_exact(demo_data: Path, tmp_path: Path) -> None:
    scenes = demo_data / "sentinel2_l1c" / "scenes"
    out = tmp_path / "raw"
    assert (
        main(
            [
                "--input",
                str(scenes),
                "--output",
                str(out),
                "--tile-size",
                "32",
                "--calibrate",
                "none",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    assert root.attrs["calibration"] == {"mode": "none"}
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    for _, row in manifest.sample(5, random_state=0).iterrows():
        with rasterio.open(row["source"]) as src:
            expected = src.read(window=Window(row["col_off"], row["row_off"], 32, 32))
        got = root[row["array"]][row["index"]]
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, expected)


def test_band_names_and_order_preserved(demo_build: Path) -> None:
    root = zarr.open_group(str(demo_build / "store.zarr"), mode="r")
    assert root.attrs["bands"] == S2_BANDS
    assert root.attrs["profile"]["name"] == "sentinel2_l1c"
    for name in root["tiles"].array_keys():
        assert root["tiles"][name].attrs["bands"] == S2_BANDS


def test_band_descriptions_reorder_bands(demo_data: Path, tmp_path: Path) -> None:
    """A file whose bands are stored in another order is put back in profile order by name."""
    src_path = demo_data / "sentinel2_l1c" / "scenes" / "s2_l1c_reference_scene_1.tif"
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    perm = np.random.default_rng(0).permutation(13)
    with rasterio.open(src_path) as src:
        data, profile = src.read(), src.profile
    with rasterio.open(scenes / "shuffled.tif", "w", **profile) as dst:
        dst.write(data[perm])
        dst.descriptions = tuple(S2_BANDS[i] for i in perm)
    out = tmp_path / "out"
    assert (
        main(["--input", str(scenes), "--output", str(out), "--tile-size", "32", "--workers", "1"])
        == 0
    )
    expected = data[:, :32, :32].astype(np.float32) * np.float32(1e-4)
    np.testing.assert_array_equal(read_calibrated(out, "tiles/shuffled", 0), expected)


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--profile", "no_such_sensor"], "--profile"),
        (["--input", "/nonexistent/archive"], "--input"),
        (["--tile-size", "3"], "--tile-size"),
        (["--stride", "0"], "--stride"),
        (["--scheduler", "bogus"], "--scheduler"),
        ([*CT, "--spacing", "0"], "--spacing"),
        ([*CT, "--codec", "brotli"], "--codec"),
        ([*CT, "--chunk-size", "4"], "--chunk-size"),
        ([*CT, "--labels", "guess"], "--labels"),
        ([*CT, "--modality", "mri"], "--modality"),
    ],
)
def test_config_errors_stop_before_any_work(
    flags: list[str], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main([*flags, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def _bad_archive(demo_data: Path, root: Path) -> Path:
    scenes = root / "archive"
    scenes.mkdir()
    good = sorted((demo_data / "sentinel2_l1c" / "scenes").glob("*.tif"))[:2]
    for f in good:
        shutil.copy(f, scenes / f.name)
    (scenes / "notes.tif").write_text("this is not a raster\n")
    (scenes / "empty.tif").write_bytes(b"")
    blob = good[0].read_bytes()
    (scenes / "truncated.tif").write_bytes(blob[: len(blob) // 2])
    return scenes


def test_bad_inputs_are_quarantined_and_build_goes_on(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenes = _bad_archive(demo_data, tmp_path)
    out = tmp_path / "out"
    assert (
        main(["--input", str(scenes), "--output", str(out), "--tile-size", "32", "--workers", "1"])
        == 0
    )
    lines = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    by_name = {Path(q["source"]).name: q for q in lines}
    assert set(by_name) == {"notes.tif", "empty.tif", "truncated.tif"}
    for q in lines:
        assert q["reason"]
        assert "\n" not in q["reason"]
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    assert sorted(manifest["scene"].unique()) == [
        "s2_l1c_reference_scene_0",
        "s2_l1c_reference_scene_1",
    ]
    summary = capsys.readouterr().out
    assert "scenes quarantined  3" in summary
    assert "truncated.tif" in summary
    # no debris of the failed parts in the store
    assert sorted(zarr.open_group(str(out / "store.zarr"), mode="r")["tiles"].array_keys()) == [
        "s2_l1c_reference_scene_0",
        "s2_l1c_reference_scene_1",
    ]


def test_strict_exits_nonzero_on_quarantine(demo_data: Path, tmp_path: Path) -> None:
    scenes = _bad_archive(demo_data, tmp_path)
    code = main(
        [
            "--input",
            str(scenes),
            "--output",
            str(tmp_path / "out"),
            "--tile-size",
            "32",
            "--workers",
            "1",
            "--strict",
        ]
    )
    assert code == 1


def test_tile_larger_than_every_scene_stops_before_any_work(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["--input", "demo:sentinel2_l1c", "--output", str(out), "--tile-size", "128"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --tile-size: 128 px is larger than every scene")
    assert "101 x 100 px" in err
    assert "use --tile-size 100 or less" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_nothing_written_exits_1_with_the_reason(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every tile excluded, and every input quarantined: exit 1 and one line saying why."""
    flags = ["--tile-size", "32", "--workers", "1"]
    out = tmp_path / "excluded"
    # a spread no real tile stays under: every tile is 'constant'
    rc = main(["--input", "demo:sentinel2_l1c", "--output", str(out), "--min-band-std", "1e9",
               *flags])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err == f"error: nothing was written to {out}: all 80 tiles were excluded (constant: 80)"
    assert (out / "build.json").is_file()  # the record of what happened is still written

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.tif").write_text("this is not a raster\n")
    (bad / "empty.tif").write_bytes(b"")
    assert main(["--input", str(bad), "--output", str(tmp_path / "q"), *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: nothing was written to {tmp_path / 'q'}: all 2 input(s) ")
    assert err[-1].endswith("see quarantine.jsonl")
    assert sum(line.startswith("error:") for line in err) == 1


def test_rerun_resumes_and_yields_same_manifest(demo_build: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(demo_build, out)
    # pretend the build died after two scenes: drop the other parts' commit records
    fragments = sorted((out / "parts").glob("*.parquet"))
    for frag in fragments[2:]:
        frag.unlink()
    (out / "manifest.parquet").unlink()
    assert main(["--output", str(out), "--workers", "1"]) == 0
    record = json.loads((out / "build.json").read_text())
    assert record["parts"] == {"total": 5, "resumed": 2, "ran": 3}
    assert pq.read_table(out / "manifest.parquet").equals(
        pq.read_table(demo_build / "manifest.parquet")
    )


def test_changed_settings_refuse_to_mix_into_existing_build(
    demo_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(demo_build, out)
    assert main(["--output", str(out), "--tile-size", "48", "--workers", "1"]) == 2
    assert "tile_size: 32 -> 48" in capsys.readouterr().err
    assert main(["--output", str(out), "--tile-size", "48", "--workers", "1", "--overwrite"]) == 0


@pytest.mark.slow
def test_cli_without_arguments_builds_demo_in_cwd(tmp_path: Path) -> None:
    """What a new user types: the real module entry point, in a fresh folder."""
    proc = subprocess.run(
        [sys.executable, "-m", "geomed_mim.build_dataset", "--workers", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tiles written       80" in proc.stdout
    assert (tmp_path / "geomed_demo" / "manifest.parquet").is_file()
    assert "dask LocalCluster, 2 processes" in proc.stdout


@pytest.mark.slow
def test_help_explains_every_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "geomed_mim.build_dataset", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    for flag in (
        "--config",
        "--input",
        "--output",
        "--profile",
        "--tile-size",
        "--stride",
        "--workers",
        "--strict",
        "--no-dedup",  # kebab-case negations, like every other flag
        "--no-cover-edges",
    ):
        assert flag in proc.stdout
    assert "build_dataset stats --output OUT" in proc.stdout  # the subcommand is listed


@pytest.mark.parametrize("spelling", ["--no-dedup", "--no_dedup"])
def test_negations_take_the_kebab_case_and_the_older_spelling(spelling: str) -> None:
    cfg, _ = parse_config(kebab_negations(["--output", "x", spelling, "--no-cover-edges"]))
    assert cfg.dedup is False
    assert cfg.cover_edges is False
    default, _ = parse_config(["--output", "x"])
    assert default.dedup is True


@pytest.mark.slow
def test_installed_layout_finds_profiles_configs_and_demo(tmp_path: Path) -> None:
    """A non-editable install holds the two packages and, as pyproject's force-include says,
    a copy of configs/; the CLI must build the demo from that layout alone, no checkout."""
    tomllib = pytest.importorskip("tomllib", reason="the standard library reads TOML from 3.11")
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    wheel = wheel["targets"]["wheel"]
    site = tmp_path / "site"
    for package in wheel["packages"]:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / package, site / package, ignore=ignore)
    for source, target in wheel["force-include"].items():
        shutil.copytree(REPO / source, site / target)
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import data_pipelines, geomed_mim.resources as r; "
         "from data_pipelines.resources import configs_dir; "
         "print(data_pipelines.__file__, configs_dir(), r.demo_data_dir(), sep='\\n')"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    module, configs, demo = where.stdout.split()
    assert Path(module).is_relative_to(site)
    assert Path(configs) == site / "data_pipelines" / "_configs"
    assert Path(demo) == site / "geomed_mim" / "demo_data"
    proc = subprocess.run(
        [sys.executable, "-m", "geomed_mim.build_dataset", "--workers", "1",
         "--classes", "configs/data/classes/eolearn_lulc.yaml", "--labels",
         "demo:sentinel2_l1c/labels/lulc_mask.tif"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "tiles written       80" in proc.stdout
    assert (work / "geomed_demo" / "manifest.parquet").is_file()


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_shipped_data_configs_parse_and_validate(config: Path) -> None:
    cfg, _ = parse_config(["--config", str(config)])
    cfg.validate()
    assert cfg.output


@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_and_the_rerun_resumes(demo_build: Path, tmp_path: Path) -> None:
    """A real SIGINT to the build's process group (what Ctrl-C in a terminal sends, so the dask
    workers get it too) while the build is known to be mid-way: exit 130, one line, no
    traceback from any process; the same command then resumes and equals an uninterrupted
    build."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tests.build_hooks", "--output", str(out)]
    cmd += ["--workers", "2"]
    env = {**subprocess_env(), PAUSE_AFTER_PARTS_ENV: "1"}  # the runner waits after 1 part
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        for _ in range(1200):  # a part is committed once its fragment exists
            if list((out / "parts").glob("*.parquet")) or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == INTERRUPTED
    assert "Traceback" not in stderr
    # nothing but the progress bar and that line: no worker's error about the closed scheduler
    said = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    assert [ln for ln in said if not ln.startswith(f"building {out.name}")] == [INTERRUPTED]
    assert not (out / "manifest.parquet").exists()

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["--output", str(out), "--workers", "1"]) == 0
    record = json.loads((out / "build.json").read_text())
    assert record["parts"]["resumed"] >= 1
    assert pq.read_table(out / "manifest.parquet").equals(
        pq.read_table(demo_build / "manifest.parquet")
    )


def test_the_build_command_prints_the_field_help() -> None:
    text = " ".join(build_parser().format_help().split())
    for name in ("max_cloud_fraction", "split_margin", "crop_margin_mm"):
        help_text = field_help(CTBuildConfig if name == "crop_margin_mm" else RSBuildConfig)[name]
        assert help_text in text
