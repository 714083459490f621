"""DICOM slices → series, the way dcm2niix groups them.

Hospital and archive exports are messier than one folder per series:

* **Identity**: slices belong together by SeriesInstanceUID when it is present. Anonymizers often
  blank it; then a series is what shares a folder, SeriesNumber and SeriesDescription.
* **Geometry**: within one identity, slices are split by acquisition geometry (orientation,
  pixel spacing, rows × columns), so a folder mixing an axial stack with its coronal
  reformat, or several reconstructions, becomes several series.
* **Localizers**: files whose ImageType says LOCALIZER or SCOUT, lone slices next to a real
  series (in its folder or under its identity) whose geometry differs from it, and a series made
  only of single slices in several orientations (a scout set, e.g. AP + lateral) are left out
  and listed as ignored with the reason. A lone slice with nothing beside it stays a series of
  its own (the build quarantines it as a 2-D image).
* **Derived copies**: a series whose ImageType says DERIVED or SECONDARY (reformats, MIPs, ...)
  beside an original series of its study is left out and listed as ignored, naming the series
  it was derived beside; a study holding derived series only keeps them.
* **Multi-frame**: an enhanced multi-frame file is a volume on its own (one series).
* **Copies**: the same series exported twice (same SOPInstanceUIDs in two folders) becomes one
  series per folder, so the copy is marked as a duplicate instead of failing as a series with
  every slice twice.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from data_pipelines.ct.dicom_headers import SliceHeader

# orientation cosines and pixel spacings closer than this are the same geometry
GEOMETRY_DECIMALS = 3
LOCALIZER_REASON = "localizer/scout image (ImageType LOCALIZER or SCOUT)"
SCOUT_SET_REASON = "localizer/scout image (single slices in several orientations)"
DERIVED_REASON = "derived/secondary image series (ImageType DERIVED or SECONDARY)"
STRAY_SLICE_REASON = (
    "single slice whose geometry differs from the series beside it (a localizer or scout)"
)
# what an ordinary scanner or PACS export holds beside its series: skipped, and no reason for
# --strict to fail the build
EXPORT_EXTRAS = (LOCALIZER_REASON, SCOUT_SET_REASON, STRAY_SLICE_REASON, DERIVED_REASON)


def is_export_extra(why: str) -> bool:
    """Whether an ignored file's reason is one of :data:`EXPORT_EXTRAS`."""
    return why.startswith(EXPORT_EXTRAS)


Identity = tuple[str, ...]
Geometry = tuple


@dataclass(frozen=True)
class DicomSeries:
    """One series as found at discovery: its files and the ids the manifest keeps."""

    series_uid: str
    study_uid: str
    patient_id: str
    folder: str  # the deepest folder holding all of its files
    files: tuple[str, ...]
    series_number: str = ""
    tag: str = ""  # short stable tag, tells apart several series of one folder
    multiframe: bool = False
    derived: bool = False  # every file's ImageType says DERIVED or SECONDARY

    @property
    def name(self) -> str:
        """The series as a person finds it: its folder and number (or tag)."""
        return f"{self.folder} series {self.series_number or self.tag}"


def identity_of(h: SliceHeader) -> Identity:
    """What makes slices one series: the UID, or (without one) folder + number + description."""
    if h.series_uid:
        return ("uid", h.series_uid)
    return ("folder", h.folder, h.series_number, h.series_description)


def geometry_of(h: SliceHeader) -> Geometry:
    def rounded(values: tuple[float, ...] | None) -> tuple[float, ...]:
        return tuple(round(v, GEOMETRY_DECIMALS) + 0.0 for v in values or ())

    return (rounded(h.orientation), rounded(h.pixel_spacing), h.rows, h.columns)


def _common_folder(paths: list[str]) -> str:
    folder = Path(paths[0]).parent
    for p in paths[1:]:
        while folder not in Path(p).parents:
            folder = folder.parent
    return str(folder)


