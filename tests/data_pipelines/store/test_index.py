"""The columnar sample index: the same samples as the manifest filter on real manifests (RS, CT,
labeled), only NumPy columns (nothing per sample), small when pickled, one pass per batch."""

from __future__ import annotations

import gc
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_pipelines.store import index as index_module
from data_pipelines.store.index import SampleIndex, build_sample_index, build_volume_index
from data_pipelines.store.layout import COL_ID, COL_LABEL_ARRAY
from data_pipelines.store.read import read_manifest, select_samples, usable_rows
from data_pipelines.store.write import write_manifest
from tests.geomed_mim.conftest import build_config_store, build_store


@pytest.fixture(scope="module")
def rs_store(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo Sentinel-2 scenes plus a copy of one (exact duplicates), some scenes in val."""
    root = tmp_path_factory.mktemp("index_rs")
    scenes = sorted((demo_data / "sentinel2_l1c" / "scenes").glob("*.tif"))
    (root / "in").mkdir()
    for f in scenes:
        (root / "in" / f.name).symlink_to(f)
    shutil.copy(scenes[0], root / "in" / "copy_of_first.tif")
    build_store("--input", str(root / "in"), "--output", str(root / "store"),
                "--tile-size", "32", "--val-fraction", "0.4")  # fmt: skip
    return root / "store"


@pytest.fixture(scope="module")
def labeled_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_config_store(tmp_path_factory, "index_lulc", "demo_lulc.yaml")


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_config_store(
        tmp_path_factory, "index_ct", "demo_ct_organs.yaml", "--val-fraction", "0"
    )


def _samples(index: SampleIndex) -> list[tuple[str, int]]:
    return [index.sample(i) for i in range(len(index))]


@pytest.mark.parametrize("split", ["train", "val", None])
@pytest.mark.parametrize("duplicates", [False, True])
def test_rs_index_lists_what_select_samples_lists(rs_store, split, duplicates) -> None:
    manifest = read_manifest(rs_store)
    assert manifest.column("dup_of").null_count < manifest.num_rows  # the filter has work
    index = build_sample_index(rs_store, split, duplicates)
    assert _samples(index) == select_samples(rs_store, split, duplicates)
    if split is not None:
        # one pass for every split, then each split taken out of it: the same samples
        every = build_sample_index(rs_store, None, duplicates)
        assert _samples(every.of_split(split)) == _samples(index)
        assert len(index) > 0
        assert set(index.split.tolist()) == {index.split_names.index(split)}


def test_labeled_index_lists_the_labeled_samples(labeled_store) -> None:
    from tests.geomed_mim.samples import labeled_rs_samples

    for split in ("train", "val", None):
        index = build_sample_index(labeled_store, split, labels=True)
        got = [(*index.sample(i)[:1], index.label_path(i), index.sample(i)[1])
               for i in range(len(index))]  # fmt: skip
        assert got == labeled_rs_samples(labeled_store, split)
    assert len(build_sample_index(labeled_store, None, labels=True)) > 0


def test_volume_index_lists_the_usable_volumes_of_several_stores(ct_store, rs_store) -> None:
    index = build_volume_index([ct_store, ct_store], None, labels=True)
    rows = usable_rows(read_manifest(ct_store), None, require=("array", COL_LABEL_ARRAY))
    expected = rows.to_pylist()
    assert len(index) == 2 * len(expected) > 0
    for i, row in enumerate(expected * 2):
        path_id = int(index.array[i])
        assert index.store_of(path_id) == str(ct_store)
        assert index.paths[path_id] == row["array"]
        assert index.label_path(i) == row[COL_LABEL_ARRAY]
        assert str(index.columns["ids"][i]) == row[COL_ID]
        assert index.columns["shape"][i].tolist() == row["shape"]
        assert index.paths[int(index.columns["foreground_array"][i])] == row["foreground_array"]
    assert index.max_label == max(max(r["label_ids"]) for r in expected)
    # the same array path in two stores is two entries of the path table
    assert len(index.paths) == 2 * len(set(index.paths))


def _synthetic_manifest(out: Path, parts: int, tiles: int) -> None:
    n = parts * tiles
    part = np.repeat(np.arange(parts), tiles)
    excluded = np.arange(n) % 11 == 0
    write_manifest(out, pa.table({
        "id": [f"s{p}/t{i}" for p, i in zip(part, np.arange(n) % tiles, strict=True)],
        "array": [("" if x else f"tiles/part{p:05d}") for p, x in zip(part, excluded, strict=True)],
        "index": np.where(excluded, -1, np.arange(n) % tiles),
        "excluded": [("cloud" if x else None) for x in excluded],
        "dup_of": [("s0/t0" if i % 13 == 0 else None) for i in range(n)],
        "split": [("val" if p % 7 == 0 else "train") for p in part],
    }))  # fmt: skip


def test_index_holds_arrays_not_objects_and_pickles_small(tmp_path, monkeypatch) -> None:
    _synthetic_manifest(tmp_path, parts=400, tiles=500)
    monkeypatch.setattr(index_module, "BATCH_ROWS", 30_000)  # several record batches
    gc.collect()
    before = len(gc.get_objects())
    index = build_sample_index(tmp_path)
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert len(index) > 140_000
    assert _samples(index) == select_samples(tmp_path)
    # Python objects: one string per part at most, never one per sample
    assert grown < len(index.paths) + 2_000
    for value in (index.array, index.tile, index.split, index.path_store):
        assert isinstance(value, np.ndarray)
        assert value.dtype != object
    assert index.array.dtype == np.int32
    assert index.tile.dtype == np.int32
    assert len(pickle.dumps(index)) < 10 * len(index) + 50_000  # ~9 bytes per sample
    taken = index.take(np.array([5, 0]))
    assert _samples(taken) == [index.sample(5), index.sample(0)]


def test_manifest_without_split_or_index_columns(tmp_path) -> None:
    write_manifest(tmp_path, pa.table({"array": ["tiles/a", "", "tiles/b"]}))
    assert len(build_sample_index(tmp_path, "train")) == 0  # no split column: no train rows
    index = build_sample_index(tmp_path, None)
    assert _samples(index) == [("tiles/a", 0), ("tiles/b", 0)]
    with pytest.raises(FileNotFoundError, match="--output"):
        build_sample_index(tmp_path / "missing")
