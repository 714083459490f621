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
from typing import Any

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
    COL_NATIVE_SIZE,
    COL_SPLIT,
)
from data_pipelines.store.source import manifest_location, opened

NO_ARRAY = -1  # label_array id of a sample without one
BATCH_ROWS = 1 << 20  # manifest rows decoded at a time: bounds the transient arrow memory


@dataclass(frozen=True, eq=False)
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

    def of_split(self, name: str) -> SampleIndex:
        """The samples of split ``name`` (an index built with ``split=None`` holds them all:
        one pass over the manifest serves the train and the val dataset)."""
        if name not in self.split_names:
            return self.take(np.zeros(0, dtype=np.int64))
        return self.take(np.flatnonzero(self.split == self.split_names.index(name)))

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


class _Columns:
    """Per-sample columns filled a record batch at a time into arrays allocated once for the
    manifest's row count (the usable rows are fewer), shrunk in place at the end: the index
    never holds a second copy of itself."""

    def __init__(self, rows: int, with_labels: bool) -> None:
        self.n = 0
        self.array = np.empty(rows, dtype=np.int32)
        self.tile = np.empty(rows, dtype=np.int32)  # widened if a row index needs it
        self.split = np.empty(rows, dtype=np.int8)
        self.label = np.empty(rows, dtype=np.int32) if with_labels else None

    def put(self, array: np.ndarray, tile: np.ndarray, split: np.ndarray, label: Any) -> None:
        k = len(array)
        if len(tile) and tile.max() >= 2**31 and self.tile.dtype == np.int32:
            self.tile = self.tile.astype(np.int64)
        window = slice(self.n, self.n + k)
        self.array[window], self.tile[window], self.split[window] = array, tile, split
        if self.label is not None:
            self.label[window] = label
        self.n += k

    def shrunk(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The filled part of each column, resized in place and made read-only (nothing may
        write to pages that forked workers share)."""
        for column in (self.array, self.tile, self.split, self.label):
            if column is not None:
                column.resize(self.n, refcheck=False)
                column.setflags(write=False)
        return self.array, self.tile, self.split, self.label


def _read_batches(path: str | Path, wanted: Sequence[str]) -> Iterable[pa.RecordBatch]:
    """Record batches of the ``wanted`` columns that exist (an object-store manifest is read
    by ranges: its footer, then only those columns' pages)."""
    with opened(path) as source:
        present = set(pq.ParquetFile(source).schema_arrow.names)
        columns = [c for c in dict.fromkeys(wanted) if c in present]
        strings = [c for c in (COL_ARRAY, COL_LABEL_ARRAY, COL_SPLIT) if c in columns]
        parquet = pq.ParquetFile(source, read_dictionary=strings, pre_buffer=False)
        yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False)


def _manifest_rows(paths: Sequence[str | Path]) -> int:
    """Rows of all manifests (FileNotFoundError naming the first one missing)."""
    rows = 0
    for path in paths:
        try:
            with opened(path) as source:
                rows += pq.ParquetFile(source).metadata.num_rows
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path} not found: give the folder a build wrote (--output)"
            ) from None
    return rows


@dataclass
class _Builder:
    """Accumulates samples of one or more manifests into one index."""

    split: str | None
    include_duplicates: bool
    require: tuple[str, ...]
    with_labels: bool
    rows: int  # manifest rows to come (all manifests)
    paths: _Table = field(default_factory=_Table)
    splits: _Table = field(default_factory=_Table)
    parts: _Columns = field(init=False)

    def __post_init__(self) -> None:
        self.parts = _Columns(self.rows, self.with_labels)

    def add_batch(self, batch: pa.RecordBatch, store_id: int) -> np.ndarray:
        """Encode the usable rows of ``batch``; returns its keep mask."""
        keep = _keep(batch, self.split, self.include_duplicates, self.require)
        kept = int(keep.sum())
        names = batch.schema.names
        array = self.paths.encode(batch.column(COL_ARRAY), keep, store_id)
        label = NO_ARRAY
        if self.with_labels and COL_LABEL_ARRAY in names:
            label = self.paths.encode(batch.column(COL_LABEL_ARRAY), keep, store_id)
        tile = np.zeros(kept, dtype=np.int64)
        if COL_INDEX in names:
            tile = pc.fill_null(batch.column(COL_INDEX), -1).to_numpy(zero_copy_only=False)[keep]
        split = np.full(kept, -1, dtype=np.int8)
        if COL_SPLIT in names:
            split = self.splits.encode(batch.column(COL_SPLIT), keep, missing=-1)
        self.parts.put(array, tile, split, label)
        return keep

    def finish(self, stores: Sequence[str], columns: dict[str, np.ndarray]) -> SampleIndex:
        array, tile, split, label = self.parts.shrunk()
        return SampleIndex(
            stores=tuple(stores),
            paths=tuple(self.paths.names),
            path_store=np.asarray(self.paths.stores, dtype=np.int16),
            array=array,
            tile=tile,
            split=split,
            split_names=tuple(self.splits.names),
            label_array=label,
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
    path = manifest_location(store_dir)
    require = (COL_ARRAY, COL_LABEL_ARRAY) if labels else (COL_ARRAY,)
    builder = _Builder(split, include_duplicates, require, labels, _manifest_rows([path]))
    wanted = [COL_ARRAY, COL_INDEX, COL_EXCLUDED, COL_DUP_OF, COL_SPLIT, COL_LABEL_ARRAY,
              COL_NATIVE_SIZE]  # fmt: skip
    native: list[np.ndarray] = []
    for batch in _read_batches(path, wanted):
        keep = builder.add_batch(batch, 0)
        if COL_NATIVE_SIZE in batch.schema.names:
            sizes = pc.fill_null(batch.column(COL_NATIVE_SIZE), 0).to_numpy(zero_copy_only=False)
            native.append(sizes[keep].astype(np.int32))
    sizes = np.concatenate(native) if native else np.zeros(0, dtype=np.int32)
    columns = {}
    if len(np.unique(sizes)) > 1:  # several tile sizes (one size needs no column)
        sizes.setflags(write=False)
        columns[COL_NATIVE_SIZE] = sizes
    return builder.finish([str(store_dir)], columns)


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
    manifests = [manifest_location(s) for s in stores]
    builder = _Builder(split, include_duplicates, require, True, _manifest_rows(manifests))
    per_store: list[dict[str, np.ndarray]] = []
    wanted = [COL_ID, COL_ARRAY, COL_LABEL_ARRAY, "foreground_array", "shape", "label_ids",
              COL_EXCLUDED, COL_DUP_OF, COL_SPLIT]  # fmt: skip
    for store_id, path in enumerate(manifests):
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
