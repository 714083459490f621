"""A store on object storage read in place, by range, through the same code as a local one:
a demo build published to a real S3-compatible server (moto, 127.0.0.1), fetched through a
counting proxy so that the bytes a reader pulls are measured outside the reader."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from data_pipelines.store.chunks import ArrayLayout
from data_pipelines.store.index import build_sample_index
from data_pipelines.store.object_store import publish
from data_pipelines.store.read import LazyZarrArrays, read_manifest, read_store_attrs
from data_pipelines.store.source import LOCAL, ObjectFiles, join, source_for
from geomed_mim.build_dataset import main as build_dataset
from geomed_mim.data.buffers import TICKET_KEY
from geomed_mim.data.datamodules import RSDataModule
from tests.conftest import REPO_ROOT, subprocess_env
from tests.data_pipelines.s3_server import CountingProxy, moto_s3

DEMO = ["--input", "demo:sentinel2_l1c", "--tile-size", "32", "--workers", "1"]
URL = "s3://stores/demo/s2"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, CountingProxy]]:
    """(local build, proxy): the build published to ``URL``; AWS_ENDPOINT_URL is the proxy."""
    import boto3

    local = tmp_path_factory.mktemp("remote_read") / "s2"
    assert build_dataset([*DEMO, "--output", str(local)]) == 0
    with moto_s3() as endpoint, CountingProxy(endpoint) as proxy:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="stores")
        publish(local, URL)
        os.environ["AWS_ENDPOINT_URL"] = proxy.url  # moto_s3 restores it on exit
        yield local, proxy


def _equal(a: Any, b: Any) -> None:
    """Batches (tensors, arrays, dicts, sequences) equal element by element."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _equal(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _equal(x, y)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # NaN: invalid values
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)  # NaN equals NaN here
    else:
        assert a == b


def test_datamodule_on_the_url_yields_the_local_batches(published) -> None:
    local, proxy = published
    remote = RSDataModule(URL, batch_size=4, num_workers=1, seed=3, persistent_workers=False)
    here = RSDataModule(str(local), batch_size=4, num_workers=1, seed=3, persistent_workers=False)
    assert remote.store == URL  # nothing staged: the URL itself is what the loaders read
    assert remote.metadata()["store"] == URL
    assert remote.metadata() | {"store": ""} == here.metadata() | {"store": ""}
    for dm in (remote, here):
        dm.setup("fit")
    proxy.reset()
    batches = 0
    for got, want in zip(remote.train_dataloader(), here.train_dataloader(), strict=True):
        got.pop(TICKET_KEY), want.pop(TICKET_KEY)  # buffer tickets: a token and pid per pool
        _equal(got, want)
        batches += 1
    assert batches >= 2
    assert proxy.bytes_fetched > 0  # the worker process read the tiles from the server


def test_index_and_manifest_from_the_url_equal_the_local_ones(published) -> None:
    local, _ = published
    assert read_manifest(URL).equals(read_manifest(local))
    columns = ["array", "index", "split"]
    assert read_manifest(URL, columns).equals(read_manifest(local, columns))
    assert read_store_attrs(URL) == read_store_attrs(local)
    for split in ("train", "val", None):
        remote, here = build_sample_index(URL, split), build_sample_index(local, split)
        assert remote.stores == (URL,)
        assert remote.paths == here.paths
        assert remote.split_names == here.split_names
        for column in ("array", "tile", "split", "path_store"):
            np.testing.assert_array_equal(getattr(remote, column), getattr(here, column))
        assert remote.columns.keys() == here.columns.keys()


