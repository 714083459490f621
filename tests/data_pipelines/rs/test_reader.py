from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from data_pipelines.rs.discover import discover_scenes
from data_pipelines.rs.profiles import load_profile
from data_pipelines.rs.reader import SceneError, SceneReader


def test_bands_at_coarser_resolution_are_resampled_to_finest_grid(shared_data: Path) -> None:
    profile = load_profile("sentinel2_l2a")
    scene = discover_scenes(str(shared_data / "rs" / "bigearthnet_s2"), profile).scenes[0]
    with SceneReader(scene, profile, "bilinear") as reader:
        assert (reader.grid.height, reader.grid.width) == (120, 120)  # the 10 m grid
        assert reader.grid.transform.a == 10.0
        full = reader.read_window(Window(0, 0, 120, 120))
        strip = reader.read_window(Window(0, 40, 120, 40))
    assert full.shape == (12, 120, 120)
    files = dict(scene.files)
    # 10 m band: exact pixels
    with rasterio.open(files["B02"]) as src:
        np.testing.assert_array_equal(full[1], src.read(1))
    # 20 m band (60x60): same as GDAL's own bilinear upsampling of the whole band
    with rasterio.open(files["B05"]) as src:
        expected = src.read(1, out_shape=(120, 120), resampling=Resampling.bilinear)
    np.testing.assert_array_equal(full[4], expected)
    # a strip read of a coarse band stays close to the full read (GDAL resamples per request)
    diff = np.abs(strip[4].astype(int) - full[4, 40:80].astype(int))
    assert np.median(diff) <= 1
    assert full[0].std() > 0  # the 60 m band is upsampled, not flattened


def _write_strip_tiff(path: Path, data: np.ndarray) -> None:
    profile = {
        "driver": "GTiff", "dtype": "uint16", "count": data.shape[0], "height": data.shape[1],
        "width": data.shape[2], "crs": "EPSG:32633", "tiled": False, "blockysize": 4,
        "transform": rasterio.transform.from_origin(500000, 5000000, 10, 10),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def test_truncated_pixel_data_raises_scene_error_with_reason(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 10000, size=(3, 64, 64), dtype=np.uint16)
    path = tmp_path / "scene.tif"
    _write_strip_tiff(path, data)
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * 0.6)])  # header intact, last strips missing
    profile = load_profile("rgb8")
    scene = discover_scenes(str(path), profile).scenes[0]
    with SceneReader(scene, profile) as reader, pytest.raises(SceneError, match="read failed"):
        reader.read_window(Window(0, 0, 64, 64))


def test_truncated_jp2_is_named_jp2_not_tiff(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, size=(3, 256, 256), dtype=np.uint8)
    path = tmp_path / "scene.jp2"
    with rasterio.open(
        path, "w", driver="JP2OpenJPEG", width=256, height=256, count=3, dtype="uint8",
        crs="EPSG:32633", transform=rasterio.transform.from_origin(0, 2560, 10, 10),
        QUALITY="100", REVERSIBLE="YES",
    ) as dst:  # fmt: skip
        dst.write(data)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the codestream cut short
    profile = load_profile("rgb8")
    scene = discover_scenes(str(path), profile).scenes[0]
    with SceneReader(scene, profile) as reader, pytest.raises(SceneError) as info:
        reader.read_window(Window(0, 0, 256, 256))
    assert "damaged or truncated JP2" in str(info.value)
    assert "TIFF" not in str(info.value)


def test_wrong_band_count_names_profile(tmp_path: Path) -> None:
    path = tmp_path / "two.tif"
    _write_strip_tiff(path, np.ones((2, 16, 16), dtype=np.uint16))
    profile = load_profile("rgb8")
    scene = discover_scenes(str(path), profile).scenes[0]
    with (
        pytest.raises(SceneError, match=r"has 2 band.*rgb8 expects 3"),
        SceneReader(scene, profile),
    ):
        pass
