"""GDAL options for remote reads, and the range-honouring file server the remote tests use."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.range_server import RangeServer, parse_ranges
from data_pipelines.remote import RemoteError, gdal_remote_options, is_remote, read_bytes


def test_s3_endpoint_from_the_aws_cli_variable_and_user_settings_win() -> None:
    opts = gdal_remote_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert opts["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert opts["AWS_HTTPS"] == "NO"
    assert opts["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert int(opts["GDAL_HTTP_MAX_RETRY"]) >= 1
    # what the environment sets is left to GDAL (which reads the environment itself)
    user = gdal_remote_options({"GDAL_HTTP_MAX_RETRY": "9", "AWS_S3_ENDPOINT": "minio:9000"})
    assert "GDAL_HTTP_MAX_RETRY" not in user
    assert "AWS_S3_ENDPOINT" not in user
    https = gdal_remote_options({"AWS_ENDPOINT_URL_S3": "https://s3.example.org"})
    assert https["AWS_S3_ENDPOINT"] == "s3.example.org"
    assert "AWS_HTTPS" not in https
    assert "AWS_S3_ENDPOINT" not in gdal_remote_options({})


def test_remote_schemes() -> None:
    assert all(is_remote(u) for u in ("https://a/b.tif", "s3://b/k.tif", "gs://b/k", "az://c/k"))
    assert not any(is_remote(p) for p in ("/data/x.tif", "x.tif", "C:/x.tif", "file.json"))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=900-", (900, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=10-19,50-59", (10, 59)),  # coalesced into the covering range
        ("bytes=990-2000", (990, 999)),
        ("bytes=1000-1001", None),
        ("items=0-1", None),
    ],
)
def test_range_header_parsing(header: str, expected) -> None:
    assert parse_ranges(header, 1000) == expected


def test_server_answers_ranges_and_counts_bytes(tmp_path: Path) -> None:
    payload = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "blob.bin").write_bytes(payload)
    with RangeServer(tmp_path) as server:
        req = urllib.request.Request(f"{server.url}/blob.bin", headers={"Range": "bytes=100-199"})
        with urllib.request.urlopen(req) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == "bytes 100-199/5000"
            assert r.read() == payload[100:200]
        assert read_bytes(f"{server.url}/blob.bin") == payload
        assert server.bytes_sent["/blob.bin"] == 100 + 5000
        assert server.requests["/blob.bin"] == 2
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server.url}/../etc/passwd")
        assert e.value.code == 404
        with pytest.raises(RemoteError, match="HTTP 404"):
            read_bytes(f"{server.url}/missing.json")


def test_a_range_header_the_server_does_not_understand_gets_the_whole_file(
    tmp_path: Path,
) -> None:
    """RFC 9110: a server may ignore a Range header; one it cannot parse is answered 200 with the
    whole body, not 416. A well-formed range past the end of the file stays 416."""
    payload = bytes(range(256)) * 20
    (tmp_path / "blob.bin").write_bytes(payload)
    with RangeServer(tmp_path) as server:
        for header in ("items=0-1", "bytes=abc", "bytes=-", "bytes=0-1;x"):
            req = urllib.request.Request(f"{server.url}/blob.bin", headers={"Range": header})
            with urllib.request.urlopen(req) as r:
                assert r.status == 200, header
                assert r.read() == payload
        req = urllib.request.Request(f"{server.url}/blob.bin", headers={"Range": "bytes=9000-"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 416


def test_server_streams_a_file_larger_than_a_chunk_and_closes_idle_connections(
    tmp_path: Path,
) -> None:
    from data_pipelines.range_server import CHUNK_BYTES

    payload = np.random.default_rng(1).integers(0, 256, 2 * CHUNK_BYTES + 17, np.uint8).tobytes()
    (tmp_path / "big.bin").write_bytes(payload)
    with RangeServer(tmp_path, idle_timeout_s=0.2) as server:
        assert read_bytes(f"{server.url}/big.bin") == payload
        assert server.bytes_sent["/big.bin"] == len(payload)
        host, port = server.server_address[:2]
        with socket.create_connection((host, port), timeout=30) as idle:
            assert idle.recv(1) == b""  # the server closed the silent connection
