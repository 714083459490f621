"""The CT build task: one case in, ``volumes/<case>`` (+ ``labels/``, ``foreground/``) and its
fragment out.

:func:`process_case` runs these stages:

1. :func:`load_source`: the voxels and affine from NIfTI or a DICOM series;
2. :func:`to_stored_grid`: orient to RAS, resample to the target spacing, int16 HU;
3. :func:`label_on_grid`: the label map resampled onto that grid (nearest), remapped through
   the class table;
4. :func:`crop_to_foreground`: optionally, the body plus a margin;
5. :func:`write_case_arrays`: the volume, the labels and the foreground points;
6. :func:`case_row`: the manifest row (geometry before and after, HU statistics, exact hash).

The fragment is written last: it is the part's commit record. On any error the case's arrays
are removed before re-raising.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.counts import (
    FORMAT,
    LABELS_WRITTEN,
    SAMPLES_WRITTEN,
    VOLUMES_GANTRY_TILT_CORRECTED,
    VOLUMES_READ,
    VOLUMES_UNEVEN_SLICES_RESAMPLED,
    VOLUMES_WITH_CLIPPED_HU,
    VOXELS_WRITTEN,
    BuildCounts,
    Count,
)
from data_pipelines.ct.config import CTBuildConfig
from data_pipelines.ct.dicom import read_series
from data_pipelines.ct.discover import CTCase
from data_pipelines.ct.volume import (
    AIR_HU,
    SourceVolume,
    VolumeError,
    float32_geometry,
    foreground_bbox,
    foreground_points,
    hu_stats,
    label_dtype,
    load_nifti,
    resample_label,
    shift_affine,
    spacing_of,
    stored_grid,
    to_int16_hu,
    to_ras,
)
from data_pipelines.dedup import exact_hash
from data_pipelines.store.layout import (
    CT_MANIFEST_SCHEMA,
    FOREGROUND_GROUP,
    LABELS_GROUP,
    VOLUMES_GROUP,
    array_path,
)
from data_pipelines.store.write import (
    delete_part_array,
    volume_compressors,
    write_fragment,
    write_volume,
)


@dataclass(frozen=True)
class CaseJob:
    case: CTCase
    config: CTBuildConfig
    out_dir: str
    part: str


@dataclass
class StoredCase:
    """A case on its stored grid."""

    hu: np.ndarray  # [X, Y, Z] int16 HU
    affine: np.ndarray  # [4, 4] stored voxel -> RAS+ mm
    clipped: int  # voxels clipped to the int16 range
    labels: np.ndarray | None = None  # [X, Y, Z] class ids on the same grid
    crop_offset: tuple[int, int, int] = (0, 0, 0)


# -- the stages ----------------------------------------------------------------------------------


def load_source(case: CTCase) -> SourceVolume:
    """Stage 1: the case's voxels (float32 HU, [X, Y, Z]) and affine, from NIfTI or DICOM."""
    if case.kind == "dicom":
        vol = read_series(case.files)
        return SourceVolume(
            vol.hu, vol.affine, vol.gantry_tilt_deg, vol.slice_steps, vol.uneven_spacing
        )
    return load_nifti(case.source)


def load_label(path: str) -> SourceVolume:
    lab = load_nifti(path, is_label=True)
    data = lab.data
    if np.issubdtype(data.dtype, np.floating):
        if not np.array_equal(data, np.rint(data)):
            raise VolumeError(f"label map {Path(path).name} has non-integer values")
        data = data.astype(np.int64)
    return SourceVolume(data=data, affine=lab.affine)


def to_stored_grid(src: SourceVolume, spacing: tuple[float, float, float]) -> StoredCase:
    """Stage 2: RAS orientation, resampling to ``spacing``, int16 HU (clipped, never wrapped)."""
    resampled, new_affine = stored_grid(src.data, src.affine, spacing)
    hu, clipped = to_int16_hu(resampled)
    return StoredCase(hu=hu, affine=new_affine, clipped=clipped)


def label_on_grid(label_path: str, stored: StoredCase, cfg: CTBuildConfig) -> np.ndarray:
    """Stage 3: the label map on the stored grid (nearest neighbour through world coordinates),
    source ids remapped to class ids when the build has a class table."""
    lab = load_label(label_path)
    lab_data, lab_affine = to_ras(lab.data, float32_geometry(lab.affine))
    had_labels = bool(lab_data.any())
    res = resample_label(lab_data, lab_affine, stored.affine, stored.hu.shape)
    table = cfg.class_table()
    # source ids -> stored class ids; anything else -> the stored ignore index
    labels = table.remap(res) if table is not None else res.astype(label_dtype(res))
    if had_labels and not labels.any():
        raise VolumeError(
            f"label map {Path(label_path).name} does not overlap the image in world "
            f"coordinates (check that it belongs to this scan)"
        )
    return labels


def crop_to_foreground(stored: StoredCase, cfg: CTBuildConfig) -> None:
    """Stage 4: keep the body (HU above the threshold) plus the margin; shifts the affine."""
    margin = tuple(math.ceil(cfg.crop_margin_mm / s) for s in cfg.spacing)
    box = foreground_bbox(stored.hu, cfg.foreground_hu, margin)  # type: ignore[arg-type]
    if box is None:
        return
    sl = tuple(slice(lo, hi) for lo, hi in box)
    stored.crop_offset = tuple(lo for lo, _ in box)  # type: ignore[assignment]
    stored.hu = np.ascontiguousarray(stored.hu[sl])
    if stored.labels is not None:
        stored.labels = np.ascontiguousarray(stored.labels[sl])
    stored.affine = shift_affine(stored.affine, stored.crop_offset)


