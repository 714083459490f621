"""Crops out of one chunked zarr v3 volume, decoding only the chunks a crop touches.

zarr-python's own slicing runs every chunk through its async codec pipeline; for a random 96³
crop that touches ~27 chunks of 64³ this per-chunk overhead costs more than the decoding itself
(measured ~13 ms vs ~4 ms per crop). Arrays written by
``data_pipelines.store.write.write_volume`` have a plain layout (regular chunks, ``c/i/j/k``
keys, bytes + optional blosc), so a crop is: read those chunk files, ``blosc.decompress`` each,
copy the overlaps (``data_pipelines.store.chunks``, which the tile loaders use too; sharded
arrays work the same way). A volume on object storage is read the same way, a chunk per ranged
request. Any other layout (other codecs) falls back to zarr's slicing, so correctness never
depends on the fast path. Chunks decoded for one crop can be kept in a per-visit ``cache`` dict
and reused by the next crops of the same volume.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from data_pipelines.store.chunks import ArrayLayout, set_blosc_threads
from data_pipelines.store.source import ByteSource, join


class ChunkedVolume:
    """A read-only volume array opened from its folder inside ``store.zarr``.

    Opening reads only the array's ``zarr.json``; nothing is decoded until ``read``. Chunks are
    read by :class:`data_pipelines.store.chunks.ArrayLayout` (plain or sharded layouts).
    """

    def __init__(
        self, array_dir: str | Path, decode_threads: int = 1, source: ByteSource | None = None
    ):
        self.path = join(array_dir)  # a local Path or an object-store URL
        self.layout = ArrayLayout.open(self.path, source)
        self.shape = self.layout.shape
        self.chunks = self.layout.chunks
        self.attrs = self.layout.attrs
        self.dtype = self.layout.dtype
        self.fill_value = self.layout.fill_value
        self.fast = self.layout.fast
        self._zarr = None
        if self.fast and self.layout.blosc:
            set_blosc_threads(decode_threads)
        self.bytes_decoded = 0  # running total, for benchmarks

    def _chunk(self, idx: tuple[int, ...]) -> np.ndarray:
        chunk = self.layout.read_chunk(idx)
        if chunk is not self.layout.fill_chunk():
            self.bytes_decoded += chunk.nbytes
        return chunk

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
