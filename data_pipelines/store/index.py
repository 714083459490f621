"""The columnar sample index: the manifest filter as NumPy arrays, no Python object per sample.

A 13M-row manifest as a list of ``(array, index)`` tuples costs gigabytes of Python objects in
the parent, and DataLoader workers forked from it slowly copy those pages as they touch the
objects' reference counts. :class:`SampleIndex` holds the same selection as a handful of NumPy
arrays: an integer id per sample into a small table of array paths (one entry per part), the
sample's row in that array, its split, optionally its label array. Forked workers share those
pages untouched; a pickled index is its arrays' bytes plus one string per part.

It is read with pyarrow a record batch at a time, string columns dictionary-encoded, so no
per-row string is ever materialized, and it applies exactly the rule of
:func:`data_pipelines.store.read.usable_rows` (not excluded, not a duplicate, in the split,
every required column set).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipelines.store.layout import (
    COL_ARRAY,
    COL_DUP_OF,
    COL_EXCLUDED,
    COL_ID,
    COL_INDEX,
    COL_LABEL_ARRAY,
    COL_SPLIT,
    manifest_path,
)

NO_ARRAY = -1  # label_array id of a sample without one
BATCH_ROWS = 1 << 20  # manifest rows decoded at a time: bounds the transient arrow memory


@dataclass(frozen=True)
class SampleIndex:
    """Usable samples of one or more stores, as arrays of length ``N``.

    ``paths[k]`` is an array path inside ``stores[path_store[k]]``; ``array[i]`` (and
    ``label_array[i]``, ``-1`` when absent) index ``paths``; ``tile[i]`` is the sample's row in
    its array (0 for CT, where a volume is a whole array). ``split[i]`` indexes ``split_names``.
    ``columns`` holds further per-sample arrays (CT: ``shape`` [N, 3], ``foreground_array``,
    ``ids``) and ``max_label`` the largest label id the manifest lists (labelled CT stores).
    """

    stores: tuple[str, ...]
    paths: tuple[str, ...]
    path_store: np.ndarray  # [P] int16
    array: np.ndarray  # [N] int32
    tile: np.ndarray  # [N] int32 (int64 past 2**31 rows)
    split: np.ndarray  # [N] int8
    split_names: tuple[str, ...] = ()
    label_array: np.ndarray | None = None  # [N] int32
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    max_label: int = 0

    def __len__(self) -> int:
        return len(self.array)

    @property
    def nbytes(self) -> int:
        arrays = [self.path_store, self.array, self.tile, self.split, self.label_array]
        arrays += list(self.columns.values())
        return sum(a.nbytes for a in arrays if a is not None)

    def store_of(self, path_id: int) -> str:
        return self.stores[int(self.path_store[path_id])]

    def sample(self, i: int) -> tuple[str, int]:
        """(array path, row) of sample ``i``, as ``select_samples`` lists it."""
        return self.paths[int(self.array[i])], int(self.tile[i])

    def label_path(self, i: int) -> str | None:
        if self.label_array is None or self.label_array[i] == NO_ARRAY:
            return None
        return self.paths[int(self.label_array[i])]

    def take(self, rows: np.ndarray | Sequence[int]) -> SampleIndex:
        """The samples ``rows`` (e.g. a seeded subset), in that order; the path table is kept."""
        rows = np.asarray(rows, dtype=np.int64)
        return replace(
            self,
            array=self.array[rows],
            tile=self.tile[rows],
            split=self.split[rows],
            label_array=None if self.label_array is None else self.label_array[rows],
            columns={k: v[rows] for k, v in self.columns.items()},
        )


# -- reading one manifest -------------------------------------------------------------------------


def _is_set(batch: pa.RecordBatch, column: str) -> np.ndarray:
    """Per row: the column holds a value (not null, not ""); all False when absent."""
    if column not in batch.schema.names:
        return np.zeros(batch.num_rows, dtype=bool)
    values = batch.column(column)
    present = pc.is_valid(values)
    value_type = values.type.value_type if pa.types.is_dictionary(values.type) else values.type
    if pa.types.is_string(value_type) or pa.types.is_large_string(value_type):
        if pa.types.is_dictionary(values.type):
            if len(values.dictionary) == 0:
                return np.zeros(batch.num_rows, dtype=bool)
            non_empty = pc.not_equal(values.dictionary, "").to_numpy(zero_copy_only=False)
            codes = pc.fill_null(values.indices, 0).to_numpy(zero_copy_only=False)
            return present.to_numpy(zero_copy_only=False) & non_empty[codes]
        present = pc.and_(present, pc.fill_null(pc.not_equal(values, ""), False))
    return present.to_numpy(zero_copy_only=False)


def _keep(
    batch: pa.RecordBatch, split: str | None, include_duplicates: bool, require: Sequence[str]
) -> np.ndarray:
    """The ``usable_rows`` rule on one record batch, as a boolean mask."""
    keep = ~_is_set(batch, COL_EXCLUDED)
    if not include_duplicates:
        keep &= ~_is_set(batch, COL_DUP_OF)
    if split is not None:
        if COL_SPLIT in batch.schema.names:
            keep &= _codes_equal(batch.column(COL_SPLIT), split)
        else:
            keep[:] = False
    for column in require:
        keep &= _is_set(batch, column)
    return keep


def _codes_equal(values: pa.Array, text: str) -> np.ndarray:
    if pa.types.is_dictionary(values.type):
        if len(values.dictionary) == 0:
            return np.zeros(len(values), dtype=bool)
        hit = pc.equal(values.dictionary, text).to_numpy(zero_copy_only=False)
        codes = pc.fill_null(values.indices, 0).to_numpy(zero_copy_only=False)
        return pc.is_valid(values).to_numpy(zero_copy_only=False) & hit[codes]
    return pc.fill_null(pc.equal(values, text), False).to_numpy(zero_copy_only=False)


class _Table:
    """A growing table of distinct strings (per store); maps a batch's dictionary to ids."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, str]] = []
        self.ids: dict[tuple[int, str], int] = {}

    @property
    def names(self) -> list[str]:
        return [name for _, name in self.keys]

    @property
    def stores(self) -> list[int]:
        return [store for store, _ in self.keys]

    def id_of(self, name: str, store: int = 0) -> int:
        key = (store, name)
        got = self.ids.get(key)
        if got is None:
            got = self.ids[key] = len(self.keys)
            self.keys.append(key)
        return got

    def encode(
        self, values: pa.Array, keep: np.ndarray, store: int = 0, missing: int = NO_ARRAY
    ) -> np.ndarray:
        """Ids (int32) of the kept rows of a (dictionary or plain) string column; ``missing``
        for null or empty values."""
        if not pa.types.is_dictionary(values.type):
            values = pc.dictionary_encode(values)
        local = values.dictionary.to_pylist()  # one string per distinct value in the batch
        remap = np.array(
            [missing if not s else self.id_of(s, store) for s in local] + [missing],
            dtype=np.int32,
        )
        codes = pc.fill_null(values.indices, len(local)).to_numpy(zero_copy_only=False)
        return remap[codes[keep]]


