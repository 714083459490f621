"""``--grid EPSG:n --resolution R``: MODIS granules resampled (nearest neighbour) before tiling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyproj import Transformer

from data_pipelines.rs.profiles import load_profile
from data_pipelines.store.read import read_calibrated
from geomed_mim.build_dataset import main
from tests.data_pipelines.rs.products.modis_files import band_of, write_mod021km

RUN = ["--profile", "modis_toa14", "--tile-size", "64", "--workers", "1"]


def test_granule_resampled_to_utm_tiles(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    granule = write_mod021km(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "in"), "--output", str(out), *RUN,
            "--grid", "EPSG:32632", "--resolution", "1000"]  # fmt: skip
    assert main(argv) == 0
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert rows
    assert {r["crs"] for r in rows} == {"EPSG:32632"}
    kept = [r for r in rows if r["excluded"] is None]
    assert kept
    to_lonlat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    for r in rows:
        a, _, x0, _, e, y0 = r["transform"]
        assert (a, e) == (1000.0, -1000.0)
        lon, lat = to_lonlat.transform(x0 + 32 * a, y0 + 32 * e)  # tile centre
        assert r["lat"] == pytest.approx(lat, abs=1e-6)
        assert r["lon"] == pytest.approx(lon, abs=1e-6)
        assert 42 < r["lat"] < 46  # the swath's area
    # nearest neighbour: every stored reflectance is one of the swath's own values
    profile = load_profile("modis_toa14")
    sds, i = band_of(granule, "1")
    scale = np.float32(granule.attrs[sds]["reflectance_scales"][i])
    offset = np.float32(granule.attrs[sds]["reflectance_offsets"][i])
    swath_values = (granule.dn[sds][i].astype(np.float32) * scale - scale * offset).ravel()
    tile = read_calibrated(out, kept[0]["array"], kept[0]["index"])[profile.band_index("B1")]
    finite = tile[np.isfinite(tile)]
    assert finite.size > 0.5 * tile.size
    assert np.isin(finite, swath_values).all()
    record = json.loads((out / "build.json").read_text())
    assert record["config"]["grid"] == "EPSG:32632"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grid", "EPSG:32632"], "--grid/--resolution: give both"),
        (["--grid", "not-a-crs", "--resolution", "1000"], "--grid: 'not-a-crs'"),
        (["--grid", "EPSG:4326", "--resolution", "-1"], "--resolution: -1"),
    ],
)
def test_grid_mistakes_are_one_line(tmp_path: Path, capsys, extra, message) -> None:
    (tmp_path / "in").mkdir()
    write_mod021km(tmp_path / "in")
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *RUN, *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ")
    assert message in err
    assert len(err.splitlines()) == 1


def test_resolution_in_the_wrong_units_is_quarantined_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write_mod021km(tmp_path / "in")
    out = tmp_path / "out"
    argv = [
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(out),
        *RUN,
        "--grid",
        "EPSG:32632",
        "--resolution",
        "0.01",
    ]  # degrees given to a metre CRS
    main(argv)  # fmt: skip
    (line,) = (out / "quarantine.jsonl").read_text().splitlines()
    assert "give it in metre" in json.loads(line)["reason"]
