"""Compact stores (raw integers + the recorded calibration) against float32 stores of the same
build: identical calibrated values, manifests and statistics, fewer bytes; for Landsat L1 (TOA
reflectance with the sun elevation, brightness temperature), Sentinel-2 (a baseline 05.09
product's -1000 offsets) and MODIS L1B (Planck, temperature correction, min-max scaling, flags).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr

from data_pipelines.store.calibration import StoredCalibration, identity_table
from data_pipelines.store.index import build_sample_index
from data_pipelines.store.read import LazyZarrArrays, read_calibrated
from geomed_mim.build_dataset import main
from geomed_mim.data.transforms import calibrate
from tests.data_pipelines.rs.products.landsat_files import write_c2_scene
from tests.data_pipelines.rs.products.modis_files import write_mod021km
from tests.data_pipelines.rs.products.safe_files import write_l1c

COMMON = ["--workers", "1", "--scheduler", "synchronous", "--no_preview"]


def _both(folder: Path, out: Path, *flags: str) -> tuple[Path, Path]:
    """The same input built compact (the default) and with --store-dtype float32."""
    stores = []
    for dtype in ("compact", "float32"):
        store = out / dtype
        argv = ["--input", str(folder), "--output", str(store), *flags, *COMMON]
        assert main([*argv, "--store-dtype", dtype]) == 0
        stores.append(store)
    return stores[0], stores[1]


@pytest.fixture(scope="module")
def landsat(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("landsat_compact")
    write_c2_scene(shared_data, root / "in")
    return _both(root / "in", root, "--profile", "landsat8_l1", "--tile-size", "64")


@pytest.fixture(scope="module")
def sentinel2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("s2_compact")
    write_l1c(root / "in", baseline="05.09")
    return _both(root / "in", root, "--profile", "sentinel2_l1c", "--tile-size", "32")


@pytest.fixture(scope="module")
def modis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("modis_compact")
    (root / "in").mkdir()
    write_mod021km(root / "in")
    return _both(root / "in", root, "--profile", "modis_toa14", "--tile-size", "128")


def _tile_bytes(store: Path) -> int:
    files = (store / "store.zarr" / "tiles").rglob("*")
    return sum(f.stat().st_size for f in files if f.is_file() and f.name != "zarr.json")


def _check_same_values(compact: Path, float32: Path, raw_dtype: type) -> int:
    """Every usable tile reads the same in both stores; returns how many were compared."""
    index = build_sample_index(compact, None, include_duplicates=True)
    assert len(index) > 0
    a, b = LazyZarrArrays(compact), LazyZarrArrays(float32)
    for i in range(len(index)):
        array, row = index.sample(i)
        assert a.layout(array).dtype == raw_dtype  # the DN
        assert b.layout(array).dtype == np.float32
        np.testing.assert_array_equal(a.read_calibrated(array, row), b.read(array, row))
    return len(index)


def _check_same_build(compact: Path, float32: Path) -> None:
    """Exclusion, duplicates, splits and per-tile moments are those of the float32 build, and
    so are the store's band statistics (calibrated units in both)."""
    assert pq.read_table(compact / "manifest.parquet").equals(
        pq.read_table(float32 / "manifest.parquet")
    )
    stats = [
        json.loads((s / "store.zarr" / "zarr.json").read_text())["attributes"]["band_stats"]
        for s in (compact, float32)
    ]
    assert stats[0] == stats[1]
    assert _tile_bytes(compact) < 0.55 * _tile_bytes(float32)


def _check_batched_calibration(store: Path) -> None:
    """The loader's batched torch calibration equals the NumPy one within float32 rounding
    (NaN where the NumPy one has NaN)."""
    index = build_sample_index(store, None)
    reader = LazyZarrArrays(store)
    rows = range(min(len(index), 6))
    tiles = torch.stack([torch.from_numpy(reader.read(*index.sample(i))) for i in rows])
    cals = [reader.calibration(index.sample(i)[0]) for i in rows]
    table = torch.from_numpy(np.stack([c.table() for c in cals]))
    invalid = torch.from_numpy(np.stack([c.invalid_values() for c in cals]))
    got = calibrate(tiles, table, invalid).numpy()
    expected = np.stack([read_calibrated(store, *index.sample(i)) for i in rows])
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)
    assert np.array_equal(np.isnan(got), np.isnan(expected))


