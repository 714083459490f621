"""CT build: NIfTI files and DICOM series -> ``volumes/<case>`` (+ ``labels/``) and manifest rows.

``build_ct`` plans one task per case and hands them to the shared runner
(``data_pipelines.build``, the same lock / resume / quarantine / summary machinery as the RS
path); ``process_case`` is the task: load, orient to RAS, resample, int16 HU, optional
foreground crop, write the case's arrays and its manifest fragment. ``finalize_manifest`` marks
exact duplicates and assigns the per-patient split across the whole archive.

Store layout (DESIGN.md §3/§5)::

    store.zarr/volumes/<case>      [X, Y, Z] int16 HU, RAS voxel axes, chunks 64³
    store.zarr/labels/<case>       [X, Y, Z] uint8/uint16 on the same grid (when a label exists)
    store.zarr/foreground/<case>   [N, 3] int32 voxel coordinates, centres for biased crops
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_pipelines import parallel
from data_pipelines.build import BuildConfigError, BuildReport, BuildTask, assign_split, run_build
from data_pipelines.ct.dicom import read_series
from data_pipelines.ct.discover import LABEL_MODES, CTCase, discover_ct
from data_pipelines.ct.volume import (
    AIR_HU,
    HU_PERCENTILES,
    SourceVolume,
    VolumeError,
    foreground_bbox,
    foreground_points,
    hu_stats,
    label_dtype,
    load_nifti,
    resample_image,
    resample_label,
    round_affine,
    shift_affine,
    spacing_of,
    to_int16_hu,
    to_ras,
    voxel_hash,
)
from data_pipelines.rs.labels import ClassTable, LabelError, load_class_table
from data_pipelines.store import (
    VOLUME_CODECS,
    delete_part_array,
    unique_part_names,
    volume_compressors,
    write_fragment,
    write_volume,
)

STORE_FORMAT_VERSION = 1
VOLUME_GROUP, LABEL_GROUP, FOREGROUND_GROUP = "volumes", "labels", "foreground"
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 20.0
MIN_CHUNK, MAX_CHUNK = 16, 256

_HU_COLUMNS = ["hu_min", "hu_max", "hu_mean"] + [
    f"hu_p{q:g}".replace(".", "_") for q in HU_PERCENTILES
]
MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("array", pa.string()),  # volumes/<part>
        ("label_array", pa.string()),  # labels/<part> or null
        ("foreground_array", pa.string()),  # foreground/<part>
        ("source", pa.string()),  # NIfTI file or DICOM series folder
        ("label_source", pa.string()),
        ("format", pa.string()),  # nifti | dicom
        ("patient_id", pa.string()),
        ("study_uid", pa.string()),
        ("series_uid", pa.string()),
        ("shape", pa.list_(pa.int32(), 3)),  # stored [X, Y, Z]
        ("spacing", pa.list_(pa.float64(), 3)),  # stored mm
        ("affine", pa.list_(pa.float64(), 16)),  # stored voxel -> RAS+ mm, row-major 4x4
        ("orig_shape", pa.list_(pa.int32(), 3)),
        ("orig_spacing", pa.list_(pa.float64(), 3)),
        ("orig_affine", pa.list_(pa.float64(), 16)),  # as read, before reorientation
        ("orig_orientation", pa.string()),  # e.g. LPS
        ("crop_offset", pa.list_(pa.int32(), 3)),  # of the stored grid in the resampled one
        *[(c, pa.float32()) for c in _HU_COLUMNS],
        ("hu_clipped", pa.int64()),  # voxels clipped to the int16 range
        ("label_ids", pa.list_(pa.int32())),
        ("foreground_points", pa.int32()),
        ("exact_hash", pa.string()),
        ("excluded", pa.string()),
        ("dup_of", pa.string()),
        ("split", pa.string()),
    ]
)


@dataclass
class CTBuildConfig:
    """Settings of a CT build (the CLI flags and the data YAML share these names)."""

    input: str | list[str]
    output: str
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    labels: str = "auto"  # the naming rule of ct.discover, or "none"
    labels_csv: str | None = None
    classes: str | None = None  # class table YAML: source ids remapped at build time
    crop_foreground: bool = False
    foreground_hu: float = -500.0  # body threshold for the crop and unlabelled crop centres
    crop_margin_mm: float = 10.0
    foreground_points: int = 1024
    chunk_size: int = 64
    codec: str = "lz4"
    compression_level: int = 5
    val_fraction: float = 0.05
    workers: int = 1
    scheduler: str = parallel.LOCAL
    strict: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.spacing, int | float):
            self.spacing = (float(self.spacing),) * 3
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]

    def validate(self) -> None:
        """Raise BuildConfigError naming the field and the fix; reads no input."""
        if len(self.spacing) != 3 or not all(
            MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in self.spacing
        ):
            raise BuildConfigError(
                f"--spacing: {list(self.spacing)} must be one value or three values in "
                f"[{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm, e.g. 1.5 or [0.8, 0.8, 1.5]"
            )
        if self.labels not in LABEL_MODES:
            raise BuildConfigError(
                f"--labels: {self.labels!r} is not one of {', '.join(LABEL_MODES)} "
                f"(use --labels-csv for a table of pairs)"
            )
        if self.labels_csv is not None and not Path(self.labels_csv).is_file():
            raise BuildConfigError(f"--labels-csv: {self.labels_csv} is not a file")
        if not (MIN_CHUNK <= self.chunk_size <= MAX_CHUNK):
            raise BuildConfigError(
                f"--chunk-size: {self.chunk_size} is outside [{MIN_CHUNK}, {MAX_CHUNK}]; "
                f"64 suits 96³ crops"
            )
        if self.codec not in VOLUME_CODECS:
            raise BuildConfigError(
                f"--codec: {self.codec!r} is not one of {', '.join(VOLUME_CODECS)}"
            )
        if not 0 <= self.compression_level <= 9:
            raise BuildConfigError(f"--compression-level: {self.compression_level} not in [0, 9]")
        if self.crop_margin_mm < 0:
            raise BuildConfigError(f"--crop-margin-mm: {self.crop_margin_mm} must be >= 0")
        if self.foreground_points < 0:
            raise BuildConfigError(f"--foreground-points: {self.foreground_points} must be >= 0")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise BuildConfigError(f"--val-fraction: {self.val_fraction} is not in [0, 1]")
        if self.workers < 1:
            raise BuildConfigError(f"--workers: must be at least 1 (got {self.workers})")
        if not self.output:
            raise BuildConfigError("--output: give the folder to write the dataset into")
        if self.classes is not None:
            try:
                load_class_table(self.classes)
            except LabelError as e:
                raise BuildConfigError(str(e)) from None

    def class_table(self) -> ClassTable | None:
        return load_class_table(self.classes) if self.classes else None

    def settings(self) -> dict[str, Any]:
        """The settings that shape the output; a resume must use the same ones."""
        return {
            "modality": "ct",
            "spacing": list(self.spacing),
            "labels": self.labels,
            "labels_csv": str(Path(self.labels_csv).resolve()) if self.labels_csv else None,
            "classes": self.class_table().to_attrs() if self.classes else None,
            "crop_foreground": self.crop_foreground,
            "foreground_hu": self.foreground_hu,
            "crop_margin_mm": self.crop_margin_mm,
            "foreground_points": self.foreground_points,
            "chunk_size": self.chunk_size,
            "codec": self.codec,
            "compression_level": self.compression_level,
            "store_format": STORE_FORMAT_VERSION,
        }


@dataclass(frozen=True)
class CaseJob:
    case: CTCase
    config: CTBuildConfig
    out_dir: str
    part: str


# -- the task ------------------------------------------------------------------------------------


def load_source(case: CTCase) -> SourceVolume:
    """The case's voxels (float32 HU, [X, Y, Z]) and affine, from NIfTI or a DICOM series."""
    if case.kind == "dicom":
        vol = read_series(case.files)
        return SourceVolume(data=vol.hu, affine=vol.affine)
    return load_nifti(case.source)