@dataclass
class _Columns:
    """What one manifest contributes, gathered a record batch at a time."""

    array: list[np.ndarray] = field(default_factory=list)
    tile: list[np.ndarray] = field(default_factory=list)
    split: list[np.ndarray] = field(default_factory=list)
    label: list[np.ndarray] = field(default_factory=list)


def _read_batches(path: Path, wanted: Sequence[str]) -> Iterable[pa.RecordBatch]:
    present = set(pq.read_schema(path).names)
    columns = [c for c in dict.fromkeys(wanted) if c in present]
    strings = [c for c in (COL_ARRAY, COL_LABEL_ARRAY, COL_SPLIT) if c in columns]
    parquet = pq.ParquetFile(path, read_dictionary=strings)
    yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _tile_dtype(tiles: np.ndarray) -> np.dtype:
    return np.dtype(np.int32 if not len(tiles) or tiles.max() < 2**31 else np.int64)


@dataclass
class _Builder:
    """Accumulates samples of one or more manifests into one index."""

    split: str | None
    include_duplicates: bool
    require: tuple[str, ...]
    with_labels: bool
    paths: _Table = field(default_factory=_Table)
    splits: _Table = field(default_factory=_Table)
    parts: _Columns = field(default_factory=_Columns)

    def add_batch(self, batch: pa.RecordBatch, store_id: int) -> np.ndarray:
        """Encode the usable rows of ``batch``; returns its keep mask."""
        keep = _keep(batch, self.split, self.include_duplicates, self.require)
        self.parts.array.append(self.paths.encode(batch.column(COL_ARRAY), keep, store_id))
        if self.with_labels and COL_LABEL_ARRAY in batch.schema.names:
            labels = self.paths.encode(batch.column(COL_LABEL_ARRAY), keep, store_id)
            self.parts.label.append(labels)
        elif self.with_labels:
            self.parts.label.append(np.full(int(keep.sum()), NO_ARRAY, dtype=np.int32))
        if COL_INDEX in batch.schema.names:
            tiles = pc.fill_null(batch.column(COL_INDEX), -1).to_numpy(zero_copy_only=False)
            self.parts.tile.append(tiles[keep])
        else:
            self.parts.tile.append(np.zeros(int(keep.sum()), dtype=np.int64))
        if COL_SPLIT in batch.schema.names:
            self.parts.split.append(
                self.splits.encode(batch.column(COL_SPLIT), keep, missing=-1).astype(np.int8)
            )
        else:
            self.parts.split.append(np.full(int(keep.sum()), -1, dtype=np.int8))
        return keep

    def finish(self, stores: Sequence[str], columns: dict[str, np.ndarray]) -> SampleIndex:
        def cat(chunks: list[np.ndarray], dtype: np.dtype | type) -> np.ndarray:
            if not chunks:
                return np.zeros(0, dtype)
            return np.concatenate(chunks).astype(dtype, copy=False)

        tiles = cat(self.parts.tile, np.int64)
        return SampleIndex(
            stores=tuple(stores),
            paths=tuple(self.paths.names),
            path_store=np.asarray(self.paths.stores, dtype=np.int16),
            array=cat(self.parts.array, np.int32),
            tile=tiles.astype(_tile_dtype(tiles)),
            split=cat(self.parts.split, np.int8),
            split_names=tuple(self.splits.names),
            label_array=cat(self.parts.label, np.int32) if self.with_labels else None,
            columns=columns,
        )


