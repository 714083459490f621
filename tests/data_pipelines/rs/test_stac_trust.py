"""A STAC document read from a URL is not trusted with this machine's files: served by a real
HTTP server on 127.0.0.1, items whose assets are ``file:`` URLs, absolute local paths or GDAL
``/vsi...`` paths are quarantined with the reason and nothing of them is read; relative assets
resolve against the server and build. Catalog cycles, deep trees and links to local files stop
the build with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipelines.range_server import RangeServer
from data_pipelines.rs.stac import MAX_CATALOG_DEPTH, untrusted_href
from geomed_mim.build_dataset import main
from tests.data_pipelines.rs.stac_files import (
    item_collection,
    stac_item,
    synthetic_s2_scene,
    write_json,
)

S2 = ["--profile", "sentinel2_l2a", "--workers", "1", "--tile-size", "32"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RangeServer]]:
    """A folder with one synthetic Sentinel-2 L2A scene as COG band files, served over HTTP."""
    root = tmp_path_factory.mktemp("trust")
    synthetic_s2_scene(root, "good", seed=0)
    with RangeServer(root) as server:
        yield root, server


def _band_files(root: Path) -> dict[str, Path]:
    return {p.stem.rsplit("_", 1)[1]: p for p in sorted(root.glob("good_B*.tif"))}


def test_local_and_vsi_assets_of_a_served_catalog_are_quarantined_unread(
    served: tuple[Path, RangeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, http = served
    files = _band_files(root)
    relative = {band: path.name for band, path in files.items()}  # resolve against the server
    vsi_target = "vsi_only_B03.tif"  # served, and named by the /vsicurl/ asset alone
    (root / vsi_target).write_bytes(files["B03"].read_bytes())
    items = [
        stac_item("good", relative),
        stac_item("fileurl", dict(relative, B04=files["B04"].as_uri())),
        stac_item("localpath", dict(relative, B02=str(files["B02"]))),
        stac_item("vsi", dict(relative, B03=f"/vsicurl/{http.url}/{vsi_target}")),
    ]
    write_json(item_collection(items), root / "items.json")
    http.reset_counts()
    out = tmp_path / "out"
    assert main(["--input", f"{http.url}/items.json", "--output", str(out), *S2]) == 0

    lines = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    reasons = {q["part"]: q["reason"] for q in lines}
    assert sorted(reasons) == ["fileurl", "localpath", "vsi"]
    assert "asset B04" in reasons["fileurl"]
    assert "is a file: URL" in reasons["fileurl"]
    assert "asset B02" in reasons["localpath"]
    assert "is an absolute local path" in reasons["localpath"]
    assert "asset B03" in reasons["vsi"]
    assert "is a GDAL virtual file system path" in reasons["vsi"]
    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    assert set(manifest["scene"]) == {"good"}
    # the /vsicurl/ asset was never fetched through GDAL; the good scene's bands were read
    assert http.requests[f"/{vsi_target}"] == 0
    assert http.bytes_sent[f"/{files['B04'].name}"] > 0
    assert "quarantined" in capsys.readouterr().out


def test_untrusted_href_reasons() -> None:
    """(href as written, resolved against http://127.0.0.1:1/cat/item.json)."""
    assert untrusted_href("b04.tif", "http://127.0.0.1:1/cat/b04.tif") is None
    assert untrusted_href("s3://bucket/b04.tif", "s3://bucket/b04.tif") is None
    assert untrusted_href("/vsizip//data/a.zip/b.tif", "/vsizip//data/a.zip/b.tif")
    assert untrusted_href("file:///etc/passwd", "file:///etc/passwd")
    assert untrusted_href("/etc/passwd", "http://127.0.0.1:1/etc/passwd")
    why = untrusted_href("zip+https://h/a.zip!b.tif", "zip+https://h/a.zip!b.tif")
    assert why is not None
    assert "'zip+https'" in why


def catalog(links: list[tuple[str, str]]) -> dict[str, object]:
    return {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "c",
        "description": "test catalog",
        "links": [{"rel": rel, "href": href} for rel, href in links],
    }


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_catalog_cycle_is_one_line(
    served: tuple[Path, RangeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, http = served
    write_json(catalog([("child", "sub/catalog.json")]), root / "cycle" / "catalog.json")
    write_json(catalog([("child", "../catalog.json")]), root / "cycle" / "sub" / "catalog.json")
    url = f"{http.url}/cycle/catalog.json"
    assert main(["--input", url, "--output", str(tmp_path / "out"), *S2]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: --input: catalog {http.url}/cycle/sub/catalog.json links ")
    assert f"back to {url}, a catalog above it (a cycle)" in line


def test_catalog_deeper_than_the_bound_is_one_line(
    served: tuple[Path, RangeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, http = served
    level = root / "deep"
    for _ in range(MAX_CATALOG_DEPTH + 2):
        write_json(catalog([("child", "d/catalog.json")]), level / "catalog.json")
        level = level / "d"
    url = f"{http.url}/deep/catalog.json"
    assert main(["--input", url, "--output", str(tmp_path / "out"), *S2]) == 2
    assert f"deeper than {MAX_CATALOG_DEPTH} levels" in _one_error_line(capsys)


def test_a_served_catalog_linking_to_a_local_file_is_one_line(
    served: tuple[Path, RangeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, http = served
    local = write_json(catalog([]), tmp_path / "local" / "catalog.json")
    write_json(catalog([("child", local.as_uri())]), root / "tolocal" / "catalog.json")
    url = f"{http.url}/tolocal/catalog.json"
    assert main(["--input", url, "--output", str(tmp_path / "out"), *S2]) == 2
    line = _one_error_line(capsys)
    assert f"links to '{local.as_uri()}', which is a file: URL" in line
    assert line.endswith("a catalog read from a URL may only link to URLs")


@pytest.fixture(scope="module")
def other_host(served: tuple[Path, RangeServer]) -> Iterator[RangeServer]:
    """A second server (another port: another host for HTTP credentials) of the same files."""
    with RangeServer(served[0]) as server:
        yield server


def test_a_header_set_for_every_host_is_not_sent_to_a_served_catalogs_other_hosts(
    served: tuple[Path, RangeServer],
    other_host: RangeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, http = served
    files = _band_files(root)
    item = stac_item("elsewhere", {b: f"{other_host.url}/{p.name}" for b, p in files.items()})
    write_json(item_collection([item]), root / "elsewhere.json")
    monkeypatch.setenv("GDAL_HTTP_HEADERS", "Authorization: Bearer catalog-token")
    other_host.reset_counts()
    url = f"{http.url}/elsewhere.json"
    assert main(["--input", url, "--output", str(tmp_path / "out"), *S2]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: GDAL_HTTP_HEADERS: it is set for every host")
    assert f"names assets on {other_host.url}, which would receive it" in line
    assert sum(other_host.requests.values()) == 0  # nothing went there, with or without it


READ_TWO_HOSTS = """
import sys
import rasterio
for url in sys.argv[1:]:
    with rasterio.open(url) as src:
        src.read(1, window=((0, 8), (0, 8)))
"""


def test_per_host_credentials_in_a_gdal_config_file_reach_that_host_only(
    served: tuple[Path, RangeServer], other_host: RangeServer, tmp_path: Path, child_env
) -> None:
    """What docs/cloud.md recommends instead: a [credentials] section per URL prefix."""
    root, http = served
    name = _band_files(root)["B04"].name
    config = tmp_path / "gdal.cfg"
    config.write_text(
        f"[credentials]\n\n[.one]\npath=/vsicurl/{http.url}/\n"
        "GDAL_HTTP_HEADERS=Authorization: Bearer for-one-host\n"
    )
    http.reset_counts()
    other_host.reset_counts()
    proc = subprocess.run(
        [sys.executable, "-c", READ_TWO_HOSTS, f"{http.url}/{name}", f"{other_host.url}/{name}"],
        env={**child_env, "GDAL_CONFIG_FILE": str(config)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert http.headers_seen[(f"/{name}", "authorization")] > 0
    assert other_host.requests[f"/{name}"] > 0
    assert other_host.headers_seen[(f"/{name}", "authorization")] == 0
