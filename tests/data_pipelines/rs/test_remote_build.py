"""Builds from STAC items whose COG assets live on a real HTTP server and a real S3-compatible
server on 127.0.0.1 equal the builds of the same files on disk, tile for tile; unreachable
assets are quarantined while the rest builds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from data_pipelines.range_server import RangeServer
from geomed_mim.build_dataset import main
from tests.data_pipelines.rs.stac_files import (
    EARTH_SEARCH_KEYS,
    bigearthnet_cogs,
    item_collection,
    stac_item,
    synthetic_s2_scene,
    write_json,
)
from tests.data_pipelines.s3_server import moto_s3

# manifest columns that say where a scene came from (a folder vs a STAC item), not its pixels
ORIGIN_COLUMNS = ["source", "product", "acquired", "platform", "processing_baseline", "cloud_cover"]
S2 = ["--profile", "sentinel2_l2a", "--workers", "1"]


def build(input_spec: str, out: Path, tile: int = 64) -> int:
    return main(["--input", input_spec, "--output", str(out), "--tile-size", str(tile), *S2])


def assert_same_build(remote: Path, local: Path) -> None:
    """Same manifest rows (origin columns aside), same tile arrays, same band statistics."""
    a = pq.read_table(remote / "manifest.parquet").to_pandas()
    b = pq.read_table(local / "manifest.parquet").to_pandas()
    assert len(a) == len(b) > 0
    assert a.drop(columns=ORIGIN_COLUMNS).to_json() == b.drop(columns=ORIGIN_COLUMNS).to_json()
    za, zb = zarr.open_group(remote / "store.zarr", mode="r"), zarr.open_group(local / "store.zarr")
    assert sorted(za["tiles"].array_keys()) == sorted(zb["tiles"].array_keys())
    for name in za["tiles"].array_keys():
        np.testing.assert_array_equal(za["tiles"][name][:], zb["tiles"][name][:])
    assert za.attrs["band_stats"] == zb.attrs["band_stats"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic Sentinel-2 L2A scenes as COG band files, and their build from disk."""
    root = tmp_path_factory.mktemp("remote")
    for i in range(2):
        synthetic_s2_scene(root / "cogs", f"scene{i}", seed=i, size=256)
    assert build(str(root / "cogs"), root / "disk_build") == 0
    return root


@pytest.fixture(scope="module")
def http(archive: Path) -> Iterator[RangeServer]:
    with RangeServer(archive / "cogs") as server:
        yield server


def test_stac_over_http_builds_the_disk_tiles_by_range_reads(archive: Path, http) -> None:
    items = [
        stac_item(
            f"scene{i}",
            {b: f"{http.url}/{p.name}" for b, p in _bands(archive, f"scene{i}").items()},
            keys=EARTH_SEARCH_KEYS,
        )
        for i in range(2)
    ]
    doc = write_json(item_collection(items), archive / "http" / "items.json")
    http.reset_counts()
    assert build(str(doc), archive / "http_build") == 0
    assert_same_build(archive / "http_build", archive / "disk_build")
    m = pq.read_table(archive / "http_build" / "manifest.parquet").to_pandas()
    assert set(m["product"]) == {"scene0", "scene1"}
    assert set(m["cloud_cover"]) == {12.5}
    assert set(m["acquired"]) == {"2021-06-01T10:30:00Z"}
    # range reads only: no file was answered whole, and no file sent more bytes than it holds
    # (each byte range fetched once, the header included)
    tifs = {f"/{f.name}": f.stat().st_size for f in (archive / "cogs").glob("*.tif")}
    assert set(http.requests) >= set(tifs)
    assert sum(http.whole_file_answers[p] for p in tifs) == 0
    assert all(0 < http.bytes_sent[p] <= size for p, size in tifs.items())


def test_unreachable_assets_are_quarantined_and_the_rest_builds(archive: Path, http) -> None:
    good = {b: f"{http.url}/{p.name}" for b, p in _bands(archive, "scene0").items()}
    missing = dict(good, B11=f"{http.url}/gone_B11.tif")  # 404
    refused = dict(good, B03="http://127.0.0.1:9/scene1_B03.tif")  # nothing listens there
    items = [stac_item("scene0", good), stac_item("x404", missing), stac_item("xrefused", refused)]
    doc = write_json(item_collection(items), archive / "unreachable" / "items.json")
    out = archive / "unreachable_build"
    assert build(str(doc), out) == 0
    lines = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    reasons = {q["part"]: q["reason"] for q in lines}
    assert sorted(reasons) == ["x404", "xrefused"]
    assert reasons["x404"].startswith(f"cannot open {http.url}/gone_B11.tif: ")
    assert "404" in reasons["x404"]
    assert reasons["xrefused"].startswith("cannot open http://127.0.0.1:9/scene1_B03.tif: ")
    assert all(q["source"].endswith(f"items.json#{q['part']}") for q in lines)
    m = pq.read_table(out / "manifest.parquet").to_pandas()
    disk = pq.read_table(archive / "disk_build" / "manifest.parquet").to_pandas()
    assert set(m["scene"]) == {"scene0"}
    assert m["exact_hash"].tolist() == disk[disk["scene"] == "scene0"]["exact_hash"].tolist()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


