"""Multi-scale slicing: windows per size, random crops, area-averaged storage, dedup across
sizes, per-size counts, reproducible random crops after a stop and resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.windows import Window

from data_pipelines.rs.resample import area_average, nearest
from data_pipelines.rs.tiling import multi_size_grid, random_crops, scene_seed
from data_pipelines.store.read import LazyZarrArrays
from geomed_mim.build_dataset import main
from tests.build_hooks import STOP_AFTER_PARTS_ENV, STOPPED_EXIT_CODE

REPO = Path(__file__).resolve().parents[3]
MULTISCALE = REPO / "configs" / "data" / "demo_multiscale.yaml"


# -- resampling ------------------------------------------------------------------------------------


def supersampled_mean(tile: np.ndarray, size: int, valid: np.ndarray) -> np.ndarray:
    """Area average written out independently: repeat every pixel to a common grid of
    lcm(S, size) cells per side, then average each output pixel's block of valid cells."""
    s = tile.shape[-1]
    common = np.lcm(s, size)
    up = np.repeat(np.repeat(tile.astype(np.float64), common // s, -1), common // s, -2)
    ok = np.repeat(np.repeat(valid, common // s, -1), common // s, -2)
    k = common // size
    shape = (*tile.shape[:-2], size, k, size, k)
    total = np.where(ok, up, 0).reshape(shape).sum(axis=(-3, -1))
    count = ok.reshape(shape).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore"):
        return total / count


@pytest.mark.parametrize(("native", "size"), [(12, 4), (10, 4), (6, 9), (7, 7)])
def test_area_average_equals_the_mean_over_each_footprint(native: int, size: int) -> None:
    rng = np.random.default_rng(native * 100 + size)
    tiles = rng.integers(0, 10_000, (2, 3, native, native)).astype(np.uint16)
    expected = supersampled_mean(tiles, size, np.ones(tiles.shape, bool))
    got = area_average(tiles, size, None, np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    rounded = area_average(tiles, size, None, np.uint16)  # integers: the nearest value
    assert np.abs(rounded - expected).max() <= 0.5 + 1e-9


def test_area_average_leaves_nodata_out_and_keeps_all_nodata_pixels_nodata() -> None:
    tile = np.full((1, 1, 8, 8), 100, dtype=np.uint16)
    tile[..., :4, :4] = 0  # nodata: a whole output pixel's footprint
    tile[..., 4, 4] = 0  # and one pixel of another footprint
    tile[..., 5, 5] = 300
    got = area_average(tile, 2, 0, np.uint16)
    assert got[0, 0, 0, 0] == 0  # nothing valid under it: stays nodata
    expected = supersampled_mean(tile, 2, tile != 0)
    assert got[0, 0, 1, 1] == round(expected[0, 0, 1, 1])  # (14 x 100 + 300) / 15, not / 16
    assert expected[0, 0, 1, 1] == pytest.approx((14 * 100 + 300) / 15)


def test_nearest_keeps_class_ids() -> None:
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert nearest(labels, 2).tolist() == [[5, 7], [13, 15]]  # the pixel under each centre
    assert set(np.unique(nearest(labels, 7))) <= set(range(16))


# -- where crops are cut ---------------------------------------------------------------------------


def test_multi_size_grid_has_a_grid_per_size_with_its_overlap() -> None:
    windows = multi_size_grid(100, 90, [32, 64], overlap=0.5, cover_edges=True)
    by_size = {s: [(w.row_off, w.col_off) for w in windows if w.size == s] for s in (32, 64)}
    # stride 16 for 32 px: rows 0..64 step 16 plus the edge row 68; columns 0..48 plus 58
    rows32 = [*range(0, 100 - 32 + 1, 16), 68]
    cols32 = [*range(0, 90 - 32 + 1, 16), 58]
    assert by_size[32] == [(r, c) for r in rows32 for c in cols32]
    assert by_size[64] == [(r, c) for r in [0, 32, 36] for c in [0, 26]]
    for w in windows:
        assert w.row_off + w.size <= 100
        assert w.col_off + w.size <= 90


def test_random_crops_are_seeded_by_scene_inside_the_scene_and_in_range() -> None:
    seed = scene_seed("scene_a", 0)
    first = random_crops(500, 400, (32, 256), 200, seed)
    assert first == random_crops(500, 400, (32, 256), 200, seed)  # a re-run: the same crops
    assert first != random_crops(500, 400, (32, 256), 200, scene_seed("scene_b", 0))
    assert first != random_crops(500, 400, (32, 256), 200, scene_seed("scene_a", 1))
    sizes = np.array([w.size for w in first])
    assert sizes.min() >= 32
    assert sizes.max() <= 256
    assert (sizes < 91).mean() > 0.4  # log-uniform: half the crops below the geometric middle
    for w in first:
        assert 0 <= w.row_off <= 500 - w.size
        assert 0 <= w.col_off <= 400 - w.size
    assert random_crops(20, 20, (32, 64), 5, seed) == []  # scene smaller than every size


# -- the shipped multi-scale config --------------------------------------------------------------


@pytest.fixture(scope="module")
def multiscale_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("multiscale") / "store"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["--config", str(MULTISCALE), "--output", str(out), "--workers", "1"])
    assert code == 0
    return out, buf.getvalue()


def test_manifest_records_native_window_scale_and_gsd(multiscale_build: tuple[Path, str]) -> None:
    out, _ = multiscale_build
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    assert sorted(m["native_size"].unique()) == [32, 64, 128, 256]
    assert (m["stored_size"] == 64).all()
    assert np.allclose(m["scale"], m["native_size"] / 64)
    assert (m["height"] == m["native_size"]).all()
    assert (m["width"] == m["native_size"]).all()
    assert np.allclose(m["gsd"], 30.0 * m["native_size"] / 64)  # the subset is at 30 m
    ids = m["id"].tolist()
    assert len(set(ids)) == len(ids)
    assert all(f"/s{n}_r{r}_c{c}" in i for i, n, r, c in
               zip(ids, m["native_size"], m["row_off"], m["col_off"], strict=True))  # fmt: skip
    one = m[m["native_size"] == 128].iloc[0]
    with rasterio.open(next((REPO / "geomed_mim").rglob("*_B4.tif"))) as src:
        t = src.transform
    a, _, c, _, e, f = one["transform"]
    assert a == pytest.approx(t.a * 2)
    assert e == pytest.approx(t.e * 2)
    assert c == pytest.approx(t.c + one["col_off"] * t.a)
    assert f == pytest.approx(t.f + one["row_off"] * t.e)


def test_stored_pixels_are_the_area_average_of_the_window(
    multiscale_build: tuple[Path, str],
) -> None:
    """A 128-px crop stored at 64 px: each stored DN is the mean of its 2x2 source DNs (read
    here straight from the band file), rounded; the 256-px crop the mean of 4x4."""
    out, _ = multiscale_build
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    kept = m[m["excluded"].isna()]
    store = LazyZarrArrays(out)
    band_file = next((REPO / "geomed_mim").rglob("*_B4.tif"))
    bands = json.loads((out / "store.zarr" / "zarr.json").read_text())["attributes"]["bands"]
    b4 = bands.index("B4")
    for native in (128, 256):
        row = kept[kept["native_size"] == native].iloc[0]
        with rasterio.open(band_file) as src:
            window = Window(row["col_off"], row["row_off"], native, native)
            dn = src.read(1, window=window).astype(np.float64)
        k = native // 64
        mean = np.where(dn > 0, dn, np.nan).reshape(64, k, 64, k)
        mean = np.nanmean(mean, axis=(1, 3))  # DN 0 is Landsat's fill
        stored = store.read(row["array"], int(row["index"]))[b4].astype(np.float64)
        assert np.abs(stored - mean).max() <= 0.5 + 1e-9


def test_summary_counts_per_size_and_no_crop_is_a_duplicate_of_its_sub_crops(
    multiscale_build: tuple[Path, str],
) -> None:
    out, printed = multiscale_build
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    per_size = ", ".join(
        f"{s} px: {int(((m.native_size == s) & m.excluded.isna()).sum())} of "
        f"{int((m.native_size == s).sum())}"
        for s in (32, 64, 128, 256)
    )
    assert f"per size            {per_size}" in printed
    # every 32-px crop lies inside 64-, 128- and 256-px crops of the same scene: none of them
    # is a duplicate of another (they show different content at the stored size)
    assert m["dup_of"].isna().all()
    assert (out / "preview.png").stat().st_size > 0


def test_label_tiles_take_the_class_under_each_stored_pixel_centre(tmp_path: Path) -> None:
    """The shipped labeled demo config cut at 16 and 32 px and stored at 24 px: a 32-px crop's
    label tile is the mask sampled at the stored pixels' centres (ids 0-10 stored as is)."""
    out = tmp_path / "lulc"
    config = REPO / "configs" / "data" / "demo_lulc.yaml"
    assert main(["--config", str(config), "--output", str(out), "--tile-size", "16", "32",
                 "--stride", "null", "--store-size", "24", "--workers", "1"]) == 0  # fmt: skip
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    row = m[(m["native_size"] == 32) & m["excluded"].isna()].iloc[0]
    mask = REPO / "geomed_mim" / "demo_data" / "sentinel2_l1c" / "labels" / "lulc_mask.tif"
    with rasterio.open(mask) as src:
        window = src.read(1, window=Window(row["col_off"], row["row_off"], 32, 32))
    centres = np.floor((np.arange(24) + 0.5) * 32 / 24).astype(int)
    expected = window[np.ix_(centres, centres)]
    stored = LazyZarrArrays(out).read(row["label_array"], int(row["index"]))
    np.testing.assert_array_equal(stored, expected)
    assert stored.shape == (24, 24)


def test_config_mistakes_are_one_line_with_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--input", "demo:landsat8_l1", "--profile", "landsat8_l1", "--output",
            str(tmp_path / "o")]  # fmt: skip
    cases = {
        "--crops-per-scene/--crops-per-km2": ["--slicing", "random", "--tile-size", "32", "64",
                                              "--store-size", "32"],
        "--store-size": ["--slicing", "random", "--tile-size", "32", "64",
                         "--crops-per-scene", "4"],
        "--stride": ["--tile-size", "32", "64", "--stride", "16"],
        "--tile-size": ["--tile-size", "32", "32"],
    }  # fmt: skip
    for flag, extra in cases.items():
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"error: {flag}"), err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_random_crops_after_a_stop_and_resume_equal_an_uninterrupted_build(
    demo_data: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    """Random slicing seeded per scene: the build is stopped after 2 committed scenes and
    re-run; manifest and pixels equal a build that ran through."""
    import shutil

    archive = tmp_path / "many"
    archive.mkdir()
    scenes = sorted((demo_data / "sentinel2_l1c" / "scenes").glob("*.tif"))
    for i in range(5):
        shutil.copy(scenes[i % len(scenes)], archive / f"scene_{i:03d}.tif")
    flags = ["--input", str(archive), "--slicing", "random", "--tile-size", "16", "64",
             "--crops-per-scene", "12", "--store-size", "32", "--seed", "7",
             "--scheduler", "synchronous"]  # fmt: skip
    reference = tmp_path / "reference"
    assert main([*flags, "--output", str(reference)]) == 0
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "tests.build_hooks", *flags, "--output", str(out)]
    proc = subprocess.run(cmd, env={**child_env, STOP_AFTER_PARTS_ENV: "2"},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == STOPPED_EXIT_CODE, proc.stderr
    assert main([*flags, "--output", str(out)]) == 0
    a = pq.read_table(reference / "manifest.parquet")
    b = pq.read_table(out / "manifest.parquet")
    assert a.equals(b)
    sizes = set(a.column("native_size").to_pylist())
    assert len(sizes) > 3
    assert min(sizes) >= 16
    assert max(sizes) <= 64
    ra, rb = LazyZarrArrays(reference), LazyZarrArrays(out)
    for row in a.to_pylist():
        if row["array"]:
            np.testing.assert_array_equal(
                ra.read(row["array"], row["index"]), rb.read(row["array"], row["index"])
            )
