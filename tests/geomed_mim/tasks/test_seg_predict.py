"""Whole-scene prediction reads what the build read: every input the build accepts, opened
through the build's reader and calibrated with its product's own coefficients."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
import zarr
from rasterio.transform import from_origin
from rasterio.windows import Window

from data_pipelines.rs.discover import discover_scenes
from data_pipelines.rs.profiles import load_profile
from data_pipelines.rs.reader import open_scene_reader
from data_pipelines.store.read import read_calibrated, store_band_stats
from geomed_mim.build_dataset import main
from geomed_mim.tasks.seg_predict import PredictInputError, predict_ct_volume, predict_rs_scene
from tests.data_pipelines.rs.products.landsat_files import write_c2_scene
from tests.data_pipelines.rs.products.modis_files import write_mod021km
from tests.data_pipelines.rs.products.safe_files import BANDS, ORIGIN, write_l1c, write_l2a

CLASSES = 3


def _build(inputs: Path, out: Path, profile: str, tile: int) -> dict:
    argv = ["--input", str(inputs), "--output", str(out), "--profile", profile,
            "--tile-size", str(tile), "--workers", "1", "--no_dedup", "--no_preview"]  # fmt: skip
    assert main(argv) == 0
    return dict(zarr.open_group(str(out / "store.zarr")).attrs)


def _model(bands: int):
    """A small fixed network as the fine-tuned model (1x1 mixing of every band, then ReLU and a
    class layer): its classes depend on all bands' calibrated values."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(bands, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, CLASSES, 1)
    )
    return lambda x: net(x)


def _first_band_rule(x: torch.Tensor) -> torch.Tensor:
    """Class 2 where the standardized first band is above its mean, else class 1."""
    cls = torch.where(x[:, 0] > 0, 2, 1)
    return torch.nn.functional.one_hot(cls, CLASSES).movedim(-1, 1).float()


def _predict(model, path: Path, store: Path, attrs: dict, tile: int, out: Path) -> dict:
    mean, std = store_band_stats(attrs)
    return predict_rs_scene(
        model, str(path), attrs, mean, std, tile=tile, num_classes=CLASSES,
        output_dir=out, overlap=0.5, write_probabilities=True,
    )  # fmt: skip


def _as_geotiff_stack(safe: Path, profile_name: str, out: Path) -> Path:
    """The .SAFE's pixels on its 10 m grid as one GeoTIFF stack of plain DN (offset taken off:
    what a pre-04.00 product of the same scene holds)."""
    profile = load_profile(profile_name)
    scene = discover_scenes(str(safe), profile).scenes[0]
    with open_scene_reader(scene, profile) as reader:
        dn = reader.read_window(Window(0, 0, reader.grid.width, reader.grid.height))
    dn = np.where(dn > 0, dn.astype(np.int32) - 1000, 0).astype(np.uint16)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        out, "w", driver="GTiff", width=120, height=120, count=13, dtype="uint16",
        crs="EPSG:32632", transform=from_origin(*ORIGIN, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(dn)
        dst.descriptions = BANDS
    return out


def test_safe_baseline_05_predicts_as_the_same_pixels_as_geotiff(tmp_path: Path) -> None:
    product = write_l1c(tmp_path / "safe", baseline="05.09")  # DN + 1000, offset -1000
    assert product.offsets == dict.fromkeys(BANDS, -1000)
    attrs = _build(tmp_path / "safe", tmp_path / "store", "sentinel2_l1c", 32)
    assert attrs["calibration"]["mode"] == "toa"
    stack = _as_geotiff_stack(product.path, "sentinel2_l1c", tmp_path / "tif" / "scene.tif")
    model = _model(13)
    from_safe = _predict(model, product.path, tmp_path / "store", attrs, 32, tmp_path / "a")
    from_tif = _predict(model, stack, tmp_path / "store", attrs, 32, tmp_path / "b")
    with rasterio.open(from_safe["classes"]) as a, rasterio.open(from_tif["classes"]) as b:
        assert a.transform == b.transform
        ids = a.read(1)
        np.testing.assert_array_equal(ids, b.read(1))
    assert len(np.unique(ids)) > 1  # the model really tells pixels apart
    with (
        rasterio.open(from_safe["probabilities"]) as a,
        rasterio.open(from_tif["probabilities"]) as b,
    ):
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-5)


def test_safe_prediction_sees_the_values_the_build_stored(tmp_path: Path) -> None:
    product = write_l1c(tmp_path / "safe", baseline="05.09")
    attrs = _build(tmp_path / "safe", tmp_path / "store", "sentinel2_l1c", 32)
    out = _predict(_first_band_rule, product.path, tmp_path / "store", attrs, 32, tmp_path / "p")
    with rasterio.open(out["classes"]) as src:
        ids = src.read(1)
    mean, std = store_band_stats(attrs)
    checked = 0
    for row in pq.read_table(tmp_path / "store" / "manifest.parquet").to_pylist():
        if row["excluded"] is not None:
            continue
        tile = read_calibrated(tmp_path / "store", row["array"], row["index"])
        expect = np.where((tile[0] - mean[0]) / std[0] > 0, 2, 1)
        r, c = row["row_off"], row["col_off"]
        np.testing.assert_array_equal(ids[r : r + 32, c : c + 32], expect)
        checked += 1
    assert checked >= 4


