"""Bytes fetched per tile when a loader reads a store on object storage in place, against the
tile's stored (encoded) bytes.

The demo Sentinel-2 build (``--tile-size`` tiles) is published to a local S3-compatible server
(moto, 127.0.0.1) and read through a reverse proxy that counts the body bytes of every answer,
so the figures are measured outside the reader. Tiles are read in a shuffled order by a fresh
``LazyZarrArrays`` (its ``zarr.json`` reads are reported apart). *Stored* is each tile's size in
its shard's index (the zarr v3 sharding layout, parsed here from the local copy). Counting bytes
makes the result independent of machine load.

    python benchmarks/bench_remote_store_bytes.py [--tile-size 32] [--tiles 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from data_pipelines.store.index import build_sample_index
from data_pipelines.store.object_store import publish
from data_pipelines.store.read import LazyZarrArrays
from geomed_mim.build_dataset import main as build_dataset
from tests.data_pipelines.s3_server import CountingProxy, moto_s3


def stored_bytes(local: Path, array: str, index: int) -> int:
    """A tile's encoded size: (offset, nbytes) little-endian uint64 per inner chunk, then a
    4-byte crc32c, at the end of its shard."""
    meta = json.loads((local / "store.zarr" / array / "zarr.json").read_text())
    per_shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    rest = len(meta["shape"]) - 1
    shard = local / "store.zarr" / array / "c" / "/".join([str(index // per_shard)] + ["0"] * rest)
    raw = shard.read_bytes()
    table = np.frombuffer(raw[len(raw) - (16 * per_shard + 4) : -4], dtype="<u8").reshape(-1, 2)
    return int(table[index % per_shard, 1])


def measure(local: Path, url: str, proxy: CountingProxy, tiles: int) -> dict[str, float]:
    index = build_sample_index(local, None)
    order = np.random.default_rng(0).permutation(len(index))[:tiles]
    picked = [index.sample(int(i)) for i in order]
    reader = LazyZarrArrays(url)
    proxy.reset()
    for array in sorted({a for a, _ in picked}):
        reader.layout(array)
    metadata = proxy.bytes_fetched
    proxy.reset()
    for array, row in picked:
        reader.read(array, row)
    fetched = proxy.bytes_fetched
    stored = sum(stored_bytes(local, a, r) for a, r in picked)
    store = sum(p.stat().st_size for p in (local / "store.zarr").rglob("*") if p.is_file())
    return {
        "tiles": len(picked),
        "requests": len(proxy.requests),
        "stored_per_tile": stored / len(picked),
        "fetched_per_tile": fetched / len(picked),
        "fetched_over_stored": fetched / stored,
        "metadata_bytes": metadata,
        "store_bytes": store,
        "fetched_over_store": fetched / store,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile-size", type=int, default=32)
    parser.add_argument("--tiles", type=int, default=64)
    args = parser.parse_args()
    import boto3

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "s2"
        demo = ["--input", "demo:sentinel2_l1c", "--tile-size", str(args.tile_size)]
        assert build_dataset([*demo, "--workers", "1", "--output", str(local)]) == 0
        with moto_s3() as endpoint, CountingProxy(endpoint) as proxy:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            publish(local, "s3://bench/s2")
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            result = measure(local, "s3://bench/s2", proxy, args.tiles)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
