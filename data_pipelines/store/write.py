"""Writing a store: atomic files, per-part arrays, fragments and the manifest.

A task owns its array (so it owns whole shards) and writes its fragment last, atomically: a
part whose fragment exists is complete; an array without one is debris from a killed run and
is rewritten on resume. Every file is written to a temporary name in the same folder, flushed
and renamed over the target, so a reader (or a crash) never sees half a file. An ``OSError``
while writing (no space, quota, read-only) is raised as an ``OutputWriteError``
(:mod:`data_pipelines.errors`): the build stops on it instead of blaming the input.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import BloscCodec

from data_pipelines.errors import output_writes
from data_pipelines.store.layout import (
    TILES_GROUP,
    array_path,
    fragment_path,
    manifest_path,
    store_path,
)

# uncompressed bytes per shard: big enough for few files per part, small enough to buffer
TARGET_SHARD_BYTES = 16 * 2**20


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    The file gets the permissions of any new file (0o666 less the umask); on failure the
    temp file is removed, ``path`` is left as it was, and an ``OSError`` is raised as an
    ``OutputWriteError``.
    """
    path = Path(path)
    with output_writes():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def open_root(out_dir: str | Path, groups: Iterable[str] = (TILES_GROUP,)) -> zarr.Group:
    """Create (or open) the store group and its sub-groups."""
    with output_writes():
        root = zarr.open_group(store=str(store_path(out_dir)), mode="a", zarr_format=3)
        for g in groups:
            if g not in root:
                root.create_group(g)
    return root


def default_compressor(level: int = 5) -> BloscCodec:
    # bit-shuffled zstd: integer imagery compresses ~2x better than byte shuffle, still fast
    return BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle")


class PartWriter:
    """Append samples of one shape to ``<group>/<part>``, a shard at a time.

    Samples are buffered until a whole shard is ready, so each shard is written exactly once
    and by exactly one task.
    """

    def __init__(
        self,
        out_dir: str | Path,
        group: str,
        part: str,
        sample_shape: tuple[int, ...],
        dtype: np.dtype | str,
        attrs: dict[str, Any] | None = None,
        samples_per_shard: int | None = None,
        compression_level: int = 5,
    ):
        self.dtype = np.dtype(dtype)
        sample_bytes = int(np.prod(sample_shape)) * self.dtype.itemsize
        self.samples_per_shard = samples_per_shard or max(
            1, min(1024, TARGET_SHARD_BYTES // max(sample_bytes, 1))
        )
        self.path = array_path(group, part)  # as the manifest records it
        self.array_dir = store_path(out_dir) / group / part
        delete_part_array(out_dir, group, part)  # debris of an interrupted run
        with output_writes():
            self.array = self._create(out_dir, sample_shape, attrs, compression_level)
        self._buffer: list[np.ndarray] = []
        self.count = 0

    def _create(
        self,
        out_dir: str | Path,
        sample_shape: tuple[int, ...],
        attrs: dict[str, Any] | None,
        compression_level: int,
    ) -> zarr.Array:
        return zarr.create_array(
            store=str(store_path(out_dir)),
            name=self.path,
            shape=(0, *sample_shape),
            chunks=(1, *sample_shape),
            shards=(self.samples_per_shard, *sample_shape),
            dtype=self.dtype,
            compressors=default_compressor(compression_level),
            fill_value=0,
            attributes=attrs or {},
            overwrite=True,
        )

    def append(self, sample: np.ndarray) -> int:
        """Queue one sample; return its index in the array."""
        self._buffer.append(sample)
        index = self.count
        self.count += 1
        if len(self._buffer) == self.samples_per_shard:
            self._flush()
        return index

    def _flush(self) -> None:
        if self._buffer:
            with output_writes():
                self.array.append(np.stack(self._buffer), axis=0)
            self._buffer.clear()

    def close(self) -> int:
        self._flush()
        return self.count


def delete_part_array(out_dir: str | Path, group: str, part: str) -> None:
    shutil.rmtree(store_path(out_dir) / group / part, ignore_errors=True)


# -- fragments and manifest --------------------------------------------------------------------


def write_fragment(
    out_dir: str | Path,
    part: str,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    schema: pa.Schema | None = None,
) -> None:
    """Commit a finished part: its manifest rows plus a JSON summary in the file metadata."""
    table = rows_to_table(rows, schema)
    meta = dict(table.schema.metadata or {})
    meta[b"geomed_part_summary"] = json.dumps(summary, default=_json_default).encode()
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(fragment_path(out_dir, part), sink.getvalue().to_pybytes())


def read_fragment(out_dir: str | Path, part: str) -> tuple[pa.Table, dict[str, Any]] | None:
    path = fragment_path(out_dir, part)
    if not path.is_file():
        return None
    table = pq.read_table(path)
    summary = json.loads((table.schema.metadata or {}).get(b"geomed_part_summary", b"{}"))
    return table.replace_schema_metadata(None), summary


def rows_to_table(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    if schema is not None:
        return pa.Table.from_pylist(rows, schema=schema)
    return pa.Table.from_pylist(rows) if rows else pa.table({})


def replace_column(table: pa.Table, name: str, values: list[Any]) -> pa.Table:
    """``table`` with column ``name`` replaced by ``values`` (same position, same type)."""
    index = table.schema.get_field_index(name)
    return table.set_column(index, name, pa.array(values, table.schema.field(name).type))


def write_manifest(out_dir: str | Path, table: pa.Table) -> Path:
    path = manifest_path(out_dir)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


def dir_size(path: str | Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(dirpath, f))
    return total


# -- whole-volume arrays (CT) ------------------------------------------------------------------

VOLUME_CODECS = ("lz4", "zstd", "none")


def volume_compressors(codec: str = "lz4", level: int = 5) -> list[BloscCodec]:
    """Codecs for crop-read volumes: decode speed matters more than size here.

    A random 96³ crop decodes ~8 chunks' worth of bytes, on every training step, so byte-shuffled
    lz4 (~3x faster to decode than bit-shuffled zstd, ~25% larger) is the default; ``zstd``
    trades speed for size and ``none`` stores raw chunks.
    """
    if codec == "none":
        return []
    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=level, shuffle="shuffle")]
    if codec == "zstd":
        return [BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle")]
    raise ValueError(f"codec {codec!r} is not one of {', '.join(VOLUME_CODECS)}")


def write_volume(
    out_dir: str | Path,
    group: str,
    name: str,
    array: np.ndarray,
    chunks: tuple[int, ...],
    compressors: list[BloscCodec],
    fill_value: int = 0,
    attrs: dict[str, Any] | None = None,
) -> zarr.Array:
    """Write one whole array as ``<group>/<name>`` (replacing debris of an interrupted run).

    Chunks are plain (unsharded) so that a crop reader can fetch exactly the chunks it needs;
    a volume is one task's output, so no two tasks ever share a chunk.
    """
    delete_part_array(out_dir, group, name)
    with output_writes():
        arr = zarr.create_array(
            store=str(store_path(out_dir)),
            name=f"{group}/{name}",
            shape=array.shape,
            chunks=tuple(min(c, max(s, 1)) for c, s in zip(chunks, array.shape, strict=True)),
            dtype=array.dtype,
            compressors=compressors,
            fill_value=fill_value,
            attributes=attrs or {},
            overwrite=True,
        )
        arr[...] = array
    return arr