def load_label(path: str) -> SourceVolume:
    lab = load_nifti(path, is_label=True)
    data = lab.data
    if np.issubdtype(data.dtype, np.floating):
        if not np.array_equal(data, np.rint(data)):
            raise VolumeError(f"label map {Path(path).name} has non-integer values")
        data = data.astype(np.int64)
    return SourceVolume(data=data, affine=lab.affine)


def _case_seed(case_id: str) -> int:
    return int.from_bytes(hashlib.sha1(case_id.encode()).digest()[:8], "big")


def process_case(job: CaseJob) -> dict[str, Any]:
    """Build one case into its arrays and fragment; return counts and timings."""
    cfg, case = job.config, job.case
    t_start = time.perf_counter()
    try:
        src = load_source(case)
        t_read = time.perf_counter()
        from nibabel.orientations import aff2axcodes

        orig_orientation = "".join(aff2axcodes(src.affine))
        data, affine = to_ras(src.data, src.affine)
        affine = round_affine(affine)
        resampled, new_affine = resample_image(data, affine, cfg.spacing)
        del data
        hu, clipped = to_int16_hu(resampled)
        del resampled

        labels = None
        if case.label:
            lab = load_label(case.label)
            lab_data, lab_affine = to_ras(lab.data, lab.affine)
            had_labels = bool(lab_data.any())
            res = resample_label(lab_data, round_affine(lab_affine), new_affine, hu.shape)
            table = cfg.class_table()
            if table is not None:  # source ids -> class ids; unknown -> ignore_index
                res = table.remap(res)
            labels = res.astype(label_dtype(res))
            if had_labels and not labels.any():
                raise VolumeError(
                    f"label map {Path(case.label).name} does not overlap the image in world "
                    f"coordinates (check that it belongs to this scan)"
                )

        offset = (0, 0, 0)
        if cfg.crop_foreground:
            margin = tuple(math.ceil(cfg.crop_margin_mm / s) for s in cfg.spacing)
            box = foreground_bbox(hu, cfg.foreground_hu, margin)  # type: ignore[arg-type]
            if box is not None:
                sl = tuple(slice(lo, hi) for lo, hi in box)
                offset = tuple(lo for lo, _ in box)  # type: ignore[assignment]
                hu = np.ascontiguousarray(hu[sl])
                labels = np.ascontiguousarray(labels[sl]) if labels is not None else None
                new_affine = shift_affine(new_affine, offset)
        t_proc = time.perf_counter()

        points = foreground_points(
            hu, labels, cfg.foreground_hu, cfg.foreground_points, _case_seed(case.case_id)
        )
        stats = hu_stats(hu)
        digest = voxel_hash(hu)
        spacing = spacing_of(new_affine)
        attrs = {
            "case": case.case_id,
            "source": case.source,
            "spacing": list(spacing),
            "affine": new_affine.tolist(),
            "axes": "RAS voxel axes [X, Y, Z]",
            "units": "HU",
        }
        chunks = (cfg.chunk_size,) * 3
        compressors = volume_compressors(cfg.codec, cfg.compression_level)
        write_volume(job.out_dir, VOLUME_GROUP, job.part, hu, chunks, compressors, AIR_HU, attrs)
        if labels is not None:
            write_volume(
                job.out_dir, LABEL_GROUP, job.part, labels, chunks, compressors, 0,
                {"case": case.case_id, "source": case.label},
            )  # fmt: skip
        write_volume(
            job.out_dir,
            FOREGROUND_GROUP,
            job.part,
            points,
            (max(1, len(points)), 3),
            [],
            0,
            {"case": case.case_id, "from": "labels" if labels is not None else "body"},
        )
        t_write = time.perf_counter()

        row = {
            "id": case.case_id,
            "array": f"{VOLUME_GROUP}/{job.part}",
            "label_array": f"{LABEL_GROUP}/{job.part}" if labels is not None else None,
            "foreground_array": f"{FOREGROUND_GROUP}/{job.part}",
            "source": case.source,
            "label_source": case.label,
            "format": case.kind,
            "patient_id": case.patient_id or None,
            "study_uid": case.study_uid or None,
            "series_uid": case.series_uid or None,
            "shape": list(hu.shape),
            "spacing": list(spacing),
            "affine": new_affine.ravel().tolist(),
            "orig_shape": list(src.data.shape),
            "orig_spacing": list(src.spacing),
            "orig_affine": np.asarray(src.affine).ravel().tolist(),
            "orig_orientation": orig_orientation,
            "crop_offset": list(offset),
            **stats,
            "hu_clipped": clipped,
            "label_ids": (
                [int(v) for v in np.unique(labels) if v != 0] if labels is not None else None
            ),
            "foreground_points": len(points),
            "exact_hash": digest,
            "excluded": None,
            "dup_of": None,
            "split": None,
        }
        counts = {
            "volumes_read": 1,
            "samples_written": 1,
            "voxels_written": int(hu.size),
            f"format:{case.kind}": 1,
        }
        if labels is not None:
            counts["labels_written"] = 1
        if clipped:
            counts["volumes_with_clipped_hu"] = 1
        summary = {
            "counts": counts,
            "timings": {
                "read": t_read - t_start,
                "resample": t_proc - t_read,
                "write": t_write - t_proc,
                "total": time.perf_counter() - t_start,
            },
        }
        write_fragment(job.out_dir, job.part, [row], summary, schema=MANIFEST_SCHEMA)
        return summary
    except BaseException:
        for g in (VOLUME_GROUP, LABEL_GROUP, FOREGROUND_GROUP):
            delete_part_array(job.out_dir, g, job.part)
        raise


