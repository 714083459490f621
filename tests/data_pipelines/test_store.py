"""The store contract: layout names, attributes, manifest filter, lazy opening, atomic writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import zarr

from data_pipelines.store import layout
from data_pipelines.store.read import (
    LazyZarrArrays,
    read_manifest,
    read_store_attrs,
    select_samples,
    store_band_stats,
    usable_rows,
)
from data_pipelines.store.write import (
    PartWriter,
    atomic_write_bytes,
    atomic_write_json,
    open_root,
    read_fragment,
    volume_compressors,
    write_fragment,
    write_manifest,
    write_volume,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "store.md"


def _tiny_store(out: Path, n: int = 5) -> np.ndarray:
    """A store with one part of ``n`` (2, 4, 4) uint16 tiles; returns the tiles written."""
    tiles = np.arange(n * 2 * 4 * 4, dtype=np.uint16).reshape(n, 2, 4, 4)
    root = open_root(out)
    root.attrs.update({"bands": ["a", "b"], "tile_size": 4})
    writer = PartWriter(out, "tiles", "p0", (2, 4, 4), np.uint16, samples_per_shard=2)
    for t in tiles:
        writer.append(t)
    assert writer.close() == n
    return tiles


# -- layout ------------------------------------------------------------------------------------


def test_layout_names_are_the_documented_ones() -> None:
    names = {
        layout.STORE_DIRNAME: "store.zarr",
        layout.MANIFEST_NAME: "manifest.parquet",
        layout.BUILD_RECORD_NAME: "build.json",
        layout.QUARANTINE_NAME: "quarantine.jsonl",
        layout.PARTS_DIRNAME: "parts",
        layout.SETTINGS_NAME: "_settings.json",
        layout.LOCK_NAME: ".build.lock",
        layout.TILES_GROUP: "tiles",
        layout.LABELS_GROUP: "labels",
        layout.VOLUMES_GROUP: "volumes",
        layout.FOREGROUND_GROUP: "foreground",
    }
    assert all(k == v for k, v in names.items()), names
    doc = DOCS.read_text()
    for name in names:
        assert name in doc, f"docs/store.md does not mention {name}"
    for key in (layout.ATTR_FORMAT, layout.ATTR_BANDS, layout.ATTR_BAND_STATS, layout.ATTR_CLASSES):
        assert f"`{key}`" in doc


def test_paths_are_built_from_the_names(tmp_path: Path) -> None:
    assert layout.store_path(tmp_path) == tmp_path / "store.zarr"
    assert layout.manifest_path(tmp_path) == tmp_path / "manifest.parquet"
    assert layout.fragment_path(tmp_path, "s1") == tmp_path / "parts" / "s1.parquet"
    assert layout.array_path("volumes", "case_1") == "volumes/case_1"
    assert layout.array_dir(tmp_path, "volumes/case_1") == tmp_path / "store.zarr/volumes/case_1"


def test_manifest_schemas_carry_the_columns_readers_select_on() -> None:
    readers_need = {layout.COL_ID, layout.COL_ARRAY, layout.COL_EXCLUDED, layout.COL_DUP_OF,
                    layout.COL_SPLIT, layout.COL_LABEL_ARRAY}  # fmt: skip
    assert readers_need | {layout.COL_INDEX} <= set(layout.RS_MANIFEST_SCHEMA.names)
    assert readers_need <= set(layout.CT_MANIFEST_SCHEMA.names)
    assert set(layout.RS_INTERNAL_COLUMNS) <= set(layout.RS_MANIFEST_SCHEMA.names)
    assert "hu_p0_5" in layout.CT_MANIFEST_SCHEMA.names  # 0.5th percentile, dot-free


def test_part_names_are_safe_unique_and_stable() -> None:
    ids = ["a/b c", "a__b-c", "a/b c", "..x.."]
    names = layout.unique_part_names(ids)
    assert names == layout.unique_part_names(ids)
    assert len(set(names)) == len(names)
    assert names[0] == "a__b-c"
    assert names[1].startswith("a__b-c-")
    assert len(names[1]) == len("a__b-c-") + 8
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_written_part_is_chunked_per_sample_and_sharded(tmp_path: Path) -> None:
    tiles = _tiny_store(tmp_path)
    arr = zarr.open_array(str(tmp_path / "store.zarr" / "tiles" / "p0"), mode="r")
    assert arr.shape == (5, 2, 4, 4)
    assert arr.chunks == (1, 2, 4, 4)
    assert arr.shards == (2, 2, 4, 4)
    np.testing.assert_array_equal(arr[:], tiles)
    # a second writer of the same part replaces the debris of the first
    PartWriter(tmp_path, "tiles", "p0", (2, 4, 4), np.uint16).close()
    assert zarr.open_array(str(tmp_path / "store.zarr" / "tiles" / "p0"), mode="r").shape[0] == 0


def test_volume_chunks_are_plain_and_clipped_to_the_shape(tmp_path: Path) -> None:
    vol = np.arange(10 * 20 * 30, dtype=np.int16).reshape(10, 20, 30)
    arr = write_volume(tmp_path, "volumes", "c", vol, (16, 16, 16), volume_compressors())
    assert arr.chunks == (10, 16, 16)
    assert arr.shards is None
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "store.zarr/volumes/c"))[:], vol)


# -- attributes --------------------------------------------------------------------------------


def test_attributes_round_trip_through_zarr_json(tmp_path: Path) -> None:
    attrs = {
        "geomed_mim_store": 1,
        "bands": ["B02", "B03"],
        "band_stats": {"mean": [0.1, 0.2], "std": [0.01, 0.02], "count": [16, 16]},
        "classes": {"ids": [1, 2], "names": ["water", "land"], "ignore_index": 255},
    }
    open_root(tmp_path).attrs.update(attrs)
    assert read_store_attrs(tmp_path) == attrs
    # the same attributes zarr itself reads
    assert dict(zarr.open_group(str(tmp_path / "store.zarr"), mode="r").attrs) == attrs
    assert store_band_stats(attrs) == ([0.1, 0.2], [0.01, 0.02])
    assert store_band_stats({"bands": ["a"]}) is None
    assert store_band_stats({"band_stats": {"mean": [1.0]}}) is None


def test_reading_attributes_of_a_folder_without_a_store_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="output folder of build_dataset"):
        read_store_attrs(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"--output"):
        read_manifest(tmp_path)


# -- the manifest filter -----------------------------------------------------------------------


def _manifest(**overrides: list) -> pa.Table:
    columns = {
        "id": ["t0", "t1", "t2", "t3", "t4", "t5", "t6"],
        "array": ["tiles/a", "tiles/a", "", "tiles/b", "tiles/b", None, "tiles/b"],
        "index": [0, 1, -1, 0, 1, 2, 2],
        "excluded": [None, None, "cloud", None, None, None, None],
        "dup_of": [None, None, None, "t0", None, None, ""],
        "split": ["train", "val", "train", "train", "train", "train", None],
        "label_array": ["labels/a", None, None, "labels/b", "", None, "labels/b"],
    }
    columns.update(overrides)
    return pa.table(columns)


@pytest.mark.parametrize(
    ("split", "include_duplicates", "require", "expected"),
    [
        ("train", False, ("array",), ["t0", "t4"]),  # excluded, duplicate, no array: left out
        ("train", True, ("array",), ["t0", "t3", "t4"]),
        ("val", False, ("array",), ["t1"]),
        (None, False, ("array",), ["t0", "t1", "t4", "t6"]),  # "" is not a value
        ("train", False, ("array", "label_array"), ["t0"]),
        (None, True, ("array", "label_array"), ["t0", "t3", "t6"]),
        ("test", False, ("array",), []),
    ],
)
def test_usable_rows(split, include_duplicates, require, expected) -> None:
    rows = usable_rows(_manifest(), split, include_duplicates, require)
    assert rows.column("id").to_pylist() == expected


def test_filter_without_optional_columns() -> None:
    table = _manifest().drop_columns(["excluded", "dup_of"])
    assert usable_rows(table, None).column("id").to_pylist() == ["t0", "t1", "t3", "t4", "t6"]
    assert usable_rows(table.drop_columns(["split"]), "train").num_rows == 0
    assert usable_rows(table.drop_columns(["split"]), None).num_rows == 5
    assert usable_rows(_manifest().slice(0, 0), "train").num_rows == 0


def test_select_samples_reads_the_written_manifest(tmp_path: Path) -> None:
    write_manifest(tmp_path, _manifest())
    assert select_samples(tmp_path) == [("tiles/a", 0), ("tiles/b", 1)]
    assert select_samples(tmp_path, "train", include_duplicates=True) == [
        ("tiles/a", 0),
        ("tiles/b", 0),
        ("tiles/b", 1),
    ]
    assert all(isinstance(i, int) for _, i in select_samples(tmp_path, None))
    assert read_manifest(tmp_path, columns=["id", "nope"]).column_names == ["id"]


def test_fragment_keeps_rows_and_summary(tmp_path: Path) -> None:
    assert read_fragment(tmp_path, "p") is None
    rows = [{"id": "x", "array": "tiles/p", "index": 0}]
    write_fragment(tmp_path, "p", rows, {"counts": {"samples_written": 1}, "arr": np.arange(2)})
    table, summary = read_fragment(tmp_path, "p")
    assert table.to_pylist() == rows
    assert table.schema.metadata is None
    assert summary == {"counts": {"samples_written": 1}, "arr": [0, 1]}


# -- lazy opening ------------------------------------------------------------------------------


def _read_in_child(reader: LazyZarrArrays, conn) -> None:
    was_open = reader.is_open
    tile = reader.read("tiles/p0", 3)
    conn.send((was_open, reader.is_open, tile))
    conn.close()


def test_lazy_arrays_open_per_process_and_pickle_closed(tmp_path: Path) -> None:
    tiles = _tiny_store(tmp_path)
    reader = LazyZarrArrays(tmp_path)
    assert not reader.is_open  # constructing opens nothing
    np.testing.assert_array_equal(reader.read("tiles/p0", 1), tiles[1])
    assert reader.is_open
    copy = pickle.loads(pickle.dumps(reader))
    assert not copy.is_open  # a pickled reader carries no zarr handle
    np.testing.assert_array_equal(copy.read("tiles/p0", 4), tiles[4])

    # a forked worker does not use the parent's open group: it opens its own
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    proc = ctx.Process(target=_read_in_child, args=(reader, child_end))
    proc.start()
    was_open, is_open, tile = parent_end.recv()
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert (was_open, is_open) == (False, True)
    np.testing.assert_array_equal(tile, tiles[3])


# -- atomic writes -----------------------------------------------------------------------------


class _Unwritable:
    """Not bytes: writing it fails after the temp file was created."""


def test_failed_atomic_write_leaves_no_temp_file_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "build.json"
    atomic_write_json(target, {"v": np.int64(1), "p": Path("/x"), "a": np.arange(2)})
    assert json.loads(target.read_text()) == {"v": 1, "p": "/x", "a": [0, 1]}
    with pytest.raises(TypeError):
        atomic_write_bytes(target, _Unwritable())  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.json"]
    assert json.loads(target.read_text())["v"] == 1
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(target, {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_respects_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == 0o666 & ~umask
    assert (tmp_path / "f.bin").read_bytes() == b"data"
