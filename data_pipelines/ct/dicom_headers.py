"""DICOM headers at discovery: which files are CT image slices, and what grouping needs of them.

Only the header is read (never pixels), and only the tags grouping uses. For an archive of
millions of slices this is the slow part of discovery, so :func:`read_headers` reads them in
batches on the build's workers (a dask LocalCluster or a remote scheduler) and returns exactly
what the serial path returns: headers sorted by path, ignored files sorted by path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from data_pipelines import parallel
from data_pipelines.errors import first_line

DICOM_MAGIC_OFFSET = 128
# tags read at discovery: enough to group and describe a series without touching pixels
HEADER_TAGS = [
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "PatientID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "ImageType",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
]
# files per header-reading task: large enough that task overhead is small, small enough that
# every worker gets several tasks
MAX_BATCH = 2000


@dataclass(frozen=True)
class SliceHeader:
    """What grouping needs of one DICOM image file (a slice, or a multi-frame volume)."""

    path: str
    series_uid: str  # "" when absent or blank (anonymizers blank it)
    study_uid: str
    sop_uid: str
    patient_id: str
    series_number: str  # as written, "" when absent
    series_description: str
    image_type: tuple[str, ...]
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6); None in multi-frame
    position: tuple[float, ...] | None  # ImagePositionPatient (3); None in multi-frame
    pixel_spacing: tuple[float, ...] | None  # (row spacing, column spacing) mm
    rows: int
    columns: int
    frames: int  # NumberOfFrames; 1 for a classic single-frame slice

    @property
    def folder(self) -> str:
        return str(Path(self.path).parent)

    @property
    def is_multiframe(self) -> bool:
        return self.frames > 1

    @property
    def is_derived(self) -> bool:
        """ImageType DERIVED or SECONDARY: a reformat, MIP or other copy made from the images."""
        return any(t in self.image_type for t in ("DERIVED", "SECONDARY"))

    @property
    def is_localizer(self) -> bool:
        return any(t in self.image_type for t in ("LOCALIZER", "SCOUT"))


def has_dicom_magic(path: str | Path) -> bool:
    """True for a Part-10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _text(ds: object, tag: str) -> str:
    return str(getattr(ds, tag, "") or "").strip()


def _floats(ds: object, tag: str, n: int) -> tuple[float, ...] | None:
    value = getattr(ds, tag, None)
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def read_header(path: str) -> SliceHeader | tuple[str, str] | None:
    """One file's header; ``(path, why)`` when the file is DICOM but not usable here; None when
    it is not a DICOM file at all (no ``DICM`` magic)."""
    import pydicom

    if not has_dicom_magic(path):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except Exception as e:
        return path, f"unreadable DICOM header ({type(e).__name__}: {first_line(e)})"
    modality = _text(ds, "Modality")
    if modality and modality != "CT":
        return path, f"DICOM Modality {modality} is not CT"
    frames = int(_text(ds, "NumberOfFrames") or 1)
    header = SliceHeader(
        path=path,
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        series_number=_text(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        image_type=tuple(str(v).upper() for v in (getattr(ds, "ImageType", None) or ())),
        orientation=_floats(ds, "ImageOrientationPatient", 6),
        position=_floats(ds, "ImagePositionPatient", 3),
        pixel_spacing=_floats(ds, "PixelSpacing", 2),
        rows=int(getattr(ds, "Rows", 0) or 0),
        columns=int(getattr(ds, "Columns", 0) or 0),
        frames=frames,
    )
    if not header.is_multiframe and (header.position is None or header.orientation is None):
        return path, "DICOM file is not an image slice (no position/orientation)"
    return header


def read_header_batch(paths: list[str]) -> list[SliceHeader | tuple[str, str] | None]:
    """The task run on a worker: the headers of a batch of files, in the batch's order."""
    return [read_header(p) for p in paths]


def read_headers(
    paths: list[str],
    scheduler: str = parallel.SYNCHRONOUS,
    workers: int = 1,
) -> tuple[list[SliceHeader], list[tuple[str, str]]]:
    """Headers of the DICOM files among ``paths`` and ``(path, why)`` for unusable ones.

    Batches run where ``scheduler``/``workers`` say; the result does not depend on it.
    """
    paths = sorted(str(p) for p in paths)
    n_tasks = max(1, workers * 4)
    size = min(MAX_BATCH, max(1, -(-len(paths) // n_tasks)))
    batches = [paths[i : i + size] for i in range(0, len(paths), size)]
    headers: list[SliceHeader] = []
    ignored: list[tuple[str, str]] = []
    results = parallel.map_unordered(read_header_batch, batches, scheduler, workers)
    with contextlib.closing(results):  # an interrupt stops the workers before it is reported
        for i, result in results:
            if isinstance(result, BaseException):  # a crashed batch: say so for each file
                reason = f"DICOM header read failed ({type(result).__name__}: {first_line(result)})"
                ignored += [(p, reason) for p in batches[i]]
                continue
            for item in result:
                if isinstance(item, SliceHeader):
                    headers.append(item)
                elif item is not None:
                    ignored.append(item)
    headers.sort(key=lambda h: h.path)
    ignored.sort()
    return headers, ignored