def _stored_bytes(local: Path, array: str, index: int) -> int:
    """A tile's encoded size, from its shard's index as the zarr v3 sharding spec lays it out:
    (offset, nbytes) little-endian uint64 per inner chunk, then a 4-byte crc32c, at the end."""
    import json

    meta = json.loads((local / "store.zarr" / array / "zarr.json").read_text())
    per_shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    shard = local / "store.zarr" / array / "c" / str(index // per_shard) / "0" / "0" / "0"
    raw = shard.read_bytes()
    table = np.frombuffer(raw[len(raw) - (16 * per_shard + 4) : -4], dtype="<u8").reshape(-1, 2)
    return int(table[index % per_shard, 1])


def test_reading_n_tiles_fetches_about_n_tiles_of_bytes(published) -> None:
    local, proxy = published
    index = build_sample_index(local, None)
    picked = [index.sample(i) for i in range(0, len(index), max(1, len(index) // 6))][:6]
    arrays = {array for array, _ in picked}
    reader = LazyZarrArrays(URL)
    for array in arrays:  # layouts (zarr.json) first: metadata is not what is measured
        reader.layout(array)
    proxy.reset()
    for array, row in picked:
        np.testing.assert_array_equal(
            reader.read(array, row), LazyZarrArrays(local).read(array, row)
        )
    tiles = sum(_stored_bytes(local, array, row) for array, row in picked)
    shard_indexes = {  # fetched once per shard, then kept
        (array, row // reader.layout(array).shard[0]) for array, row in picked
    }
    index_bytes = sum(reader.layout(array).index_bytes for array, _ in shard_indexes)
    assert proxy.bytes_fetched == tiles + index_bytes  # what was fetched, counted by the proxy
    assert reader.source.bytes_fetched >= proxy.bytes_fetched  # the reader counts the same
    store_bytes = sum(p.stat().st_size for p in (local / "store.zarr").rglob("*") if p.is_file())
    assert proxy.bytes_fetched < store_bytes / 4  # in place: nowhere near a copy of the store
    before = proxy.bytes_fetched
    array, row = picked[0]
    reader.read(array, row)  # again: the shard's index is kept, only the tile is fetched
    assert proxy.bytes_fetched - before == _stored_bytes(local, array, row)


def test_an_array_layout_reads_the_same_from_the_url(published) -> None:
    local, _ = published
    array = build_sample_index(local, None).sample(0)[0]
    remote = ArrayLayout.open(f"{URL}/store.zarr/{array}")
    here = ArrayLayout.open(local / "store.zarr" / array)
    assert isinstance(remote.source, ObjectFiles)
    assert (remote.shape, remote.chunks, remote.shard, remote.fast) == (
        here.shape, here.chunks, here.shard, here.fast,
    )  # fmt: skip
    assert remote.fast
    for i in range(remote.shape[0]):
        idx = (i,) + (0,) * (len(remote.shape) - 1)
        np.testing.assert_array_equal(remote.read_chunk(idx), here.read_chunk(idx))


def test_a_reader_pickled_into_another_process_opens_its_own_connection(published) -> None:
    import pickle

    local, _ = published
    reader = LazyZarrArrays(URL)
    array, row = build_sample_index(local, None).sample(0)
    first = reader.read(array, row)
    assert reader.source._fs is not None
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.source._fs is None  # nothing open crosses a pickle
    assert not copy.is_open
    np.testing.assert_array_equal(copy.read(array, row), first)


def test_store_locations_keep_urls_whole(tmp_path: Path) -> None:
    assert (
        join("s3://bucket/prefix/", "store.zarr", "tiles/a")
        == "s3://bucket/prefix/store.zarr/tiles/a"
    )
    assert join(str(tmp_path), "store.zarr") == tmp_path / "store.zarr"
    assert isinstance(source_for("s3://bucket/x"), ObjectFiles)
    assert source_for(tmp_path) is LOCAL


@pytest.mark.slow
def test_pretraining_on_a_missing_s3_store_is_one_line(published, tmp_path: Path) -> None:
    missing = "s3://stores/demo/no_such_store"
    proc = subprocess.run(
        [sys.executable, "-m", "geomed_mim.pretrain", "fit", "--config",
         str(REPO_ROOT / "configs/pretrain/demo_cpu.yaml"), "--data.init_args.store", missing],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2, lines
    (error,) = [line for line in lines if line.startswith("error:")]
    assert len(lines) <= 3, lines
    assert f"--data.init_args.store {missing}: no finished build there" in error
    assert "--output URL" in error  # the fix
    assert not (tmp_path / "runs").exists()  # nothing started
