"""Reading a store: its attributes, its manifest, the samples training may use, and arrays
opened lazily in whichever process reads them, in physical units when asked
(:func:`read_calibrated`). The columnar form of the sample selection, for loaders, is
:mod:`data_pipelines.store.index`.

Nothing here opens zarr in the calling process until a sample is read: the attributes come
from ``zarr.json`` as plain JSON and the manifest from parquet, so a parent process can build
datasets and fork DataLoader workers that each open the store on first use. A store may be a
local folder or an object-store URL (``s3://bucket/prefix``); both are read in place by the same
code, the latter by ranged requests (:mod:`data_pipelines.store.source`).
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

from data_pipelines.store.calibration import StoredCalibration
from data_pipelines.store.chunks import ArrayLayout, set_blosc_threads
from data_pipelines.store.layout import (
    ATTR_BAND_STATS,
    COL_ARRAY,
    COL_DUP_OF,
    COL_EXCLUDED,
    COL_INDEX,
    COL_SPLIT,
)
from data_pipelines.store.source import (
    join,
    manifest_location,
    opened,
    source_for,
    store_location,
)


def read_store_attrs(store_dir: str | Path) -> dict[str, Any]:
    """The root group's attributes, read from ``zarr.json`` directly (no zarr event loop)."""
    meta_path = join(store_location(store_dir), "zarr.json")
    raw = source_for(meta_path).read(meta_path)
    if raw is None:
        raise FileNotFoundError(
            f"{meta_path} not found: pass the output folder of build_dataset (it holds store.zarr/)"
        )
    return json.loads(raw).get("attributes", {})


def store_band_stats(attrs: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """(mean, std) per band from the store's ``band_stats`` attribute, or None when absent."""
    stats = attrs.get(ATTR_BAND_STATS)
    if not stats or "mean" not in stats or "std" not in stats:
        return None
    return [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]]


def read_manifest(out_dir: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The manifest of a built dataset (all columns, or the listed ones that exist)."""
    path = manifest_location(out_dir)
    try:
        with opened(path) as source:
            parquet = pq.ParquetFile(source)
            if columns is None:
                return parquet.read()
            present = set(parquet.schema_arrow.names)
            return parquet.read(columns=[c for c in columns if c in present])
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: give the folder a build wrote (--output)"
        ) from None


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
    """Reads samples of a store's arrays, opening them on first use in each process (safe
    across DataLoader forks).

    A sample of a tile or label array (one sample per chunk, as the store writes them) is read
    by direct decoding (:mod:`data_pipelines.store.chunks`): its shard's index entry, its bytes,
    one ``blosc.decompress`` into the caller's buffer. Other layouts go through zarr. Pickling
    drops everything opened, and a process that did not open it (a forked worker) opens its own,
    so no zarr handle, event loop or cached layout crosses a fork.
    """

    def __init__(self, store_dir: str | Path) -> None:
        self.store_dir = str(store_dir)
        self.location = store_location(store_dir)  # store.zarr: a local Path or a URL
        self.source = source_for(self.location)  # opens its connection per process
        self._pid: int | None = None
        self._layouts: dict[str, ArrayLayout] = {}
        self._calibrations: dict[str, StoredCalibration | None] = {}
        self._zarr: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"store_dir": self.store_dir, "location": self.location,
                "source": self.source, "_pid": None,
                "_layouts": {}, "_calibrations": {}, "_zarr": {}}  # fmt: skip

    @property
    def is_open(self) -> bool:
        """Whether this process has opened anything of the store."""
        return self._pid == os.getpid()

    def _this_process(self) -> None:
        if self._pid != os.getpid():
            self._layouts, self._calibrations, self._zarr = {}, {}, {}
            self._pid = os.getpid()
            set_blosc_threads(1)  # a reader process is one core's worth of decoding

    def layout(self, array: str) -> ArrayLayout:
        """The array's layout, read from its ``zarr.json`` once per process."""
        self._this_process()
        found = self._layouts.get(array)
        if found is None:
            found = self._layouts[array] = ArrayLayout.open(join(self.location, array), self.source)
        return found

    def attrs(self, array: str) -> dict[str, Any]:
        return self.layout(array).attrs

    def calibration(self, array: str) -> StoredCalibration | None:
        """The calibration a compact part records (None: its values are final as stored)."""
        self._this_process()
        if array not in self._calibrations:
            self._calibrations[array] = StoredCalibration.from_attrs(self.attrs(array))
        return self._calibrations[array]

    def read(self, array: str, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """Sample ``index`` of ``array`` as stored (``out``: a C-contiguous buffer to fill)."""
        layout = self.layout(array)
        if not 0 <= index < layout.shape[0]:
            raise IndexError(f"{array}: sample {index} is outside [0, {layout.shape[0]})")
        if layout.fast and layout.chunks == (1, *layout.shape[1:]):
            chunk = out.reshape(layout.chunks) if out is not None else None
            got = layout.read_chunk((index,) + (0,) * (len(layout.shape) - 1), chunk)
            return got.reshape(layout.shape[1:]) if out is None else out
        tile = np.asarray(self._zarr_array(array)[index])
        if out is None:
            return tile
        out[...] = tile
        return out

    def _zarr_array(self, array: str) -> Any:
        found = self._zarr.get(array)
        if found is None:
            import zarr

            found = zarr.open_array(str(join(self.location, array)), mode="r")
            self._zarr[array] = found
        return found

    def read_calibrated(self, array: str, index: int) -> np.ndarray:
        """Sample ``index`` in physical units (float32; nodata NaN), whatever the part stores."""
        tile = self.read(array, index)
        calibration = self.calibration(array)
        if calibration is not None:
            return calibration.apply(tile)
        return tile.astype(np.float32, copy=False)


def read_calibrated(store: str | Path | LazyZarrArrays, array: str, index: int) -> np.ndarray:
    """One tile in physical units (float32, nodata NaN): a compact part's raw integers with its
    recorded calibration applied, or a float32 / raw part's values as stored."""
    reader = store if isinstance(store, LazyZarrArrays) else LazyZarrArrays(store)
    return reader.read_calibrated(array, index)