def build_sample_index(
    store_dir: str | Path,
    split: str | None = "train",
    include_duplicates: bool = False,
    labels: bool = False,
) -> SampleIndex:
    """The usable samples of one store (see :func:`data_pipelines.store.read.usable_rows`).

    With ``labels`` only samples that have a label array are kept and ``label_array`` is set.
    """
    path = manifest_path(store_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the folder a build wrote (--output)")
    require = (COL_ARRAY, COL_LABEL_ARRAY) if labels else (COL_ARRAY,)
    builder = _Builder(split, include_duplicates, require, labels)
    wanted = [COL_ARRAY, COL_INDEX, COL_EXCLUDED, COL_DUP_OF, COL_SPLIT, COL_LABEL_ARRAY]
    for batch in _read_batches(path, wanted):
        builder.add_batch(batch, 0)
    return builder.finish([str(store_dir)], {})


# -- CT: several stores, per-volume columns ------------------------------------------------------


def _ct_columns(
    batch: pa.RecordBatch, keep: np.ndarray, paths: _Table, store_id: int
) -> dict[str, np.ndarray]:
    """The per-volume columns a crop loader needs: ids, shape, foreground array, label ids."""
    kept = batch.filter(pa.array(keep))
    shape = pc.list_flatten(kept.column("shape")).to_numpy(zero_copy_only=False)
    out = {
        "ids": np.asarray(kept.column(COL_ID).to_pylist(), dtype=str),
        "shape": shape.astype(np.int64).reshape(-1, 3),
        "foreground_array": np.full(kept.num_rows, NO_ARRAY, dtype=np.int32),
    }
    if "foreground_array" in kept.schema.names:
        out["foreground_array"] = paths.encode(
            kept.column("foreground_array"), np.ones(kept.num_rows, dtype=bool), store_id
        )
    labels = kept.column("label_ids") if "label_ids" in kept.schema.names else None
    flat = pc.list_flatten(labels).to_numpy(zero_copy_only=False) if labels is not None else []
    out["max_label"] = np.array([int(flat.max()) if len(flat) else 0])
    return out


def build_volume_index(
    stores: Sequence[str | Path],
    split: str | None = "train",
    include_duplicates: bool = False,
    labels: bool = False,
) -> SampleIndex:
    """The usable volumes of CT stores, one sample per volume, stores in the given order;
    ``label_array`` is set where a volume has one (with ``labels`` only those are kept).

    ``columns``: ``ids`` (case ids, a NumPy string array), ``shape`` [N, 3] (stored voxels),
    ``foreground_array`` (path id or -1); ``max_label`` is the largest listed label id.
    """
    require = (COL_ARRAY, COL_LABEL_ARRAY) if labels else (COL_ARRAY,)
    builder = _Builder(split, include_duplicates, require, with_labels=True)
    per_store: list[dict[str, np.ndarray]] = []
    wanted = [COL_ID, COL_ARRAY, COL_LABEL_ARRAY, "foreground_array", "shape", "label_ids",
              COL_EXCLUDED, COL_DUP_OF, COL_SPLIT]  # fmt: skip
    for store_id, store in enumerate(stores):
        path = manifest_path(store)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: give the folder a build wrote (--output)")
        for batch in _read_batches(path, wanted):
            keep = builder.add_batch(batch, store_id)
            per_store.append(_ct_columns(batch, keep, builder.paths, store_id))
    max_label = max((int(c.pop("max_label")[0]) for c in per_store), default=0)
    columns = {
        key: np.concatenate([c[key] for c in per_store]) if per_store else np.zeros(0)
        for key in ("ids", "shape", "foreground_array")
    }
    if not per_store:
        columns = {
            "ids": np.zeros(0, dtype=str),
            "shape": np.zeros((0, 3), dtype=np.int64),
            "foreground_array": np.zeros(0, dtype=np.int32),
        }
    return replace(builder.finish([str(s) for s in stores], columns), max_label=max_label)
