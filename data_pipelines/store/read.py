"""Reading a store: its attributes, its manifest, the samples training may use, and arrays
opened lazily in whichever process reads them.

Nothing here opens zarr in the calling process until a sample is read: the attributes come
from ``zarr.json`` as plain JSON and the manifest from parquet, so a parent process can build
datasets and fork DataLoader workers that each open the store on first use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipelines.store.layout import (
    ATTR_BAND_STATS,
    COL_ARRAY,
    COL_DUP_OF,
    COL_EXCLUDED,
    COL_INDEX,
    COL_SPLIT,
    manifest_path,
    store_path,
)


def read_store_attrs(store_dir: str | Path) -> dict[str, Any]:
    """The root group's attributes, read from ``zarr.json`` directly (no zarr event loop)."""
    meta_path = store_path(store_dir) / "zarr.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} not found: pass the output folder of build_dataset (it holds store.zarr/)"
        )
    return json.loads(meta_path.read_text()).get("attributes", {})


def store_band_stats(attrs: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """(mean, std) per band from the store's ``band_stats`` attribute, or None when absent."""
    stats = attrs.get(ATTR_BAND_STATS)
    if not stats or "mean" not in stats or "std" not in stats:
        return None
    return [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]


def read_manifest(out_dir: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The manifest of a built dataset (all columns, or the listed ones that exist)."""
    path = manifest_path(out_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give the folder a build wrote (--output)")
    if columns is None:
        return pq.read_table(path)
    present = set(pq.read_schema(path).names)
    return pq.read_table(path, columns=[c for c in columns if c in present])


def _is_set(table: pa.Table, column: str) -> np.ndarray:
    """Per row: the column holds a value (not null, not an empty string); all False if absent."""
    if column not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    values = table.column(column)
    present = pc.is_valid(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        present = pc.and_(present, pc.fill_null(pc.not_equal(values, ""), False))
    return present.to_numpy(zero_copy_only=False)


def usable_rows(
    table: pa.Table,
    split: str | None = "train",
    include_duplicates: bool = False,
    require: Sequence[str] = (COL_ARRAY,),
) -> pa.Table:
    """The manifest filter: rows that are not excluded, not a duplicate (unless
    ``include_duplicates``), in ``split`` (``None``: any) and have every ``require`` column set.

    Rows keep their manifest order.
    """
    keep = ~_is_set(table, COL_EXCLUDED)
    if not include_duplicates:
        keep &= ~_is_set(table, COL_DUP_OF)
    if split is not None:
        if COL_SPLIT in table.column_names:
            in_split = pc.fill_null(pc.equal(table.column(COL_SPLIT), split), False)
            keep &= in_split.to_numpy(zero_copy_only=False)
        else:
            keep[:] = False
    for column in require:
        keep &= _is_set(table, column)
    return table.filter(pa.array(keep))


def select_samples(
    store_dir: str | Path, split: str | None = "train", include_duplicates: bool = False
) -> list[tuple[str, int]]:
    """(array path, index) of the usable samples: not excluded, not a duplicate, in ``split``."""
    rows = usable_rows(read_manifest(store_dir), split, include_duplicates)
    return list(
        zip(
            rows.column(COL_ARRAY).to_pylist(),
            (int(i) for i in rows.column(COL_INDEX).to_pylist()),
            strict=True,
        )
    )


class LazyZarrArrays:
    """Opens the zarr group on first use in each process (safe across DataLoader forks).

    Pickling drops the open group, and a process that did not open it (a forked worker)
    opens its own, so no zarr handle or event loop crosses a fork.
    """

    def __init__(self, store_dir: str | Path) -> None:
        self.store_path = str(store_path(store_dir))
        self._pid: int | None = None
        self._arrays: dict[str, Any] = {}
        self._root: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"store_path": self.store_path, "_pid": None, "_arrays": {}, "_root": None}

    @property
    def is_open(self) -> bool:
        """Whether this process holds an open group."""
        return self._root is not None and self._pid == os.getpid()

    def read(self, array: str, index: int) -> np.ndarray:
        if self._pid != os.getpid():
            import zarr

            self._root = zarr.open_group(self.store_path, mode="r")
            self._arrays = {}
            self._pid = os.getpid()
        arr = self._arrays.get(array)
        if arr is None:
            arr = self._arrays[array] = self._root[array]
        return np.asarray(arr[index])