def test_landsat_compact_store_reads_as_the_float32_store(landsat) -> None:
    compact, float32 = landsat
    assert _check_same_values(compact, float32, np.uint16) > 10
    _check_same_build(compact, float32)
    _check_batched_calibration(compact)
    attrs = zarr.open_group(str(compact / "store.zarr"), mode="r")
    part = attrs[build_sample_index(compact, None).sample(0)[0]].attrs
    assert part["stored_values"] == "dn"
    assert len(part["scale_factor"]) == len(part["add_offset"]) == 10
    assert part["_FillValue"] == 0
    assert attrs.attrs["calibration"]["store_dtype"] == "compact"


def test_sentinel2_offsets_compact_store_reads_as_the_float32_store(sentinel2) -> None:
    compact, float32 = sentinel2
    _check_same_values(compact, float32, np.uint16)
    _check_same_build(compact, float32)
    _check_batched_calibration(compact)
    cal = StoredCalibration.from_attrs(
        LazyZarrArrays(compact).attrs(build_sample_index(compact, None).sample(0)[0])
    )
    np.testing.assert_allclose(cal.offset, -1000 / 10000)  # (DN - 1000) / 10000
    np.testing.assert_allclose(cal.scale, 1 / 10000)


def test_modis_compact_store_reads_as_the_float32_store(modis) -> None:
    compact, float32 = modis
    _check_same_values(compact, float32, np.uint16)
    _check_same_build(compact, float32)
    _check_batched_calibration(compact)
    cal = LazyZarrArrays(compact).calibration(build_sample_index(compact, None).sample(0)[0])
    assert cal.invalid_above == 32767  # L1B flags: NaN after calibration
    assert sum(t is not None for t in cal.thermal) == 8  # the emissive bands of modis_toa14


def test_calibration_round_trips_through_the_cf_attributes() -> None:
    cal = StoredCalibration(
        scale=np.array([2e-5, 3.3e-4]),
        offset=np.array([-0.1, 0.1]),
        thermal=(None, (774.8853, 1321.0789)),
        bt_correction=(None, (0.13, 0.9995)),
        bt_range=(None, (202.1759, 324.0677)),
        nodata=0,
        invalid_above=32767,
    )
    attrs = cal.cf_attrs()
    attrs["calibration"] = {
        "thermal_k1_k2": [None, [774.8853, 1321.0789]],
        "bt_correction_tci_tcs": [None, [0.13, 0.9995]],
        "bt_minmax_k": [None, [202.1759, 324.0677]],
    }
    back = StoredCalibration.from_attrs(json.loads(json.dumps(attrs)))
    raw = np.array([[[[0, 5000], [32768, 12000]]] * 2], dtype=np.uint16)[0]  # [2, 2, 2]
    np.testing.assert_array_equal(back.apply(raw), cal.apply(raw))
    out = cal.apply(raw)
    assert np.isnan(out[:, 0, 0]).all()  # nodata
    assert np.isnan(out[:, 1, 0]).all()  # a flag above valid_max
    assert out[0, 0, 1] == np.float32(5000) * np.float32(2e-5) + np.float32(-0.1)
    assert StoredCalibration.from_attrs({"stored_values": "calibrated"}) is None
    assert StoredCalibration.from_attrs({}) is None  # a part written before compact stores


def test_identity_table_leaves_values_as_they_are() -> None:
    values = torch.tensor([[[[0.25, float("nan")]]]])  # [1, 1, 1, 2] a float32 store's tile
    out = calibrate(values, torch.from_numpy(identity_table(1))[None], torch.full((1, 2), np.nan))
    assert out[0, 0, 0, 0] == 0.25
    assert torch.isnan(out[0, 0, 0, 1])
