"""Chunks read straight from their files equal what zarr reads: sharded tiles (index at the end
or the start, partial last shard, unwritten chunks), plain and uncompressed volumes; layouts the
fast path does not know fall back to zarr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ShardingCodec

from data_pipelines.store.chunks import ArrayLayout
from data_pipelines.store.read import LazyZarrArrays
from data_pipelines.store.write import PartWriter, open_root, volume_compressors, write_volume


def _tiles(n: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish uint16 tiles (neighbouring pixels close, as in imagery)."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(-40, 41, size=(n, 3, 8, 8)).cumsum(axis=-1)
    return (steps + 3000).astype(np.uint16)


def test_sharded_tiles_read_directly_equal_zarr(tmp_path: Path) -> None:
    tiles = _tiles(11)
    open_root(tmp_path)
    writer = PartWriter(tmp_path, "tiles", "p", (3, 8, 8), np.uint16, samples_per_shard=4)
    for t in tiles:
        writer.append(t)
    writer.close()  # shards of 4, 4 and 3 tiles
    layout = ArrayLayout.open(tmp_path / "store.zarr" / "tiles" / "p")
    assert layout.fast
    assert layout.blosc
    assert layout.shard == (4, 3, 8, 8)
    assert layout.chunks == (1, 3, 8, 8)
    reader = LazyZarrArrays(tmp_path)
    out = np.empty((3, 8, 8), dtype=np.uint16)
    for i in range(11):
        np.testing.assert_array_equal(reader.read("tiles/p", i), tiles[i])
        assert reader.read("tiles/p", i, out=out) is out
        np.testing.assert_array_equal(out, tiles[i])
    with pytest.raises(IndexError, match="outside"):
        reader.read("tiles/p", 11)


@pytest.mark.parametrize("location", ["start", "end"])
def test_shard_index_at_either_end_and_unwritten_chunks(tmp_path: Path, location: str) -> None:
    path = tmp_path / "store.zarr" / "tiles" / "z"
    sharding = ShardingCodec(
        chunk_shape=(1, 3, 8, 8), codecs=[BytesCodec(), BloscCodec(cname="lz4")],
        index_location=location,
    )  # fmt: skip
    arr = zarr.create(shape=(10, 3, 8, 8), chunks=(5, 3, 8, 8), dtype="uint16", store=str(path),
                      codecs=[sharding], zarr_format=3, fill_value=7)  # fmt: skip
    tiles = _tiles(10, seed=1)
    arr[:4] = tiles[:4]
    arr[6] = tiles[6]
    layout = ArrayLayout.open(path)
    assert layout.fast
    assert layout.index_at_end == (location == "end")
    for i in range(10):
        got = layout.read_chunk((i, 0, 0, 0))[0]
        np.testing.assert_array_equal(got, arr[i])  # 4, 5, 7-9: never written -> fill value 7
    assert (layout.read_chunk((8, 0, 0, 0)) == 7).all()


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_volume_chunks_read_directly_equal_zarr(tmp_path: Path, codec: str) -> None:
    vol = np.random.default_rng(2).integers(-1024, 2000, size=(20, 17, 9)).astype(np.int16)
    vol[:8, :8, :8] = 0  # one chunk of only the fill value: zarr does not write it
    arr = write_volume(tmp_path, "volumes", "v", vol, (8, 8, 8), volume_compressors(codec))
    layout = ArrayLayout.open(tmp_path / "store.zarr" / "volumes" / "v")
    assert layout.fast
    assert layout.shard is None
    assert layout.blosc == (codec != "none")
    for idx in [(0, 0, 0), (1, 2, 1), (2, 1, 0)]:
        region = tuple(slice(i * 8, (i + 1) * 8) for i in idx)
        got = layout.read_chunk(idx)
        part = arr[region]
        np.testing.assert_array_equal(got[tuple(slice(0, s) for s in part.shape)], part)
    assert layout.chunk_bytes((0, 0, 0)) is None


def test_unknown_codecs_fall_back_to_zarr(tmp_path: Path) -> None:
    path = tmp_path / "store.zarr" / "tiles" / "g"
    arr = zarr.create_array(store=str(path), shape=(3, 3, 8, 8), chunks=(1, 3, 8, 8),
                            dtype="uint16", compressors=[GzipCodec()])  # fmt: skip
    tiles = _tiles(3, seed=3)
    arr[:] = tiles
    assert not ArrayLayout.open(path).fast
    reader = LazyZarrArrays(tmp_path)
    for i in range(3):
        np.testing.assert_array_equal(reader.read("tiles/g", i), tiles[i])
