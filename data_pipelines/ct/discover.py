"""Find the CT cases of an archive: NIfTI files, DICOM series, and their label maps.

NIfTI files are only listed (a bad file must fail inside its task, where it is quarantined);
DICOM headers are read here, without pixels and on the build's workers, because slices only
become a case once grouped into series (``ct.dicom_grouping``).

**Label naming rule** (``labels="auto"``), applied to NIfTI files:

1. *Suffix*: ``<stem>_seg``, ``_label``, ``_labels``, ``_mask`` or ``_gt`` (any case) is the label
   map of ``<stem>`` in the same folder: ``case01.nii.gz`` ↔ ``case01_seg.nii.gz``.
2. *Label folder*: a file inside a folder named ``labels``, ``labelsTr``, ``labelsTs``,
   ``segmentations`` or ``masks`` is the label map of the file with the same name in a sibling
   folder ``images``/``imagesTr``/``imagesTs`` or in the parent folder; nnU-Net's channel suffix
   ``_0000`` on the image name is ignored (``imagesTr/la_003_0000.nii.gz`` ↔
   ``labelsTr/la_003.nii.gz``).
3. A file the rule marks as a label but whose image is not found is ignored (with a reason in
   the build record), never built as an image.

A CSV of pairs (``labels_csv``; columns ``image,label`` and optionally ``patient_id``, paths
relative to the CSV's folder; ``image`` may be a DICOM series folder) wins over the rule, and
``labels="none"`` turns the rule off (every NIfTI is an image).
"""

from __future__ import annotations

import csv
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_pipelines import parallel
from data_pipelines.ct.dicom_grouping import DicomSeries, group_series
from data_pipelines.ct.dicom_headers import read_headers
from data_pipelines.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABEL_SUFFIX = re.compile(r"^(?P<stem>.+?)_(seg|label|labels|mask|gt)$", re.IGNORECASE)
LABEL_DIRS = ("labels", "labelstr", "labelsts", "segmentations", "masks")
IMAGE_DIRS = ("images", "imagestr", "imagests")
NNUNET_CHANNEL = re.compile(r"_0000$")
# files that are certainly not DICOM slices; anything else is checked for the DICM magic
NOT_DICOM_SUFFIXES = {
    ".md", ".txt", ".json", ".csv", ".tsv", ".yaml", ".yml", ".py", ".png", ".jpg", ".jpeg",
    ".xml", ".pdf", ".zip", ".gz", ".tar", ".parquet", ".html", ".log", ".npy", ".npz", ".pkl",
    ".zarr", ".tif", ".tiff", ".mha", ".mhd", ".nrrd",
}  # fmt: skip
LABEL_MODES = ("auto", "none")


@dataclass(frozen=True)
class CTCase:
    """One volume to build: a NIfTI file or a DICOM series, with its optional label map."""

    case_id: str
    kind: str  # "nifti" | "dicom"
    source: str  # the NIfTI path, or the series folder
    files: tuple[str, ...] = ()  # DICOM slice files
    label: str | None = None
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""


@dataclass
class CTDiscovery:
    cases: list[CTCase]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def nifti_stem(path: Path) -> str:
    name = path.name
    for suf in NIFTI_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def list_input_files(input_spec: str | list[str]) -> tuple[list[Path], Path]:
    """Every file named by folders (recursive), globs or paths; and the root ids are relative to."""
    specs = [input_spec] if isinstance(input_spec, str | Path) else list(input_spec)
    files: list[Path] = []
    roots: list[Path] = []
    for spec in map(str, specs):
        p = Path(spec)
        if p.is_dir():
            roots.append(p)
            files += [f for f in sorted(p.rglob("*")) if f.is_file()]
        elif p.is_file():
            roots.append(p.parent)
            files.append(p)
        elif glob.has_magic(spec):
            matched = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            root_parts = []
            for part in Path(spec).parts:
                if glob.has_magic(part):
                    break
                root_parts.append(part)
            roots.append(Path(*root_parts) if root_parts else Path("."))
            for m in matched:
                files += sorted(f for f in m.rglob("*") if f.is_file()) if m.is_dir() else [m]
        else:
            raise InputError(
                f"--input: {spec!r} does not exist; give a folder of .nii/.nii.gz files or "
                f"DICOM series, a glob, or a file"
            )
    root = Path(os.path.commonpath([_abs(r) for r in roots]))
    return sorted({Path(_abs(f)) for f in files}), root


def _abs(path: Path) -> str:
    """Absolute and normalized, but symlinks kept: ids and pairing follow the input's layout."""
    return os.path.abspath(path)


def _rel_id(path: Path, root: Path) -> str:
    try:
        return "/".join(path.relative_to(root).parts) or path.name
    except ValueError:
        return path.name