def _case_seed(case_id: str) -> int:
    return int.from_bytes(hashlib.sha1(case_id.encode()).digest()[:8], "big")


def write_case_arrays(job: CaseJob, stored: StoredCase, points: np.ndarray) -> None:
    """Stage 5: ``volumes/<part>``, ``labels/<part>`` (when labeled) and ``foreground/<part>``."""
    cfg, case = job.config, job.case
    chunks = (cfg.chunk_size,) * 3
    compressors = volume_compressors(cfg.codec, cfg.compression_level)
    attrs = {
        "case": case.case_id,
        "source": case.source,
        "spacing": list(spacing_of(stored.affine)),
        "affine": stored.affine.tolist(),
        "axes": "RAS voxel axes [X, Y, Z]",
        "units": "HU",
    }
    write_volume(
        job.out_dir, VOLUMES_GROUP, job.part, stored.hu, chunks, compressors, AIR_HU, attrs
    )
    if stored.labels is not None:
        write_volume(
            job.out_dir,
            LABELS_GROUP,
            job.part,
            stored.labels,
            chunks,
            compressors,
            0,
            {"case": case.case_id, "source": case.label},
        )
    from_what = "labels" if stored.labels is not None else "body"
    write_volume(
        job.out_dir,
        FOREGROUND_GROUP,
        job.part,
        points,
        (max(1, len(points)), 3),
        [],
        0,
        {"case": case.case_id, "from": from_what},
    )


def case_row(
    job: CaseJob, src: SourceVolume, stored: StoredCase, points: np.ndarray
) -> dict[str, Any]:
    """Stage 6: the case's manifest row; duplicates and splits are filled in archive-wide."""
    from nibabel.orientations import aff2axcodes

    case, labels = job.case, stored.labels
    return {
        "id": case.case_id,
        "array": array_path(VOLUMES_GROUP, job.part),
        "label_array": array_path(LABELS_GROUP, job.part) if labels is not None else None,
        "foreground_array": array_path(FOREGROUND_GROUP, job.part),
        "source": case.source,
        "label_source": case.label,
        "format": case.kind,
        "patient_id": case.patient_id or None,
        "study_uid": case.study_uid or None,
        "series_uid": case.series_uid or None,
        "shape": list(stored.hu.shape),
        "spacing": list(spacing_of(stored.affine)),
        "affine": stored.affine.ravel().tolist(),
        "orig_shape": list(src.data.shape),
        "orig_spacing": list(src.spacing),
        "orig_affine": np.asarray(src.affine).ravel().tolist(),
        "orig_orientation": "".join(aff2axcodes(src.affine)),
        "gantry_tilt_deg": src.gantry_tilt_deg,
        "slice_steps": list(src.slice_steps) if src.slice_steps else None,
        "crop_offset": list(stored.crop_offset),
        **hu_stats(stored.hu),
        "hu_clipped": stored.clipped,
        "label_ids": [int(v) for v in np.unique(labels) if v != 0] if labels is not None else None,
        "foreground_points": len(points),
        "exact_hash": exact_hash(stored.hu),
        "excluded": None,
        "dup_of": None,
        "split": None,
    }


def case_counts(case: CTCase, src: SourceVolume, stored: StoredCase) -> BuildCounts:
    counts = BuildCounts(
        {
            Count(VOLUMES_READ): 1,
            Count(SAMPLES_WRITTEN): 1,
            Count(VOXELS_WRITTEN): int(stored.hu.size),
            Count(FORMAT, case.kind): 1,
        }
    )
    if stored.labels is not None:
        counts[Count(LABELS_WRITTEN)] = 1
    if stored.clipped:
        counts[Count(VOLUMES_WITH_CLIPPED_HU)] = 1
    if src.gantry_tilt_deg:
        counts[Count(VOLUMES_GANTRY_TILT_CORRECTED)] = 1
    if src.uneven_spacing:
        counts[Count(VOLUMES_UNEVEN_SLICES_RESAMPLED)] = 1
    return counts


# -- the task ------------------------------------------------------------------------------------


def process_case(job: CaseJob) -> dict[str, Any]:
    """Build one case into its arrays and fragment; return counts and timings."""
    cfg, case = job.config, job.case
    t_start = time.perf_counter()
    try:
        src = load_source(case)
        t_read = time.perf_counter()
        stored = to_stored_grid(src, cfg.spacing)
        if case.label:
            stored.labels = label_on_grid(case.label, stored, cfg)
        if cfg.crop_foreground:
            crop_to_foreground(stored, cfg)
        t_proc = time.perf_counter()
        points = foreground_points(
            stored.hu,
            stored.labels,
            cfg.foreground_hu,
            cfg.foreground_points,
            _case_seed(case.case_id),
        )
        row = case_row(job, src, stored, points)
        write_case_arrays(job, stored, points)
        t_write = time.perf_counter()
        counts = case_counts(case, src, stored)
        timings = {
            "read": t_read - t_start,
            "resample": t_proc - t_read,
            "write": t_write - t_proc,
            "total": time.perf_counter() - t_start,
        }
        summary = {"counts": counts.to_json(), "timings": timings}  # the flat JSON form
        write_fragment(job.out_dir, job.part, [row], summary, schema=CT_MANIFEST_SCHEMA)
        return {"counts": counts, "timings": timings}
    except BaseException:
        for group in (VOLUMES_GROUP, LABELS_GROUP, FOREGROUND_GROUP):
            delete_part_array(job.out_dir, group, job.part)
        raise