# -- archive-wide steps ----------------------------------------------------------------------------


def finalize_manifest(table: pa.Table, cfg: CTBuildConfig) -> pa.Table:
    """Sort by case, mark exact duplicates (first id of a hash group is kept), assign splits.

    A duplicate takes the split of the volume it duplicates, so the same scan (e.g. its NIfTI
    and its DICOM export) can never sit in both train and val.
    """
    if table.num_rows == 0:
        return MANIFEST_SCHEMA.empty_table()
    table = table.sort_by([("id", "ascending")])
    ids = table.column("id").to_pylist()
    hashes = table.column("exact_hash").to_pylist()
    patients = table.column("patient_id").to_pylist()
    first_of: dict[str, int] = {}
    dup_of: list[str | None] = []
    for i, h in enumerate(hashes):
        if h in first_of:
            dup_of.append(ids[first_of[h]])
        else:
            first_of[h] = i
            dup_of.append(None)
    splits: list[str] = []
    for i in range(len(ids)):
        orig = first_of[hashes[i]]
        key = f"patient:{patients[orig]}" if patients[orig] else f"case:{ids[orig]}"
        splits.append(assign_split(key, cfg.val_fraction))
    table = table.set_column(
        table.schema.get_field_index("dup_of"), "dup_of", pa.array(dup_of, pa.string())
    )
    return table.set_column(
        table.schema.get_field_index("split"), "split", pa.array(splits, pa.string())
    )


