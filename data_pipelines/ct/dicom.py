"""DICOM CT series: find slice files, group them into series, and stack a series into a volume.

Slices are grouped by SeriesInstanceUID and ordered by their position along the slice normal
(ImagePositionPatient · (row × column direction)), never by file name or InstanceNumber: exports
name files arbitrarily and InstanceNumber is often reset or missing. A gap between neighbouring
slices larger than the series' usual step means a lost file; that volume would be silently
stretched, so it is an error (the build quarantines it).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DICOM_MAGIC_OFFSET = 128
# tags read at discovery: enough to group and describe a series without touching pixels
HEADER_TAGS = [
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "Modality",
    "ImagePositionPatient",
    "ImageOrientationPatient",
]
# a neighbour gap above this multiple of the median step means a slice is missing
MISSING_SLICE_FACTOR = 1.5


class DicomSeriesError(ValueError):
    """A DICOM series that cannot be stacked into a volume (the reason says why)."""


@dataclass(frozen=True)
class DicomSeries:
    """One series as found at discovery: its files and the ids the manifest keeps."""

    series_uid: str
    study_uid: str
    patient_id: str
    folder: str  # the deepest folder holding all of its files
    files: tuple[str, ...]


def has_dicom_magic(path: Path) -> bool:
    """True for a Part-10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def group_series(files: list[Path]) -> tuple[list[DicomSeries], list[tuple[str, str]]]:
    """Read headers only and group image slices by SeriesInstanceUID.

    The same series exported twice (same SOPInstanceUIDs in two folders) becomes two series,
    one per folder, so that the copy is marked as a duplicate instead of failing as a series
    with every slice twice. Returns the series and ``(path, why)`` for files left out.
    """
    import pydicom

    ignored: list[tuple[str, str]] = []
    by_uid: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except Exception as e:
            ignored.append((str(f), f"unreadable DICOM header ({type(e).__name__}: {e})"))
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            ignored.append((str(f), "DICOM file without SeriesInstanceUID"))
            continue
        modality = str(ds.get("Modality", "") or "")
        if modality and modality != "CT":
            ignored.append((str(f), f"DICOM Modality {modality} is not CT"))
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            ignored.append((str(f), "DICOM file is not an image slice (no position/orientation)"))
            continue
        by_uid[uid].append((f, ds))

    series: list[DicomSeries] = []
    for uid, members in sorted(by_uid.items()):
        sops = [str(ds.get("SOPInstanceUID", "")) for _, ds in members]
        if len(set(sops)) == len(sops):
            groups = [members]
        else:  # the same slices in several folders: one series per folder
            per_folder: dict[Path, list] = defaultdict(list)
            for f, ds in members:
                per_folder[f.parent].append((f, ds))
            groups = [per_folder[k] for k in sorted(per_folder)]
        for group in groups:
            paths = sorted(str(f) for f, _ in group)
            ds0 = group[0][1]
            folder = Path(paths[0]).parent
            for p in paths[1:]:
                while folder not in Path(p).parents:
                    folder = folder.parent
            series.append(
                DicomSeries(
                    series_uid=uid,
                    study_uid=str(ds0.get("StudyInstanceUID", "") or ""),
                    patient_id=str(ds0.get("PatientID", "") or ""),
                    folder=str(folder),
                    files=tuple(paths),
                )
            )
    return series, ignored


def series_key(series: DicomSeries) -> str:
    """A short stable tag for a series (for case ids when a folder holds several)."""
    return hashlib.sha1(f"{series.series_uid}|{series.folder}".encode()).hexdigest()[:8]


@dataclass
class DicomVolume:
    hu: np.ndarray  # [X, Y, Z] float32 HU; X along the rows' direction, Z along the normal
    affine: np.ndarray  # [4, 4] voxel index -> RAS+ world mm
    num_slices: int


def read_series(files: list[str] | tuple[str, ...]) -> DicomVolume:
    """Stack a series into HU voxels and an affine; raise DicomSeriesError saying what is wrong."""
    import pydicom

    slices = []
    for f in files:
        try:
            slices.append(pydicom.dcmread(f))
        except Exception as e:
            raise DicomSeriesError(
                f"cannot read slice {Path(f).name}: {type(e).__name__}: {e}"
            ) from e
    if len(slices) < 2:
        raise DicomSeriesError(
            f"series has {len(slices)} slice; a CT volume needs at least 2 (this is a 2-D image)"
        )
    ref = slices[0]
    iop = np.asarray(ref.ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DicomSeriesError(f"ImageOrientationPatient {list(iop)} is not two unit vectors")
    for s in slices[1:]:
        if (s.Rows, s.Columns) != (ref.Rows, ref.Columns):
            raise DicomSeriesError(
                f"slices of different size in one series ({ref.Rows}x{ref.Columns} and "
                f"{s.Rows}x{s.Columns}); split the series before building"
            )
        if not np.allclose(np.asarray(s.ImageOrientationPatient, float), iop, atol=1e-4):
            raise DicomSeriesError("slices with different orientations in one series")

    positions = np.array([np.asarray(s.ImagePositionPatient, float) for s in slices])
    along = positions @ normal  # [N] mm along the slice normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    slices = [slices[i] for i in order]
    steps = np.diff(along)
    if (steps < 1e-3).any():
        k = int(np.argmin(steps))
        raise DicomSeriesError(
            f"two slices at the same position ({along[k]:.2f} mm along the normal); the series "
            f"holds duplicates or several acquisitions"
        )
    step = float(np.median(steps))
    if (steps > MISSING_SLICE_FACTOR * step).any():
        k = int(np.argmax(steps))
        missing = round(steps[k] / step) - 1
        raise DicomSeriesError(
            f"missing slice: gap of {steps[k]:.2f} mm between slices at {along[k]:.2f} and "
            f"{along[k + 1]:.2f} mm where the series steps {step:.2f} mm "
            f"(~{missing} slice(s) lost, {len(slices)} present)"
        )
    if (steps < step / MISSING_SLICE_FACTOR).any():
        raise DicomSeriesError(
            f"irregular slice spacing ({steps.min():.2f} to {steps.max():.2f} mm); "
            f"resample or split the series before building"
        )

    # pixel_array is [rows, cols] = [j, i]; stack along k and reorder to [i, j, k]
    hu = np.empty((int(ref.Columns), int(ref.Rows), len(slices)), dtype=np.float32)
    for k, s in enumerate(slices):
        try:
            px = s.pixel_array
        except Exception as e:
            raise DicomSeriesError(f"cannot decode pixels: {type(e).__name__}: {e}") from e
        slope = float(getattr(s, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(s, "RescaleIntercept", 0.0) or 0.0)
        hu[:, :, k] = px.T.astype(np.float32) * slope + intercept

    col_spacing, row_spacing = float(ref.PixelSpacing[1]), float(ref.PixelSpacing[0])
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # i: along a row, one column further
    lps[:3, 1] = col_dir * row_spacing  # j: down a column, one row further
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)  # k: slice to slice
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> RAS+ (as NIfTI)
    return DicomVolume(hu=hu, affine=affine, num_slices=len(slices))
