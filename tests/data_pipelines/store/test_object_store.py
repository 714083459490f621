"""--output s3://...: a build published to a real S3-compatible server (moto, 127.0.0.1) in
commit order, read back in place by the training loader through the same code as a local store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_pipelines.store.object_store import (
    STAGING_ENV,
    STORE_CACHE_ENV,
    ObjectStoreError,
    publish,
    stage_in,
)
from data_pipelines.store.read import read_calibrated, read_manifest
from geomed_mim.build_dataset import main
from geomed_mim.data.datamodules import RSDataModule
from tests.data_pipelines.s3_server import moto_s3

DEMO = ["--input", "demo:sentinel2_l1c", "--tile-size", "32", "--workers", "1"]


@pytest.fixture(scope="module")
def s3() -> Iterator[object]:
    import boto3

    with moto_s3() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="stores")
        yield client


def _keys(s3, prefix: str) -> dict[str, int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="stores", Prefix=prefix)
    return {o["Key"][len(prefix) :]: o["Size"] for p in pages for o in p.get("Contents", [])}


def test_build_to_s3_reads_back_equal_through_the_loader(
    s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    monkeypatch.setenv(STORE_CACHE_ENV, str(tmp_path / "cache"))
    url = "s3://stores/demo/s2"
    assert main([*DEMO, "--output", url]) == 0
    assert f"published: {url} (" in capsys.readouterr().out
    assert main([*DEMO, "--output", str(tmp_path / "local")]) == 0

    remote = _keys(s3, "demo/s2/")
    assert {"build.json", "manifest.parquet", "store.zarr/zarr.json"} <= set(remote)
    assert not any(k.endswith((".tmp", ".build.lock")) for k in remote)

    dm = RSDataModule(url, batch_size=4, num_workers=0)
    assert dm.store == url  # read in place: nothing staged
    assert not (tmp_path / "cache").exists()
    assert dm.metadata()["store"] == url
    local = pq.read_table(tmp_path / "local" / "manifest.parquet")
    assert read_manifest(url).equals(local)
    dm.setup("fit")
    index = dm.train_dataset.index
    assert len(index) > 0
    for i in range(len(index)):
        array, row = index.sample(i)
        np.testing.assert_array_equal(
            read_calibrated(url, array, row), read_calibrated(tmp_path / "local", array, row)
        )
    assert dm.band_stats() == RSDataModule(str(tmp_path / "local"), num_workers=0).band_stats()


def test_publish_order_and_resume(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "build"
    assert main([*DEMO, "--output", str(out)]) == 0
    import s3fs

    puts: list[str] = []
    original = s3fs.S3FileSystem.put_file

    def recording_put(self, lpath, rpath, *args, **kwargs):
        puts.append(rpath.split("/order/", 1)[1])
        return original(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "put_file", recording_put)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached instance holds its own put_file
    first = publish(out, "s3://stores/order")
    assert puts[-1] == "build.json"
    data = [i for i, k in enumerate(puts) if "/c/" in k]
    meta = [i for i, k in enumerate(puts) if k.endswith("zarr.json")]
    frags = [i for i, k in enumerate(puts) if k.startswith("parts/")]
    manifest = puts.index("manifest.parquet")
    assert max(data) < min(meta)
    assert max(meta) < min(frags)
    assert max(frags) < manifest
    assert first.skipped == 0
    assert first.uploaded == len(puts)

    # an interrupted publish: some shards and the commit record never arrived
    missing = [k for k in _keys(s3, "order/") if "/c/" in k][:2]
    for key in [*missing, "build.json"]:
        s3.delete_object(Bucket="stores", Key=f"order/{key}")
    with pytest.raises(ObjectStoreError, match="no finished build"):
        stage_in("s3://stores/order", tmp_path / "cache")
    puts.clear()
    again = publish(out, "s3://stores/order")
    assert set(missing) <= set(puts)
    assert not any("/c/" in k for k in set(puts) - set(missing))  # the rest was kept
    assert again.skipped == len(data) - len(missing)
    assert puts[-1] == "build.json"
    staged = stage_in("s3://stores/order", tmp_path / "cache")
    assert json.loads((staged / "build.json").read_text()) == json.loads(
        (out / "build.json").read_text()
    )


@pytest.mark.parametrize("url", ["nosuchscheme://bucket/x", "gs://bucket/x"])
def test_output_url_mistakes_are_one_line(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A scheme nothing writes, and one whose fsspec filesystem (gcsfs) is not installed."""
    monkeypatch.setenv(STAGING_ENV, str(tmp_path / "staging"))
    assert main([*DEMO, "--output", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output: ")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "staging").exists()