def _with_counts(manifest: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    dups = sum(1 for d in manifest.column("dup_of").to_pylist() if d)
    return manifest, {"duplicates:exact": dups}


# -- entry point -----------------------------------------------------------------------------------


def build_ct(cfg: CTBuildConfig) -> BuildReport:
    """Validate, discover, and run the build; config errors are raised before any work."""
    cfg.validate()
    discovery = discover_ct(cfg.input, labels=cfg.labels, labels_csv=cfg.labels_csv)
    out_dir = str(Path(cfg.output).resolve())
    parts = unique_part_names([c.case_id for c in discovery.cases])
    tasks = [
        BuildTask(part=part, source=case.source, payload=CaseJob(case, cfg, out_dir, part))
        for case, part in zip(discovery.cases, parts, strict=True)
    ]
    store_attrs = {
        "geomed_mim_store": STORE_FORMAT_VERSION,
        "modality": "ct",
        "units": "HU",
        "dtype": "int16",
        "spacing": list(cfg.spacing),
        "axes": "RAS voxel axes [X, Y, Z]",
        "default_window": [-175, 250],
        "chunk_size": cfg.chunk_size,
        "codec": cfg.codec,
    }
    table = cfg.class_table()
    if table is not None:
        store_attrs["classes"] = table.to_attrs()
    return run_build(
        out_dir=out_dir,
        tasks=tasks,
        task_fn=process_case,
        group=VOLUME_GROUP,
        extra_groups=(LABEL_GROUP, FOREGROUND_GROUP),
        store_attrs=store_attrs,
        settings=cfg.settings(),
        config=asdict(cfg),
        finalize=lambda _out, t, _summaries: _with_counts(finalize_manifest(t, cfg)),
        workers=min(cfg.workers, max(1, len(tasks))),
        scheduler=cfg.scheduler,
        overwrite=cfg.overwrite,
        ignored=discovery.ignored,
        unit="volume",
    )
