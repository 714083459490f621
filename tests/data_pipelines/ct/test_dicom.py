"""Reading a DICOM series into a volume: order by position, enhanced multi-frame files,
compressed transfer syntaxes, gantry tilt and uneven slice spacing, each from files written by
pydicom in the exact DICOM layout from a real CT scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from data_pipelines.ct.dicom import DicomSeriesError, read_series
from data_pipelines.ct.volume import stored_grid
from tests.data_pipelines.ct.dicom_files import (
    CT_SM,
    LPS_FROM_RAS,
    ct_sm_source,
    write_dicom_series,
    write_multiframe,
    write_tilted_series,
)

pytestmark = pytest.mark.shared_data


def test_missing_slice_is_an_error_that_says_where(shared_data: Path, tmp_path: Path) -> None:
    files = write_dicom_series(shared_data / CT_SM, tmp_path / "s", drop=(10, 11))
    with pytest.raises(DicomSeriesError, match=r"missing slice: gap of 9\.00 mm .*~2 slice"):
        read_series([str(f) for f in files])


@pytest.mark.parametrize(
    ("syntax", "plugin"),
    [
        (RLELossless, "pydicom"),
        (JPEGLSLossless, "pyjpegls"),
        (JPEG2000Lossless, "pylibjpeg"),
        (JPEGLosslessSV1, "pylibjpeg"),
    ],
    ids=["rle", "jpeg-ls", "j2k", "jpeg-lossless"],
)
def test_compressed_series_decode_to_the_exact_voxels(
    shared_data: Path, tmp_path: Path, syntax: str, plugin: str
) -> None:
    """Each slice compressed by pydicom's own encoder (RLE natively, JPEG-LS through pyjpegls,
    JPEG 2000 through pylibjpeg-openjpeg; JPEG Lossless by GDCM, which pydicom cannot encode)
    reads back to the scan's exact HU, and the package's own decoder does it."""
    import pydicom
    from pydicom.pixels import pixel_array

    files = write_dicom_series(shared_data / CT_SM, tmp_path / "s", transfer_syntax=syntax)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == syntax
    first = pydicom.dcmread(files[0])
    assert np.array_equal(
        pixel_array(files[0], decoding_plugin=plugin), first.pixel_array
    )  # the decoder the package declares, not only a test-only one (GDCM)
    hu, affine = ct_sm_source(shared_data)
    vol = read_series([str(f) for f in files])
    assert np.array_equal(vol.hu, hu)
    assert vol.affine == pytest.approx(affine, abs=1e-4)


def test_enhanced_multiframe_file_reads_geometry_and_rescale_per_frame(
    shared_data: Path, tmp_path: Path
) -> None:
    """One file, frames stored out of order with per-frame positions and per-frame rescale
    intercepts (-1024 / -1000): the volume is the scan's exact HU on its exact grid."""
    order = np.random.default_rng(3).permutation(30)
    path = write_multiframe(shared_data / CT_SM, tmp_path / "enhanced.dcm", order)
    hu, affine = ct_sm_source(shared_data)
    vol = read_series([str(path)])
    assert vol.num_slices == 30
    assert np.array_equal(vol.hu, hu)
    assert vol.affine == pytest.approx(affine, abs=1e-4)


def test_uneven_spacing_is_interpolated_on_the_true_positions(
    shared_data: Path, tmp_path: Path
) -> None:
    """Slices 0-16 every 3 mm, then every 6 mm, the last two 3 mm again: the regular volume
    holds the true slices unchanged where they exist and the linear mean of the two neighbours
    where one is absent."""
    dropped = tuple(range(17, 28, 2))
    files = write_dicom_series(shared_data / CT_SM, tmp_path / "s", drop=dropped)
    hu, affine = ct_sm_source(shared_data)
    vol = read_series([str(f) for f in files])
    assert vol.uneven_spacing
    assert vol.slice_steps == pytest.approx((3.0, 6.0), abs=1e-4)
    assert vol.hu.shape == hu.shape  # 0..87 mm at the smallest step
    assert vol.affine == pytest.approx(affine, abs=1e-4)
    kept = [k for k in range(30) if k not in dropped]
    assert np.array_equal(vol.hu[:, :, kept], hu[:, :, kept])
    for k in dropped:
        assert np.allclose(vol.hu[:, :, k], (hu[:, :, k - 1] + hu[:, :, k + 1]) / 2)


def test_large_gap_is_not_interpolated(shared_data: Path, tmp_path: Path) -> None:
    """Steps of 3 mm, two of 6 mm, then one of 15 mm: more than 3x the usual step (and not a
    lone lost file), so an error with the gap size instead of invented anatomy."""
    files = write_dicom_series(shared_data / CT_SM, tmp_path / "s", drop=(17, 19, *range(21, 25)))
    with pytest.raises(DicomSeriesError, match=r"slice gap of 15\.00 mm between .* over 3x"):
        read_series([str(f) for f in files])


def test_gantry_tilt_is_corrected_on_the_true_positions(shared_data: Path, tmp_path: Path) -> None:
    """The scan resampled onto planes tilted by 12 degrees (table steps straight along z): the
    affine keeps the true sheared step, and the stored grid matches the scan at the same world
    points (a reader that puts the slices along the plane normal is off by ~80 HU)."""
    from scipy.ndimage import map_coordinates

    files, tilted_lps = write_tilted_series(shared_data / CT_SM, tmp_path / "t", 12.0)
    vol = read_series([str(f) for f in files])
    assert vol.gantry_tilt_deg == pytest.approx(12.0, abs=0.01)
    tilted_ras = LPS_FROM_RAS @ tilted_lps
    assert vol.affine == pytest.approx(tilted_ras, abs=1e-4)

    hu, src_affine = ct_sm_source(shared_data)
    stored, affine = stored_grid(vol.hu, vol.affine, (1.5, 1.5, 1.5))
    cols = affine[:3, :3] / 1.5
    assert cols.T @ cols == pytest.approx(np.eye(3), abs=1e-6), "the stored grid is orthogonal"
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in stored.shape], indexing="ij"), -1)
    world = affine @ np.c_[grid.reshape(-1, 3), np.ones(grid[..., 0].size)].T
    src_idx = (np.linalg.inv(src_affine) @ world)[:3]
    tilt_idx = (np.linalg.inv(tilted_ras) @ world)[:3]
    inside = np.all((src_idx >= 1) & (src_idx <= np.array(hu.shape)[:, None] - 2), axis=0)
    inside &= np.all((tilt_idx >= 1) & (tilt_idx <= np.array(vol.hu.shape)[:, None] - 2), axis=0)
    assert inside.mean() > 0.5
    ref = map_coordinates(hu, src_idx[:, inside], order=1)
    body = ref > -500
    assert np.abs(stored.reshape(-1)[inside] - ref)[body].mean() < 10.0
    # outside the tilted stack is air, not a smeared copy of its edge slices
    src_only = np.all((src_idx >= 0) & (src_idx <= np.array(hu.shape)[:, None] - 1), axis=0)
    wedge = src_only & np.any((tilt_idx < -1) | (tilt_idx > np.array(vol.hu.shape)[:, None]), 0)
    assert wedge.sum() > 1000
    assert np.all(stored.reshape(-1)[wedge] == pytest.approx(-1024.0, abs=1e-3))


def test_extreme_tilt_is_an_error_with_the_angle(shared_data: Path, tmp_path: Path) -> None:
    files, _ = write_tilted_series(shared_data / CT_SM, tmp_path / "t", 40.0)
    with pytest.raises(DicomSeriesError, match=r"gantry tilt of 40\.0 degrees"):
        read_series([str(f) for f in files])
