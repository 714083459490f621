"""Labeled RS stores: label tiles aligned with image tiles, reprojection, matching, class table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import zarr
from rasterio.windows import Window

from data_pipelines.classes import load_class_table
from data_pipelines.errors import LabelError
from data_pipelines.rs.labels import match_label
from data_pipelines.store.read import read_calibrated
from geomed_mim.build_dataset import main

REPO = Path(__file__).resolve().parents[3]
CLASSES = str(REPO / "configs" / "data" / "classes" / "eolearn_lulc.yaml")
FLAGS = ["--tile-size", "32", "--workers", "1", "--classes", CLASSES]


def _mask(demo_data: Path) -> Path:
    return demo_data / "sentinel2_l1c" / "labels" / "lulc_mask.tif"


def _check_aligned(out: Path, mask_pixels: np.ndarray, ignore: int) -> int:
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    kept = m[m["excluded"].isna()]
    for _, r in kept.iterrows():
        label = root[r["label_array"]][r["index"]]
        expected = mask_pixels[r.row_off : r.row_off + 32, r.col_off : r.col_off + 32]
        np.testing.assert_array_equal(label, expected)
        assert r["labeled_fraction"] == pytest.approx((expected != ignore).mean())
        assert root[r["label_array"]].shape[0] == root[r["array"]].shape[0]
    return len(kept)


def _build_scene_with_label(
    demo_data: Path, tmp_path: Path, label: np.ndarray, profile: dict
) -> Path:
    """Build demo scene 2 with ``label`` (written as a GeoTIFF with ``profile``) as its labels."""
    path = tmp_path / "label.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(label, 1)
    out = tmp_path / "out"
    scene = demo_data / "sentinel2_l1c" / "scenes" / "s2_l1c_reference_scene_2.tif"
    assert main(["--input", str(scene), "--labels", str(path), "--output", str(out), *FLAGS]) == 0
    return out


def test_demo_lulc_store_labels_align_with_tiles(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "lulc"
    scenes = demo_data / "sentinel2_l1c" / "scenes"
    assert main(["--input", str(scenes), "--labels", str(_mask(demo_data)), "--output", str(out),
                 *FLAGS]) == 0  # fmt: skip
    with rasterio.open(_mask(demo_data)) as src:
        mask = src.read(1)
    assert _check_aligned(out, mask, ignore=0) == 80
    attrs = zarr.open_group(str(out / "store.zarr"), mode="r").attrs["classes"]
    assert attrs["ignore_index"] == 0
    assert attrs["names"][attrs["ids"].index(2)] == "forest"


def test_label_on_a_finer_grid_is_reprojected_with_nearest(demo_data: Path, tmp_path: Path) -> None:
    with rasterio.open(_mask(demo_data)) as src:
        mask, profile = src.read(1), src.profile
    fine = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)  # the same classes at 5 m
    t = profile["transform"]
    profile.update(
        width=fine.shape[1],
        height=fine.shape[0],
        transform=rasterio.Affine(t.a / 2, 0, t.c, 0, t.e / 2, t.f),
    )
    out = _build_scene_with_label(demo_data, tmp_path, fine, profile)
    assert _check_aligned(out, mask, ignore=0) == 16


def test_unknown_class_ids_become_ignore(demo_data: Path, tmp_path: Path) -> None:
    with rasterio.open(_mask(demo_data)) as src:
        mask, profile = src.read(1), src.profile
    odd = mask.copy()
    odd[:10, :10] = 42  # not in the class table
    out = _build_scene_with_label(demo_data, tmp_path, odd, profile)
    expected = odd.copy()
    expected[expected == 42] = 0
    _check_aligned(out, expected, ignore=0)


def test_label_folder_matching_and_missing_label_quarantine(
    demo_data: Path, tmp_path: Path
) -> None:
    scenes = tmp_path / "scenes"
    labels = tmp_path / "labels"
    scenes.mkdir()
    labels.mkdir()
    for i in (0, 1):
        name = f"s2_l1c_reference_scene_{i}.tif"
        shutil.copy(demo_data / "sentinel2_l1c" / "scenes" / name, scenes / name)
    shutil.copy(_mask(demo_data), labels / "s2_l1c_reference_scene_0_mask.tif")
    assert match_label(str(labels), [str(scenes / "s2_l1c_reference_scene_0.tif")], "x") == str(
        labels / "s2_l1c_reference_scene_0_mask.tif"
    )
    out = tmp_path / "out"
    assert main(["--input", str(scenes), "--labels", str(labels), "--output", str(out),
                 *FLAGS]) == 0  # fmt: skip
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(q) == 1
    assert "scene_1" in q[0]["source"]
    assert "no label raster" in q[0]["reason"]
    root = zarr.open_group(str(out / "store.zarr"), mode="r")
    assert list(root["labels"].array_keys()) == ["s2_l1c_reference_scene_0"]


def test_labels_without_classes_is_a_config_error(
    demo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--labels", str(_mask(demo_data)), "--output", str(tmp_path / "o")])
    assert code == 2
    assert "--classes" in capsys.readouterr().err


def test_class_table_validation(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("ignore_index: 1\nclasses:\n  - {id: 1, name: a}\n")
    with pytest.raises(LabelError, match="also a class id"):
        load_class_table(bad)
    assert load_class_table(CLASSES).ids[0] == 1


def test_demo_lulc_config_builds_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the config's relative classes path must still resolve
    out = tmp_path / "demo_lulc"
    assert main(["--config", str(REPO / "configs" / "data" / "demo_lulc.yaml"),
                 "--output", str(out), "--workers", "1"]) == 0  # fmt: skip
    assert (out / "store.zarr" / "labels").is_dir()
    # a kept tile's pixels and its label come from the same window
    m = pq.read_table(out / "manifest.parquet").to_pandas().iloc[0]
    with rasterio.open(m["source"]) as src:
        img = src.read(window=Window(m.col_off, m.row_off, 32, 32))
    got = read_calibrated(out, m["array"], m["index"])
    np.testing.assert_allclose(got, img * np.float32(1e-4), rtol=1e-6)


# -- label conventions: any integer type, any integer ignore index ---------------------------------
BINARY_TABLE = (
    "ignore_index: {ignore}\nclasses:\n  - {{id: 0, name: other}}\n  - {{id: 1, name: forest}}\n"
)


@pytest.mark.parametrize(
    ("dtype", "nodata_value", "finer"),
    [
        ("int8", -1, False),
        ("int16", -1, False),
        ("int16", -1, True),
        ("int32", -1, False),
        ("uint16", 65535, False),
    ],
)
def test_binary_labels_with_a_nodata_value_of_any_integer_type(
    demo_data: Path, tmp_path: Path, dtype: str, nodata_value: int, finer: bool
) -> None:
    """Forest 1, other 0 and no-data ``nodata_value`` (-1, as Sen1Floods11 and other flood and
    land-cover sets write it) in a raster of ``dtype``, with ``ignore_index: nodata_value``: the
    store holds the ignore index as the value it records, and every other pixel as its class."""
    with rasterio.open(_mask(demo_data)) as src:
        lulc, profile = src.read(1), src.profile
    raw = np.where(lulc == 0, nodata_value, (lulc == 2).astype(np.int64)).astype(dtype)
    profile.update(dtype=dtype, nodata=None)
    if finer:  # the same labels at 5 m: read through the warped (reprojected) path
        raw = np.repeat(np.repeat(raw, 2, axis=0), 2, axis=1)
        t = profile["transform"]
        profile.update(width=raw.shape[1], height=raw.shape[0],
                       transform=rasterio.Affine(t.a / 2, 0, t.c, 0, t.e / 2, t.f))  # fmt: skip
    table = tmp_path / "binary.yaml"
    table.write_text(BINARY_TABLE.format(ignore=nodata_value))
    label = tmp_path / "label.tif"
    with rasterio.open(label, "w", **profile) as dst:
        dst.write(raw, 1)
    out = tmp_path / "out"
    scene = demo_data / "sentinel2_l1c" / "scenes" / "s2_l1c_reference_scene_2.tif"
    assert main(["--input", str(scene), "--labels", str(label), "--output", str(out),
                 "--tile-size", "32", "--workers", "1", "--classes", str(table)]) == 0  # fmt: skip

    stored_ignore = 255 if nodata_value == -1 else 65535  # -1 cannot be stored unsigned
    attrs = zarr.open_group(str(out / "store.zarr"), mode="r").attrs["classes"]
    assert attrs["ignore_index"] == stored_ignore
    assert attrs.get("source_ignore_index") == (-1 if nodata_value == -1 else None)
    expected = np.where(lulc == 0, stored_ignore, (lulc == 2).astype(np.int64))
    assert (expected == stored_ignore).any()
    assert (expected == 1).any()
    assert _check_aligned(out, expected, ignore=stored_ignore) == 16
    arrays = zarr.open_group(str(out / "store.zarr"), mode="r")["labels"]
    dtypes = {arrays[k].dtype for k in arrays.array_keys()}
    assert dtypes == {np.dtype(np.uint8 if stored_ignore == 255 else np.uint16)}
