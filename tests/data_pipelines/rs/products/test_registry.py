"""Products register themselves: the one door (``open_scene_reader``) finds every product's
reader in the registry, and a new product is one module."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from data_pipelines.rs.discover import discover_scenes
from data_pipelines.rs.products import ProductInfo, registry
from data_pipelines.rs.products.landsat import LandsatReader
from data_pipelines.rs.products.modis import ModisGranuleReader
from data_pipelines.rs.products.safe import SafeReader
from data_pipelines.rs.profiles import load_profile
from data_pipelines.rs.reader import open_scene_reader
from data_pipelines.rs.scene import Scene, SceneReader
from data_pipelines.rs.stac import StacSceneReader
from data_pipelines.rs.toa import CalibrationError, make_calibrator

TOY_PRODUCT = '''
"""A toy product: ``*.toy.tif`` files whose DN are stored doubled, calibrated by its own 0.5."""
import numpy as np

from data_pipelines.rs.products.registry import register_product
from data_pipelines.rs.scene import Scene, SceneReader, scene_id_for
from data_pipelines.rs.toa import Calibrator


class ToyReader(SceneReader):
    def read_window(self, window):
        return super().read_window(window) // 2


def toy_scenes(listing, profile, found):
    mine = {f for f in listing.files if f.name.endswith(".toy.tif")}
    for f in sorted(mine):
        found.scenes.append(Scene(scene_id_for(f, listing.root), (("", str(f)),), product="toy"))
    return mine


register_product(
    "toy", "doubled DN",
    lambda scene, profile, resampling, grid: ToyReader(scene, profile, resampling),
    calibrator=lambda profile, product: Calibrator("toy", np.full(3, 0.5), np.zeros(3)),
    find_scenes=toy_scenes,
)
'''


def test_the_registry_lists_the_products() -> None:
    assert registry.list_products() == ["landsat", "modis_l1b", "sentinel2", "stac_item"]


@pytest.mark.parametrize(
    ("kind", "reader"),
    [
        ("sentinel2_l1c_safe", SafeReader),
        ("sentinel2_l2a_safe", SafeReader),
        ("landsat_c2_l1", LandsatReader),
        ("landsat_pre_collection_l1", LandsatReader),
        ("modis_l1b", ModisGranuleReader),
        ("stac_item", StacSceneReader),
        ("", SceneReader),
    ],
)
def test_each_kind_opens_through_its_registered_reader(kind: str, reader: type) -> None:
    readers = {"sentinel2_l1c": "sentinel2_l1c", "sentinel2_l2a": "sentinel2_l2a",
               "landsat": "landsat8_l1", "modis": "modis_toa14"}  # fmt: skip
    name = next((p for k, p in readers.items() if kind.startswith(k)), "sentinel2_l1c")
    scene = Scene("s", (("", "/nonexistent"),), product=kind)
    assert type(open_scene_reader(scene, load_profile(name))) is reader


def test_an_unregistered_kind_is_named() -> None:
    scene = Scene("s", (("", "/nonexistent"),), product="spot6")
    with pytest.raises(ValueError, match="spot6"):
        open_scene_reader(scene, load_profile("rgb8"))


def test_a_new_product_is_one_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_PRODUCTS", dict(registry._PRODUCTS))  # undone after
    (tmp_path / "toy_product.py").write_text(TOY_PRODUCT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_product", raising=False)
    importlib.import_module("toy_product")
    assert "toy" in registry.list_products()
    dn = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(3, 2, 4) * 2
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "scene.toy.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=4, height=2, count=3, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(0, 20, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(dn)
    profile = load_profile("rgb8")
    scenes = discover_scenes(str(tmp_path / "in"), profile).scenes  # its file-name rules
    assert [s.product for s in scenes] == ["toy"]
    with open_scene_reader(scenes[0], profile) as r:  # its reader
        np.testing.assert_array_equal(r.read_window(Window(0, 0, 4, 2)), dn // 2)
    calibrator = make_calibrator(load_profile("rgb8"), "toa", product=ProductInfo("toy", "t"))
    assert calibrator.kind == "toy"  # the product's own calibration, not the profile's


def test_a_product_no_module_registered_is_never_calibrated_as_a_plain_raster() -> None:
    product = ProductInfo(kind="spot6", product_id="x")
    with pytest.raises(CalibrationError, match="spot6"):
        make_calibrator(load_profile("sentinel2_l1c"), "toa", product=product)
