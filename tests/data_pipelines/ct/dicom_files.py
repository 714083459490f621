"""DICOM files written with pydicom in the layouts scanners and archives export, from a real CT.

Every writer takes a real NIfTI volume (the TotalSegmentator sample) and writes it as a CT
series: classic one-file-per-slice (optionally with blank UIDs, compressed transfer syntaxes,
a subset of slices, or a tilted gantry), an enhanced multi-frame file with per-frame functional
groups, and localizer images. File names are in scrambled order and InstanceNumber is reversed,
so a reader that orders by name or number instead of position gets the volume wrong.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
CT_SM = "ct/totalsegmentator_example/example_ct_sm.nii.gz"  # under the shared data folder


def ct_sm_source(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The small example CT (:data:`CT_SM`): float32 HU voxels and the affine, as stored."""
    img = nib.load(str(shared_data / CT_SM))
    return np.asarray(img.dataobj).astype(np.float32), img.affine


def nifti_as_lps(nifti: Path) -> tuple[np.ndarray, np.ndarray]:
    """The volume's int16 voxels [i, j, k] and its voxel → LPS mm affine."""
    img = nib.load(str(nifti))
    return np.asarray(img.dataobj).astype(np.int16), LPS_FROM_RAS @ img.affine


def ds_number(v: float) -> str:
    return f"{v:.6f}"


def _image_pixel_module(ds: Dataset, rows: int, columns: int) -> None:
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1


