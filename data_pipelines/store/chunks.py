"""Chunks of the store's arrays read straight from their files, without zarr's codec pipeline.

zarr-python runs every chunk read through an async codec pipeline whose per-chunk overhead is
larger than decoding a tile or a 64³ block itself. The arrays this project writes have a plain
layout: a regular chunk grid, ``c/i/j/...`` keys, ``bytes`` (little-endian) optionally followed by
``blosc``; tiles are additionally sharded (``sharding_indexed`` with a ``bytes`` + ``crc32c``
index). For those layouts a chunk is one read of its bytes (for a shard: one more read of its
16-byte index entry) and one ``blosc.decompress``, straight into the caller's buffer. The bytes
come from a :class:`~data_pipelines.store.source.ByteSource`: ``os.pread`` for a local store,
ranged GETs for a store on object storage (which keeps each shard's index once fetched), so
both are read in place by the same code. Any other layout (other codecs, big-endian) is marked
``fast = False`` and its readers fall back to zarr, so correctness never depends on the fast
path.

The shard index's crc32c is not checked on this path (only one entry is read); a damaged entry
points at bytes that blosc refuses to decode, which raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.store.source import ByteSource, join, source_for

# zarr v3 data types that NumPy spells the same way
_PLAIN_DTYPES = frozenset(
    ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
     "float16", "float32", "float64")
)  # fmt: skip
_INDEX_ENTRY = 16  # (offset, nbytes) as two little-endian uint64


def set_blosc_threads(n: int) -> None:
    """Threads blosc may use in this process (1 in DataLoader workers: one core each)."""
    from numcodecs import blosc

    blosc.set_nthreads(n)
    blosc.use_threads = n > 1


def _inner_codecs_plain(codecs: list[dict[str, Any]]) -> bool:
    """``bytes`` (little-endian) optionally followed by ``blosc``: what the fast path decodes."""
    names = [c.get("name") for c in codecs]
    if names[:1] != ["bytes"] or names[1:] not in ([], ["blosc"]):
        return False
    return codecs[0].get("configuration", {}).get("endian", "little") == "little"


@dataclass
class ArrayLayout:
    """What ``zarr.json`` of one array says about reading its chunks directly.

    ``chunks`` is the unit one read decodes: the array's chunk shape, or the inner chunk shape
    of a sharded array (``shard`` then holds the shard shape).
    """

    path: str | Path  # the array's folder: a local Path or an object-store URL
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    fill_value: Any
    attrs: dict[str, Any]
    fast: bool
    shard: tuple[int, ...] | None = None
    blosc: bool = False
    index_at_end: bool = True
    index_bytes: int = 0  # size of a shard's index (entries + checksum)
    source: ByteSource = field(default_factory=lambda: source_for("."), repr=False)
    _fill: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def open(cls, array_dir: str | Path, source: ByteSource | None = None) -> ArrayLayout:
        """Read ``<array_dir>/zarr.json`` through ``source`` (default: the one ``array_dir``
        needs); nothing else is touched."""
        path = join(array_dir)
        source = source or source_for(path)
        meta: dict[str, Any] = source.read_json(join(path, "zarr.json"))
        dtype_name = meta.get("data_type")
        plain = isinstance(dtype_name, str) and dtype_name in _PLAIN_DTYPES
        if plain:
            dtype = np.dtype(dtype_name)
        else:  # an extension type: only zarr knows how to decode it
            import zarr

            dtype = np.dtype(zarr.open_array(str(path), mode="r").dtype)
        key = meta.get("chunk_key_encoding", {})
        regular = (
            meta.get("chunk_grid", {}).get("name") == "regular"
            and key.get("name") == "default"
            and key.get("configuration", {}).get("separator", "/") == "/"
        )
        layout = cls(
            path=path,
            shape=tuple(int(s) for s in meta["shape"]),
            dtype=dtype,
            chunks=tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"]),
            fill_value=meta.get("fill_value", 0),
            attrs=meta.get("attributes", {}),
            fast=False,
            source=source,
        )
        layout._read_codecs(meta.get("codecs", []))
        layout.fast = layout.fast and plain and regular
        return layout

    def _read_codecs(self, codecs: list[dict[str, Any]]) -> None:
        """Set ``fast``, ``blosc`` and the shard geometry from the codec list."""
        if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
            config = codecs[0].get("configuration", {})
            index_codecs = [c.get("name") for c in config.get("index_codecs", [])]
            inner = config.get("codecs", [])
            self.shard = self.chunks
            self.chunks = tuple(int(c) for c in config["chunk_shape"])
            per_shard = int(np.prod([s // c for s, c in zip(self.shard, self.chunks, strict=True)]))
            self.index_bytes = per_shard * _INDEX_ENTRY + 4 * ("crc32c" in index_codecs)
            self.index_at_end = config.get("index_location", "end") == "end"
            self.blosc = len(inner) == 2
            self.fast = (
                _inner_codecs_plain(inner)
                and index_codecs in (["bytes"], ["bytes", "crc32c"])
                and all(s % c == 0 for s, c in zip(self.shard, self.chunks, strict=True))
            )
        else:
            self.blosc = len(codecs) == 2
            self.fast = _inner_codecs_plain(codecs)

    # -- one chunk --------------------------------------------------------------------------

    def fill_chunk(self) -> np.ndarray:
        """A read-only chunk of the fill value (what zarr returns for an unwritten chunk)."""
        if self._fill is None:
            self._fill = np.full(self.chunks, self.fill_value, dtype=self.dtype)
            self._fill.setflags(write=False)
        return self._fill

    def chunk_bytes(self, idx: tuple[int, ...]) -> bytes | None:
        """The encoded bytes of chunk ``idx`` (grid coordinates); None when it was never written."""
        if self.shard is None:
            return self.source.read(join(self.path, "c", *map(str, idx)))
        per = [s // c for s, c in zip(self.shard, self.chunks, strict=True)]
        shard_key = [str(i // p) for i, p in zip(idx, per, strict=True)]
        inner = int(np.ravel_multi_index([i % p for i, p in zip(idx, per, strict=True)], per))
        return self.source.shard_chunk(
            join(self.path, "c", *shard_key), inner, self.index_bytes, self.index_at_end
        )

    def decode(self, raw: bytes, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one chunk's bytes into ``out`` (C-contiguous, chunk-sized) or a new array."""
        if out is None:
            out = np.empty(self.chunks, dtype=self.dtype)
        if self.blosc:
            from numcodecs import blosc

            blosc.decompress(raw, out)  # straight into the caller's buffer
        else:
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
        return out

    def read_chunk(self, idx: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
        """Chunk ``idx`` decoded (the fill chunk, read-only, when never written and no ``out``)."""
        raw = self.chunk_bytes(idx)
        if raw is None:
            if out is None:
                return self.fill_chunk()
            out[...] = self.fill_value
            return out
        return self.decode(raw, out)
