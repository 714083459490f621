"""STAC documents as --input: asset matching, item facts, calibration and user mistakes."""

from __future__ import annotations

import json

import numpy as np
import pystac
import pytest
from rasterio.windows import Window

from data_pipelines.errors import InputError
from data_pipelines.rs.discover import discover_scenes
from data_pipelines.rs.profiles import load_profile
from data_pipelines.rs.reader import SceneError, open_scene_reader
from data_pipelines.rs.stac import load_stac_items, looks_like_stac, match_assets
from data_pipelines.rs.toa import make_calibrator
from tests.data_pipelines.rs.stac_files import (
    EARTH_SEARCH_KEYS,
    S2_BANDS,
    item_collection,
    stac_item,
    synthetic_s2_scene,
    write_json,
)

BANDS = [b for b, *_ in S2_BANDS]


@pytest.fixture(scope="module")
def profile():
    return load_profile("sentinel2_l2a")


def _item(doc: dict) -> pystac.Item:
    return pystac.Item.from_dict(doc)


def test_assets_match_by_eo_name_key_and_common_name_with_wavelength(profile) -> None:
    by_name = stac_item("a", {b: f"/x/{b}.tif" for b in BANDS})
    matched, missing = match_assets(_item(by_name), profile)
    assert missing == []
    assert [matched[i][0] for i in range(12)] == BANDS
    # Earth Search keys (red, rededge1..3, nir08): eo:bands names equal the keys, so only the
    # common name plus centre wavelength tells the three red-edge bands apart
    es = stac_item("b", {b: f"/x/{b}.tif" for b in BANDS}, keys=EARTH_SEARCH_KEYS)
    matched, missing = match_assets(_item(es), profile)
    assert missing == []
    assert [matched[i][0] for i in range(12)] == [EARTH_SEARCH_KEYS[b] for b in BANDS]
    # keys alone (no eo:bands): B4 == B04
    bare = stac_item("c", {b: f"/x/{b}.tif" for b in BANDS})
    for asset in bare["assets"].values():
        del asset["eo:bands"]
    bare["assets"]["B4"] = bare["assets"].pop("B04")
    matched, missing = match_assets(_item(bare), profile)
    assert missing == []
    assert matched[3][0] == "B4"


def test_cog_preferred_over_jpeg2000_copy_of_the_same_band(profile) -> None:
    doc = stac_item("a", {b: f"/x/{b}.tif" for b in BANDS}, keys=EARTH_SEARCH_KEYS)
    jp2 = json.loads(json.dumps(doc["assets"]["red"]))
    jp2.update(href="/x/B04.jp2", type="image/jp2")
    doc["assets"] = {"red-jp2": jp2, **doc["assets"]}  # listed first, still not chosen
    matched, _ = match_assets(_item(doc), profile)
    assert matched[3][1].href == "/x/B04.tif"


def test_item_without_some_bands_is_a_scene_its_task_quarantines(profile, tmp_path) -> None:
    doc = stac_item("partial", {b: f"/x/{b}.tif" for b in BANDS if b not in ("B05", "B8A")})
    path = write_json(item_collection([doc, stac_item("full", {})]), tmp_path / "items.json")
    found = discover_scenes(str(path), profile)
    partial = next(s for s in found.scenes if s.scene_id == "partial")
    assert "no asset for band(s) B05, B8A of profile sentinel2_l2a" in partial.stac.problem
    assert partial.origin == f"{path}#partial"
    with pytest.raises(SceneError, match="B05, B8A"), open_scene_reader(partial, profile):
        pass


def test_raster_bands_scale_offset_nodata_and_item_facts(profile, tmp_path) -> None:
    paths = synthetic_s2_scene(tmp_path / "cogs", "s", seed=3, size=64)
    doc = stac_item(
        "S2B_T33_20210601",
        {b: str(p) for b, p in paths.items()},
        scale=1e-4,
        offset=-0.1,
        cloud_cover=7.25,
        datetime="2021-06-01T10:20:30Z",
    )
    item_path = write_json(doc, tmp_path / "item.json")
    (scene,) = discover_scenes(str(item_path), profile).scenes
    with open_scene_reader(scene, profile) as reader:
        cal = make_calibrator(reader.profile, "toa", reader.tags(), (), reader.product)
        cols = reader.scene_columns()
        raw = reader.read_window(Window(0, 0, 8, 8))
    assert cal.kind == "stac_raster_bands"
    dn = raw.astype(np.float64)
    expected = dn * 1e-4 - 0.1  # physical = scale * DN + offset (raster:bands definition)
    np.testing.assert_allclose(cal.apply(raw), expected, rtol=1e-6, atol=1e-6)  # float32
    assert cols["product"] == "S2B_T33_20210601"
    assert cols["acquired"] == "2021-06-01T10:20:30Z"
    assert cols["cloud_cover"] == 7.25
    assert cols["platform"] == "sentinel-2a"


def test_relative_hrefs_resolve_against_the_item(profile, tmp_path) -> None:
    paths = synthetic_s2_scene(tmp_path / "cat" / "a", "s", seed=1, size=32)
    doc = stac_item("a", {b: f"./{p.name}" for b, p in paths.items()})
    path = write_json(doc, tmp_path / "cat" / "a" / "item.json")
    (item,) = load_stac_items(str(path))
    assert item.assets["B04"].get_absolute_href() == str(paths["B04"])


def test_static_catalog_walks_to_its_items(profile, tmp_path) -> None:
    catalog = pystac.Catalog(id="archive", description="two items")
    for name in ("x", "y"):
        paths = synthetic_s2_scene(tmp_path / "cogs", name, seed=ord(name), size=32)
        catalog.add_item(
            pystac.Item.from_dict(stac_item(name, {b: str(p) for b, p in paths.items()}))
        )
    catalog.normalize_and_save(str(tmp_path / "catalog"), pystac.CatalogType.SELF_CONTAINED)
    found = discover_scenes(str(tmp_path / "catalog" / "catalog.json"), profile)
    assert [s.scene_id for s in found.scenes] == ["x", "y"]
    assert all(s.stac.problem is None for s in found.scenes)


def test_user_mistakes_name_the_flag_and_the_fix(profile, tmp_path) -> None:
    geojson = write_json({"type": "Point", "coordinates": [0, 0]}, tmp_path / "p.json")
    with pytest.raises(InputError, match=r"^--input: .* not STAC; give a STAC Item"):
        discover_scenes(str(geojson), profile)
    rgb = stac_item("rgb", {"R": "/x/r.tif"})
    rgb["assets"]["R"]["eo:bands"] = [{"name": "R"}]
    other = write_json(rgb, tmp_path / "other.json")
    with pytest.raises(InputError, match=r"^--input: no asset .* choose the --profile"):
        discover_scenes(str(other), profile)
    with pytest.raises(InputError, match=r"^--input: cannot fetch http://127\.0\.0\.1:9/"):
        discover_scenes("http://127.0.0.1:9/items.json", profile)  # discard port: refused
    empty = write_json(item_collection([]), tmp_path / "empty.json")
    with pytest.raises(InputError, match="holds no STAC items"):
        discover_scenes(str(empty), profile)


def test_landsat_mtl_json_is_not_taken_for_stac(tmp_path) -> None:
    mtl = write_json({"LANDSAT_METADATA_FILE": {}}, tmp_path / "LC08_MTL.json")
    item = write_json(stac_item("a", {}), tmp_path / "item.json")
    assert not looks_like_stac(str(mtl))
    assert looks_like_stac(str(item))
    assert looks_like_stac("https://example.com/search.json")