def test_safe_of_another_profile_is_refused_in_one_line(tmp_path: Path) -> None:
    write_l1c(tmp_path / "safe", baseline="05.09")
    attrs = _build(tmp_path / "safe", tmp_path / "store", "sentinel2_l1c", 32)
    l2a = write_l2a(tmp_path / "l2a")
    with pytest.raises(PredictInputError) as info:
        _predict(_model(13), l2a.path, tmp_path / "store", attrs, 32, tmp_path / "p")
    message = str(info.value)
    assert "\n" not in message
    assert "sentinel2_l1c" in message
    assert "L2A" in message


def test_modis_granule_predicts_on_its_swath(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write_mod021km(tmp_path / "in")
    attrs = _build(tmp_path / "in", tmp_path / "store", "modis_toa14", 128)
    granule = next((tmp_path / "in").glob("MOD021KM*.hdf"))
    out = _predict(_first_band_rule, granule, tmp_path / "store", attrs, 128, tmp_path / "p")
    assert out["shape"] == (260, 262)  # the swath: 26 scans x 10 lines, 262 frames
    with rasterio.open(out["classes"]) as src:
        ids = src.read(1)
    mean, std = store_band_stats(attrs)
    rows = pq.read_table(tmp_path / "store" / "manifest.parquet").to_pylist()
    row = next(r for r in rows if r["id"].endswith("r128_c0"))
    tile = read_calibrated(tmp_path / "store", row["array"], row["index"])
    expect = np.where((tile[0] - mean[0]) / std[0] > 0, 2, 1)
    np.testing.assert_array_equal(ids[128:256, 0:128], expect)


def test_landsat_c2_predicts_on_its_grid(shared_data: Path, tmp_path: Path) -> None:
    write_c2_scene(shared_data, tmp_path / "in")
    attrs = _build(tmp_path / "in", tmp_path / "store", "landsat8_l1", 64)
    out = _predict(_first_band_rule, tmp_path / "in", tmp_path / "store", attrs, 64, tmp_path / "p")
    band = next((tmp_path / "in").glob("*_B1.TIF"))
    with rasterio.open(band) as src, rasterio.open(out["classes"]) as pred:
        assert pred.transform == src.transform
        assert pred.shape == src.shape
        ids = pred.read(1)
    mean, std = store_band_stats(attrs)
    rows = pq.read_table(tmp_path / "store" / "manifest.parquet").to_pylist()
    row = next(r for r in rows if r["excluded"] is None)
    tile = read_calibrated(tmp_path / "store", row["array"], row["index"])
    r, c = row["row_off"], row["col_off"]
    expect = np.where((tile[0] - mean[0]) / std[0] > 0, 2, 1)
    valid = np.isfinite(tile[0])
    np.testing.assert_array_equal(ids[r : r + 64, c : c + 64][valid], expect[valid])


# -- outputs that carry their classes ---------------------------------------------------------
TABLE = {"ids": [1, 2], "names": ["water", "bare soil"], "colors": [[0, 0, 255], [200, 160, 0]],
         "ignore_index": 255}  # fmt: skip


def test_class_geotiff_carries_colours_names_and_nodata(tmp_path: Path) -> None:
    product = write_l1c(tmp_path / "safe", baseline="05.09")
    attrs = _build(tmp_path / "safe", tmp_path / "store", "sentinel2_l1c", 32)
    stack = _as_geotiff_stack(product.path, "sentinel2_l1c", tmp_path / "tif" / "scene.tif")
    with rasterio.open(stack, "r+") as dst:  # a corner beyond the swath: DN 0 in every band
        dst.write(np.zeros((13, 40, 40), np.uint16), window=Window(80, 80, 40, 40))
    mean, std = store_band_stats(attrs)
    out = predict_rs_scene(
        _first_band_rule, str(stack), attrs, mean, std, tile=32, num_classes=CLASSES,
        output_dir=tmp_path / "p", classes=TABLE,
    )  # fmt: skip
    with rasterio.open(out["classes"]) as src:
        ids = src.read(1)
        assert src.nodata == 255
        colormap = src.colormap(1)
    assert (ids[80:, 80:] == 255).all()  # nodata in, nodata out
    assert set(np.unique(ids[:80])) <= {1, 2}
    assert colormap[1] == (0, 0, 255, 255)
    assert colormap[2] == (200, 160, 0, 255)
    aux = ET.parse(f"{out['classes']}.aux.xml").getroot()
    names = [c.text or "" for c in aux.iter("Category")]
    assert names == ["", "water", "bare soil"]  # position = pixel value


def test_ct_prediction_writes_a_slicer_colour_table(tmp_path: Path) -> None:
    volume = np.random.default_rng(0).uniform(-200, 300, (24, 24, 16)).astype(np.int16)
    nii = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 1.5, 1.0])), nii)

    def rule(x: torch.Tensor) -> torch.Tensor:
        cls = torch.where(x[:, 0] > 0.5, 2, 1)
        return torch.nn.functional.one_hot(cls, CLASSES).movedim(-1, 1).float()

    out = predict_ct_volume(
        rule, str(nii), spacing=(1.5, 1.5, 1.5), window=(-175, 250), roi=16,
        num_classes=CLASSES, output_dir=tmp_path / "p", classes=TABLE,
    )  # fmt: skip
    lines = Path(out["color_table"]).read_text().splitlines()
    entries = [line.split() for line in lines if not line.startswith("#")]
    assert entries == [["1", "water", "0", "0", "255", "255"],
                       ["2", "bare_soil", "200", "160", "0", "255"]]  # fmt: skip
    assert set(np.unique(nib.load(out["classes"]).get_fdata())) <= {1, 2}