def test_stac_on_s3_with_s3_assets_builds_the_disk_tiles(archive: Path, s3_server: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="archive")
    for f in sorted((archive / "cogs").glob("*.tif")):
        s3.upload_file(str(f), "archive", f"sentinel-2/{f.name}")
    items = [
        stac_item(
            f"scene{i}",
            {
                b: f"s3://archive/sentinel-2/{p.name}"
                for b, p in _bands(archive, f"scene{i}").items()
            },
        )
        for i in range(2)
    ]
    doc = write_json(item_collection(items), archive / "s3" / "items.json")
    s3.upload_file(str(doc), "archive", "catalog/items.json")
    assert build("s3://archive/catalog/items.json", archive / "s3_build") == 0
    assert_same_build(archive / "s3_build", archive / "disk_build")


@pytest.mark.shared_data
def test_real_bigearthnet_cogs_over_http_equal_the_disk_build(
    shared_data: Path, tmp_path: Path
) -> None:
    patches = bigearthnet_cogs(shared_data, tmp_path / "cogs", n=3)
    assert build(str(tmp_path / "cogs"), tmp_path / "disk", tile=60) == 0
    with RangeServer(tmp_path / "cogs") as server:
        items = [
            stac_item(
                patch,
                {b: f"{server.url}/{p.name}" for b, p in bands.items()},
                keys=EARTH_SEARCH_KEYS,
            )
            for patch, bands in patches.items()
        ]
        doc = write_json(item_collection(items), tmp_path / "items.json")
        assert build(str(doc), tmp_path / "http", tile=60) == 0
        assert sum(server.whole_file_answers.values()) == 0
    assert_same_build(tmp_path / "http", tmp_path / "disk")
    m = pq.read_table(tmp_path / "http" / "manifest.parquet").to_pandas()
    assert len(m) == 3 * 4  # 120 px patches, 60 px tiles


def _bands(archive: Path, scene: str) -> dict[str, Path]:
    return {p.stem.rsplit("_", 1)[1]: p for p in sorted((archive / "cogs").glob(f"{scene}_B*.tif"))}


@pytest.mark.slow
def test_dask_workers_build_over_http_like_disk(archive: Path, http, child_env) -> None:
    """Two dask worker processes (each configures GDAL for remote reads itself), run through
    the module entry point a user types."""
    items = [
        stac_item(
            f"scene{i}",
            {b: f"{http.url}/{p.name}" for b, p in _bands(archive, f"scene{i}").items()},
        )
        for i in range(2)
    ]
    doc = write_json(item_collection(items), archive / "dask" / "items.json")
    out = archive / "dask_build"
    proc = subprocess.run(
        [sys.executable, "-m", "geomed_mim.build_dataset", "--input", str(doc), "--output",
         str(out), "--tile-size", "64", "--profile", "sentinel2_l2a", "--workers", "2"],
        capture_output=True, text=True, timeout=300, env=child_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dask LocalCluster, 2 processes" in proc.stdout
    assert_same_build(out, archive / "disk_build")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d, url: f"{url}/no-such-search.json", "--input: cannot fetch http://"),
        (
            lambda d, url: str(write_json({"type": "Topology"}, d / "topo.json")),
            "is JSON of type 'Topology', not STAC; give a STAC Item",
        ),
        (
            lambda d, url: str(write_json(stac_item("x", {"R": "/x/r.tif"}), d / "rgb.json")),
            "choose the --profile of this collection",
        ),
    ],
)
def test_cli_stac_mistakes_are_one_line_exit_2(
    tmp_path: Path, http, child_env, make_input, message: str
) -> None:
    spec = make_input(tmp_path, http.url)
    proc = subprocess.run(
        [sys.executable, "-m", "geomed_mim.build_dataset", "--input", spec, "--output",
         str(tmp_path / "out"), "--profile", "sentinel2_l2a"],
        capture_output=True, text=True, timeout=120, env=child_env,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: --input: ")
    assert message in lines[0]