def _split_copies(members: list[SliceHeader]) -> list[list[SliceHeader]]:
    """One group per folder when the same SOPInstanceUIDs appear more than once."""
    sops = [h.sop_uid for h in members if h.sop_uid]
    if len(set(sops)) == len(sops):
        return [members]
    per_folder: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in members:
        per_folder[h.folder].append(h)
    return [per_folder[k] for k in sorted(per_folder)]


def _series(members: list[SliceHeader], key: str, multiframe: bool = False) -> DicomSeries:
    paths = sorted(h.path for h in members)
    folder = _common_folder(paths)
    first = members[0]
    return DicomSeries(
        series_uid=first.series_uid,
        study_uid=first.study_uid,
        patient_id=first.patient_id,
        folder=folder,
        files=tuple(paths),
        series_number=first.series_number,
        tag=hashlib.sha1(f"{key}|{folder}".encode()).hexdigest()[:8],
        multiframe=multiframe,
        derived=all(h.is_derived for h in members),
    )


def _candidates(
    headers: list[SliceHeader],
) -> tuple[dict[Identity, dict[Geometry, list[SliceHeader]]], list[DicomSeries], list]:
    """Slices by identity, then geometry; multi-frame files as series; localizers ignored."""
    ignored: list[tuple[str, str]] = []
    multiframe: list[DicomSeries] = []
    groups: dict[Identity, dict[Geometry, list[SliceHeader]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for h in headers:
        if h.is_localizer:
            ignored.append((h.path, LOCALIZER_REASON))
        elif h.is_multiframe:
            multiframe.append(_series([h], f"multiframe|{h.path}", multiframe=True))
        else:
            groups[identity_of(h)][geometry_of(h)].append(h)
    return groups, multiframe, ignored


def group_series(
    headers: list[SliceHeader],
) -> tuple[list[DicomSeries], list[tuple[str, str]]]:
    """Series of ``headers`` (sorted by folder, then tag) and ``(path, why)`` for files left out."""
    groups, series, ignored = _candidates(headers)
    # folders and identities that hold a real (multi-slice) series
    stacked = {
        key
        for identity, by_geometry in groups.items()
        for members in by_geometry.values()
        if len(members) > 1
        for key in (identity, *(h.folder for h in members))
    }
    for identity in sorted(groups):
        by_geometry = groups[identity]
        scout_set = len(by_geometry) > 1 and all(len(m) == 1 for m in by_geometry.values())
        for geometry in sorted(by_geometry):
            members = by_geometry[geometry]
            if len(members) == 1 and (identity in stacked or members[0].folder in stacked):
                ignored.append((members[0].path, STRAY_SLICE_REASON))
                continue
            if scout_set:
                ignored.append((members[0].path, SCOUT_SET_REASON))
                continue
            # a UID series that was not split is tagged by its UID alone (stable across versions)
            unsplit_uid = identity[0] == "uid" and len(by_geometry) == 1
            key = identity[1] if unsplit_uid else repr((identity, geometry))
            series += [_series(part, key) for part in _split_copies(members)]
    series, derived = drop_derived(series)
    series.sort(key=lambda s: (s.folder, s.tag))
    return series, sorted(ignored + derived)


def drop_derived(series: list[DicomSeries]) -> tuple[list[DicomSeries], list[tuple[str, str]]]:
    """Derived/secondary series beside an original series of the same study (by
    StudyInstanceUID; without one, by patient and the folder above the series): left out,
    each file listed with the reason. They are copies of what the original holds, not cases."""

    def study(s: DicomSeries) -> str:
        return s.study_uid or f"{s.patient_id}|{Path(s.folder).parent}"

    originals: dict[str, DicomSeries] = {}
    for s in series:
        if not s.derived:
            originals.setdefault(study(s), s)
    kept, ignored = [], []
    for s in series:
        original = originals.get(study(s)) if s.derived else None
        if original is None:
            kept.append(s)
            continue
        why = f"{DERIVED_REASON}, beside the original {original.name}"
        ignored += [(f, why) for f in s.files]
    return kept, ignored