def new_file(path: Path, sop_class: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    return ds


def save(ds: FileDataset, path: Path, transfer_syntax: str | None = None) -> Path:
    """Write ``ds`` as a Part-10 file, compressed with pydicom's encoder when asked (JPEG
    Lossless, which pydicom cannot encode, by GDCM)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if transfer_syntax == JPEGLosslessSV1:
        ds.save_as(path, enforce_file_format=True)
        return gdcm_transcode(path, transfer_syntax)
    if transfer_syntax is not None:
        ds.compress(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def gdcm_transcode(path: Path, transfer_syntax: str) -> Path:
    """Re-encode a file in place with GDCM (JPEG Lossless, process 14, selection value 1)."""
    import gdcm

    assert transfer_syntax == JPEGLosslessSV1
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return path


def ct_slice(
    path: Path,
    pixels: np.ndarray,
    position: np.ndarray,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    spacing: tuple[float, float],
    ids: dict[str, str],
) -> FileDataset:
    """One CT image slice: ``pixels`` [rows, columns] int16 HU at ``position`` (LPS mm);
    ``spacing`` = (between rows, between columns); ``ids``: UIDs, numbers and descriptions."""
    ds = new_file(path, CTImageStorage)
    ds.PatientID = ids.get("patient_id", "PAT-0001")
    ds.StudyInstanceUID = ids.get("study_uid", "")
    ds.SeriesInstanceUID = ids.get("series_uid", "")
    if ids.get("series_number"):
        ds.SeriesNumber = ids["series_number"]
    if ids.get("description"):
        ds.SeriesDescription = ids["description"]
    ds.ImageType = ids.get("image_type", "ORIGINAL\\PRIMARY\\AXIAL").split("\\")
    ds.InstanceNumber = ids.get("instance", "1")
    ds.ImagePositionPatient = [ds_number(v) for v in position]
    ds.ImageOrientationPatient = [ds_number(v) for v in (*row_dir, *col_dir)]
    ds.PixelSpacing = [ds_number(spacing[0]), ds_number(spacing[1])]
    _image_pixel_module(ds, *pixels.shape)
    ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16).tobytes()
    return ds


def write_dicom_series(
    nifti: Path,
    folder: Path,
    drop: tuple[int, ...] = (),
    series_uid: str | None = None,
    patient_id: str = "PAT-0001",
    transfer_syntax: str | None = None,
    **ids: str,
) -> list[Path]:
    """The volume as one file per axial slice (``series_uid=""`` blanks the UIDs, as
    anonymizers do; ``drop`` leaves slices out)."""
    data, lps = nifti_as_lps(nifti)
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    row_dir = col_step / np.linalg.norm(col_step)  # direction along a row (i)
    col_dir = row_step / np.linalg.norm(row_step)  # direction down a column (j)
    spacing = (float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step)))
    blank = series_uid == ""
    ids = {
        "series_uid": "" if blank else series_uid or generate_uid(),
        "study_uid": "" if blank else generate_uid(),
        "patient_id": patient_id,
        **ids,
    }
    n = data.shape[2]
    names = np.random.default_rng(7).permutation(n)
    written = []
    for k in range(n):
        if k in drop:
            continue
        path = folder / f"{ids.get('prefix', 'IM')}{names[k]:04d}.dcm"
        pos = (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ds = ct_slice(path, data[:, :, k].T, pos, row_dir, col_dir, spacing,
                      {**ids, "instance": str(n - k)})  # fmt: skip
        written.append(save(ds, path, transfer_syntax))
    return written


def write_localizer(
    folder: Path, nifti: Path, name: str, image_type: str | None, plane: str = "coronal"
) -> Path:
    """A coronal (or sagittal) scout through the volume (one slice, other orientation and size),
    saved into ``folder`` with blank UIDs; ``image_type`` None leaves out the LOCALIZER flag."""
    data, lps = nifti_as_lps(nifti)
    nx, ny, nz = data.shape
    if plane == "coronal":  # rows: superior → inferior, columns: along i
        pixels = data[:, ny // 2, ::-1].T
        pos = (lps @ np.array([0.0, ny // 2, nz - 1, 1.0]))[:3]
        row_dir = lps[:3, 0] / np.linalg.norm(lps[:3, 0])
    else:  # sagittal: rows superior → inferior, columns along j
        pixels = data[nx // 2, :, ::-1].T
        pos = (lps @ np.array([nx // 2, 0.0, nz - 1, 1.0]))[:3]
        row_dir = lps[:3, 1] / np.linalg.norm(lps[:3, 1])
    ids = {"image_type": image_type or "ORIGINAL\\PRIMARY\\OTHER", "description": "scout"}
    ds = ct_slice(folder / name, pixels, pos, row_dir, np.array([0, 0, -1.0]), (3.0, 3.0), ids)
    return save(ds, folder / name)


def write_tilted_series(
    nifti: Path, folder: Path, tilt_deg: float
) -> tuple[list[Path], np.ndarray]:
    """The volume resampled (trilinear) onto the planes of a gantry tilted by ``tilt_deg`` about
    the left-right axis: image planes tilted, slice positions stepping straight along the table
    (z). Returns the files and the true voxel → LPS affine of the tilted stack (sheared)."""
    from scipy.ndimage import map_coordinates

    data, lps = nifti_as_lps(nifti)
    t = np.radians(tilt_deg)
    row_dir = np.array([1.0, 0.0, 0.0]) * np.sign(lps[0, 0])
    col_dir = np.array([0.0, np.cos(t), -np.sin(t)]) * np.sign(lps[1, 1])
    spacing = float(np.linalg.norm(lps[:3, 0]))
    step = lps[:3, 2]  # the table moves as in the source: straight along z
    tilted = np.eye(4)
    tilted[:3, 0], tilted[:3, 1], tilted[:3, 2] = row_dir * spacing, col_dir * spacing, step
    # tilt about the image's middle row, so the tilted planes stay inside the scanned volume
    middle = data.shape[1] / 2 * spacing
    tilted[:3, 3] = lps[:3, 3] + middle * (lps[:3, 1] / spacing - col_dir)
    src_from_tilted = np.linalg.inv(lps) @ tilted
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in data.shape], indexing="ij"), 0)
    idx = np.tensordot(src_from_tilted[:3, :3], grid, axes=1)
    idx += src_from_tilted[:3, 3, None, None, None]
    values = map_coordinates(data.astype(np.float32), idx, order=1, cval=-1024.0)
    values = np.rint(values).astype(np.int16)  # [i, j, k] on the tilted planes
    ids = {"series_uid": generate_uid(), "study_uid": generate_uid()}
    written = []
    for k in range(data.shape[2]):
        path = folder / f"T{k:04d}.dcm"
        pos = (tilted @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ds = ct_slice(path, values[:, :, k].T, pos, row_dir, col_dir, (spacing, spacing), ids)
        written.append(save(ds, path))
    return written, tilted


def write_multiframe(nifti: Path, path: Path, frame_order: np.ndarray) -> Path:
    """The volume as one enhanced CT multi-frame file: geometry in the shared/per-frame
    functional groups, frames stored in ``frame_order``, and a per-frame rescale intercept
    alternating between -1024 and -1000 (stored value = HU - intercept)."""
    data, lps = nifti_as_lps(nifti)
    col_step, row_step = lps[:3, 0], lps[:3, 1]
    row_dir, col_dir = col_step / np.linalg.norm(col_step), row_step / np.linalg.norm(row_step)
    ds = new_file(path, ENHANCED_CT)
    ds.PatientID = "PAT-MF"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.NumberOfFrames = len(frame_order)
    _image_pixel_module(ds, data.shape[1], data.shape[0])
    shared = Dataset()
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing = [ds_number(np.linalg.norm(v)) for v in (row_step, col_step)]
    measures.SliceThickness = ds_number(np.linalg.norm(lps[:3, 2]))
    orientation.ImageOrientationPatient = [ds_number(v) for v in (*row_dir, *col_dir)]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame, frames = [], []
    for n, k in enumerate(frame_order):
        item, plane, transform = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = [ds_number(v) for v in (lps @ [0.0, 0.0, k, 1.0])[:3]]
        intercept = -1024 if n % 2 == 0 else -1000
        transform.RescaleIntercept, transform.RescaleSlope = str(intercept), "1"
        transform.RescaleType = "HU"
        item.PlanePositionSequence = Sequence([plane])
        item.PixelValueTransformationSequence = Sequence([transform])
        per_frame.append(item)
        frames.append((data[:, :, k].T.astype(np.int32) - intercept).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.ascontiguousarray(np.stack(frames)).tobytes()
    return save(ds, path)
