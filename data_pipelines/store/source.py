"""Where a store's bytes come from: local files by ``pread``, or objects by ranged GETs.

A store folder may be a local path or an object-store URL (``s3://bucket/prefix``). Readers
name files by joining onto the store's location (:func:`join`) and fetch bytes through a
:class:`ByteSource`:

- :class:`LocalFiles`: ``open`` + ``os.pread``, exactly what the chunk reader always did;
- :class:`ObjectFiles`: an fsspec filesystem's ranged reads (``cat_file(path, start, end)``),
  one request per range; a shard's index is fetched once (a suffix range) and kept.

A store on object storage is read in place: a tile costs its bytes and, once per shard and
process, the shard's index, never a copy of the store. The filesystem is created lazily in the
process that reads (endpoint and credentials from the ``AWS_*`` environment, as when writing)
and dropped when pickled, so DataLoader workers, forked or spawned, each open their own.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from data_pipelines.store.layout import MANIFEST_NAME, STORE_DIRNAME
from data_pipelines.store.object_store import is_object_url, object_filesystem

SHARD_INDEXES_KEPT = 4096  # shard indexes an ObjectFiles keeps per process (a few KiB each)


def join(base: str | Path, *parts: str) -> str | Path:
    """``base/part/...``: a Path for a local folder, a string for a URL (``Path`` would fold
    ``s3://`` into ``s3:/``)."""
    if isinstance(base, Path):  # the local fast path: no URL parsing per chunk
        return base.joinpath(*parts)
    if is_object_url(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(base).joinpath(*parts)


def store_location(out_dir: str | Path) -> str | Path:
    """``<out>/store.zarr`` of a local folder or an object-store URL."""
    return join(out_dir, STORE_DIRNAME)


def manifest_location(out_dir: str | Path) -> str | Path:
    """``<out>/manifest.parquet`` of a local folder or an object-store URL."""
    return join(out_dir, MANIFEST_NAME)


class ByteSource:
    """Whole files and byte ranges of one store's files (paths from :func:`join`)."""

    def read(self, path: str | Path) -> bytes | None:
        """The whole file; None when it does not exist."""
        raise NotImplementedError

    def shard_chunk(
        self, path: str | Path, entry: int, index_bytes: int, index_at_end: bool
    ) -> bytes | None:
        """Inner chunk number ``entry`` of a ``sharding_indexed`` shard file (16-byte index
        entries, ``index_bytes`` in all, at the file's end or start); None when unwritten."""
        raise NotImplementedError

    def exists(self, path: str | Path) -> bool:
        raise NotImplementedError

    def read_text(self, path: str | Path) -> str:
        raw = self.read(path)
        if raw is None:
            raise FileNotFoundError(f"{path} not found")
        return raw.decode()

    def read_json(self, path: str | Path) -> dict[str, Any]:
        return json.loads(self.read_text(path))


_EMPTY = 2**64 - 1  # a shard index entry of a chunk that holds only the fill value
_INDEX_ENTRY = 16  # (offset, nbytes) as two little-endian uint64


def _entry(raw: bytes, at: int) -> tuple[int, int] | None:
    offset = int.from_bytes(raw[at : at + 8], "little")
    nbytes = int.from_bytes(raw[at + 8 : at + 16], "little")
    return None if offset == _EMPTY and nbytes == _EMPTY else (offset, nbytes)


class LocalFiles(ByteSource):
    """A local folder: one ``pread`` of the index entry, one of the chunk."""

    def read(self, path: str | Path) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:  # zarr skips chunks that hold only the fill value
            return None

    def shard_chunk(
        self, path: str | Path, entry: int, index_bytes: int, index_at_end: bool
    ) -> bytes | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            base = os.fstat(fd).st_size - index_bytes if index_at_end else 0
            found = _entry(os.pread(fd, _INDEX_ENTRY, base + entry * _INDEX_ENTRY), 0)
            return None if found is None else os.pread(fd, found[1], found[0])
        finally:
            os.close(fd)

    def exists(self, path: str | Path) -> bool:
        return Path(path).is_file()


class ObjectFiles(ByteSource):
    """Objects under a URL, read by range; ``requests`` and ``bytes_fetched`` count what this
    process fetched (the payload bytes of every response)."""

    def __init__(self) -> None:
        self._fs: Any = None
        self._pid: int | None = None
        self._indexes: OrderedDict[str, bytes] = OrderedDict()
        self.requests = 0
        self.bytes_fetched = 0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None, "_pid": None, "_indexes": OrderedDict()}

    def filesystem(self, url: str) -> Any:
        """The fsspec filesystem, created once in each process that reads."""
        if self._pid != os.getpid():
            self._fs, _ = object_filesystem(url)
            self._pid, self._indexes = os.getpid(), OrderedDict()
        return self._fs

    def _cat(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        data = self.filesystem(path).cat_file(path, start=start, end=end)
        self.requests += 1
        self.bytes_fetched += len(data)
        return data

    def read(self, path: str | Path) -> bytes | None:
        try:
            return self._cat(str(path))
        except FileNotFoundError:
            return None

    def _shard_index(self, path: str, index_bytes: int, index_at_end: bool) -> bytes | None:
        found = self._indexes.get(path)
        if found is None:
            try:
                if index_at_end:  # a suffix range: no request for the object's size
                    found = self._cat(path, -index_bytes)
                else:
                    found = self._cat(path, 0, index_bytes)
            except FileNotFoundError:
                return None
            self._indexes[path] = found
            if len(self._indexes) > SHARD_INDEXES_KEPT:
                self._indexes.popitem(last=False)
        return found

    def shard_chunk(
        self, path: str | Path, entry: int, index_bytes: int, index_at_end: bool
    ) -> bytes | None:
        index = self._shard_index(str(path), index_bytes, index_at_end)
        found = None if index is None else _entry(index, entry * _INDEX_ENTRY)
        return None if found is None else self._cat(str(path), found[0], found[0] + found[1])

    def exists(self, path: str | Path) -> bool:
        return bool(self.filesystem(str(path)).exists(str(path)))

    def open_input(self, path: str | Path) -> Any:
        """A seekable file for pyarrow (parquet reads only the ranges it needs)."""
        return self.filesystem(str(path)).open(str(path), "rb", cache_type="none")


LOCAL = LocalFiles()  # stateless: one for every local store


def source_for(location: str | Path) -> ByteSource:
    """The byte source of a store folder or a path inside one (a new one per object URL)."""
    return ObjectFiles() if is_object_url(location) else LOCAL


@contextmanager
def opened(path: str | Path) -> Iterator[Any]:
    """``path`` for pyarrow: the path itself when local, an open object-store file otherwise
    (FileNotFoundError when the object does not exist)."""
    if not is_object_url(path):
        yield path
        return
    with ObjectFiles().open_input(path) as f:
        yield f