def read_pairs_csv(path: str | Path) -> dict[Path, tuple[Path, str]]:
    """``{image: (label, patient_id)}`` from a CSV with columns image,label[,patient_id]."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--labels-csv: {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower() for c in (reader.fieldnames or [])}
        if not {"image", "label"} <= cols:
            raise InputError(
                f"--labels-csv: {path} needs a header with columns 'image' and 'label' "
                f"(optional 'patient_id'); found {sorted(cols)}"
            )
        pairs: dict[Path, tuple[Path, str]] = {}
        for row in reader:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("image"):
                continue
            image = Path(_abs(path.parent / row["image"]))
            label = Path(_abs(path.parent / row["label"])) if row.get("label") else None
            pairs[image] = (label, row.get("patient_id", ""))  # type: ignore[assignment]
    return pairs


def _label_rule_image(label: Path, by_key: dict[tuple[Path, str], Path]) -> Path | bool | None:
    """The image a label file belongs to under the naming rule; False if not a label name."""
    stem = nifti_stem(label)
    m = LABEL_SUFFIX.match(stem)
    if m is not None:
        hit = by_key.get((label.parent, m.group("stem").lower()))
        if hit is not None:
            return hit
    if label.parent.name.lower() in LABEL_DIRS:
        base = label.parent.parent
        candidates = [base / d for d in sorted(os.listdir(base)) if d.lower() in IMAGE_DIRS]
        for folder in [*candidates, base]:
            hit = by_key.get((folder, stem.lower()))
            if hit is not None:
                return hit
        return None
    return None if m is not None else False


def discover_ct(
    input_spec: str | list[str],
    labels: str = "auto",
    labels_csv: str | None = None,
    scheduler: str = parallel.SYNCHRONOUS,
    workers: int = 1,
) -> CTDiscovery:
    """List the cases of ``input_spec`` and pair label maps; sorted by case id.

    DICOM headers are read where ``scheduler``/``workers`` say (the result does not depend on
    it)."""
    if labels not in LABEL_MODES:
        raise InputError(f"--labels: {labels!r} is not one of {', '.join(LABEL_MODES)}")
    files, root = list_input_files(input_spec)
    ignored: list[tuple[str, str]] = []
    niftis = [f for f in files if is_nifti(f)]
    # the DICM magic is checked where the headers are read (on the workers)
    dicom_candidates = [
        str(f) for f in files if not is_nifti(f) and f.suffix.lower() not in NOT_DICOM_SUFFIXES
    ]
    pairs = read_pairs_csv(labels_csv) if labels_csv else {}

    # which NIfTI files are labels, and of which image
    label_of: dict[Path, Path] = {}
    label_files: set[Path] = set()
    for image, (label, _) in pairs.items():
        if label is not None:
            label_of[image] = label
            label_files.add(label)
    if labels == "auto":
        # an image name ending in _0000 (nnU-Net channel) is also found without it
        by_key: dict[tuple[Path, str], Path] = {}
        for f in niftis:
            stem = nifti_stem(f).lower()
            by_key[(f.parent, stem)] = f
            by_key.setdefault((f.parent, NNUNET_CHANNEL.sub("", stem)), f)
        for f in niftis:
            if f in label_files or f in pairs:
                continue
            image = _label_rule_image(f, by_key)
            if image is False:
                continue
            label_files.add(f)
            if image is None:
                ignored.append((str(f), "label map (by the naming rule) without its image"))
            elif image not in label_of:
                label_of[image] = f  # type: ignore[index]

    cases: list[CTCase] = []
    for f in niftis:
        if f in label_files:
            continue
        cases.append(
            CTCase(
                case_id=_rel_id(f.parent / nifti_stem(f), root),
                kind="nifti",
                source=str(f),
                label=str(label_of[f]) if f in label_of else None,
                patient_id=pairs.get(f, (None, ""))[1],
            )
        )

    headers, header_ignored = read_headers(dicom_candidates, scheduler, workers)
    series, grouping_ignored = group_series(headers)
    ignored += header_ignored + grouping_ignored
    cases += dicom_cases(series, root, pairs)

    for image, (label, _) in pairs.items():
        if not any(Path(c.source) == image for c in cases):
            ignored.append((str(image), "listed in --labels-csv but not found in --input"))
        if label is not None and not label.is_file():
            raise InputError(f"--labels-csv: label {label} (for {image.name}) does not exist")
    cases.sort(key=lambda c: c.case_id)
    return CTDiscovery(cases=cases, ignored=ignored)


def _series_label(s: DicomSeries, folder_series: list[DicomSeries]) -> str:
    """``series-<SeriesNumber>`` when that tells the folder's series apart, else
    ``series-<tag>``."""
    numbers = [o.series_number for o in folder_series]
    if s.series_number and numbers.count(s.series_number) == 1:
        return f"series-{safe_name(s.series_number)}"
    return f"series-{s.tag}"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def dicom_cases(
    series: list[DicomSeries], root: Path, pairs: dict[Path, tuple[Path, str]]
) -> list[CTCase]:
    """One case per series; a folder holding several series gets one sub-id per series."""
    per_folder: dict[str, list[DicomSeries]] = {}
    for s in series:
        per_folder.setdefault(s.folder, []).append(s)
    cases = []
    for s in series:
        folder = Path(s.folder)
        case_id = _rel_id(folder, root)
        if len(per_folder[s.folder]) > 1:
            case_id = f"{case_id}/{_series_label(s, per_folder[s.folder])}"
        label, patient = pairs.get(folder, (None, ""))
        cases.append(
            CTCase(
                case_id=case_id,
                kind="dicom",
                source=str(folder),
                files=s.files,
                label=str(label) if label else None,
                patient_id=patient or s.patient_id,
                study_uid=s.study_uid,
                series_uid=s.series_uid,
            )
        )
    return cases
