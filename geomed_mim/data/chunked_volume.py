"""Crops out of one chunked zarr v3 volume, decoding only the chunks a crop touches.

zarr-python's own slicing runs every chunk through its async codec pipeline; for a random 96³
crop that touches ~27 chunks of 64³ this per-chunk overhead costs more than the decoding itself
(measured ~13 ms vs ~4 ms per crop). Arrays written by
``data_pipelines.store.write.write_volume`` have a plain layout (regular chunks, ``c/i/j/k``
keys, bytes + optional blosc, no sharding), so a crop is: read those chunk files,
``blosc.decompress`` each, copy the overlaps. Any other layout (sharded, other codecs, non-local
stores) falls back to zarr's slicing, so correctness never depends on the fast path. Chunks
decoded for one crop can be kept in a per-visit ``cache`` dict and reused by the next crops of
the same volume.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {"int16": np.int16, "uint8": np.uint8, "uint16": np.uint16, "int32": np.int32}


def _set_blosc_threads(n: int) -> None:
    from numcodecs import blosc

    blosc.set_nthreads(n)
    blosc.use_threads = n > 1


class ChunkedVolume:
    """A read-only volume array opened from its folder inside ``store.zarr``.

    Opening reads only the array's ``zarr.json``; nothing is decoded until ``read``.
    """

    def __init__(self, array_dir: str | Path, decode_threads: int = 1):
        self.path = Path(array_dir)
        meta: dict[str, Any] = json.loads((self.path / "zarr.json").read_text())
        self.shape = tuple(int(s) for s in meta["shape"])
        self.chunks = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.attrs = meta.get("attributes", {})
        dtype = meta.get("data_type")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:  # a structured/extension type: only zarr knows how to decode it
            import zarr

            self.dtype = np.dtype(zarr.open_array(str(self.path), mode="r").dtype)
        self.fill_value = meta.get("fill_value", 0)
        codecs = meta.get("codecs", [])
        names = [c.get("name") for c in codecs]
        key = meta.get("chunk_key_encoding", {})
        self._blosc = names[1:] == ["blosc"]
        self.fast = (
            isinstance(dtype, str)
            and dtype in _DTYPES
            and meta["chunk_grid"].get("name") == "regular"
            and key.get("name") == "default"
            and key.get("configuration", {}).get("separator", "/") == "/"
            and names[:1] == ["bytes"]
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and (len(names) == 1 or self._blosc)
        )
        self._fill_chunk = np.full(self.chunks, self.fill_value, dtype=self.dtype)
        self._zarr = None
        if self.fast and self._blosc:
            _set_blosc_threads(decode_threads)
        self.bytes_decoded = 0  # running total, for benchmarks

    def _chunk(self, idx: tuple[int, ...]) -> np.ndarray:
        path = self.path / "c" / "/".join(map(str, idx))
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:  # zarr skips chunks that hold only the fill value
            return self._fill_chunk
        if self._blosc:
            from numcodecs import blosc

            raw = blosc.decompress(raw)
        self.bytes_decoded += len(raw)
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.chunks)

    def read(
        self,
        start: tuple[int, ...],
        size: tuple[int, ...],
        cache: dict[tuple[int, ...], np.ndarray] | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The box ``[start, start + size)``; parts outside the volume hold the fill value.

        ``out`` (shape ``size``, this array's dtype) is filled in place when given: a loader
        reuses one buffer instead of faulting in fresh pages for every crop.
        """
        lo = [max(0, s) for s in start]
        hi = [min(d, s + n) for d, s, n in zip(self.shape, start, size, strict=True)]
        inside = all(a == s and b == s + n for a, b, s, n in zip(lo, hi, start, size, strict=True))
        if out is None:
            out = np.empty(size, dtype=self.dtype)
        if not inside:
            out.fill(self.fill_value)
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            return out
        if not self.fast:
            if self._zarr is None:
                import zarr

                self._zarr = zarr.open_array(str(self.path), mode="r")
            region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
            out[dst] = self._zarr[region]
            self.bytes_decoded += out[dst].nbytes
            return out
        c = self.chunks
        ranges = [range(a // cs, (b - 1) // cs + 1) for a, b, cs in zip(lo, hi, c, strict=True)]
        for idx in itertools.product(*ranges):
            chunk = cache.get(idx) if cache is not None else None
            if chunk is None:
                chunk = self._chunk(idx)
                if cache is not None:
                    cache[idx] = chunk
            src, dst = [], []
            for n, s, a, b, cs in zip(idx, start, lo, hi, c, strict=True):
                c0 = n * cs
                a0, a1 = max(c0, a), min(c0 + cs, b)
                src.append(slice(a0 - c0, a1 - c0))
                dst.append(slice(a0 - s, a1 - s))
            out[tuple(dst)] = chunk[tuple(src)]
        return out

    def read_all(self) -> np.ndarray:
        return self.read((0,) * len(self.shape), self.shape)
