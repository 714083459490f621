"""CT build: NIfTI files and DICOM series -> ``volumes/<case>`` (+ ``labels/``) and manifest rows.

``build_ct`` plans one task per case and hands them to the shared runner
(``data_pipelines.build``, the same lock / resume / quarantine / summary machinery as the RS
path); the task is ``ct.case_task.process_case``. ``finalize_manifest`` marks exact duplicates
(``data_pipelines.dedup``, the same hash and marking as RS tiles) and assigns the per-patient
split across the whole archive.

Store layout::

    store.zarr/volumes/<case>      [X, Y, Z] int16 HU, RAS voxel axes, chunks 64³
    store.zarr/labels/<case>       [X, Y, Z] uint8/uint16 on the same grid (when a label exists)
    store.zarr/foreground/<case>   [N, 3] int32 voxel coordinates, centres for biased crops
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from data_pipelines import parallel
from data_pipelines.build import BuildReport, BuildTask, PartCommitted, assign_split, run_build
from data_pipelines.counts import DUPLICATES, EXACT, BuildCounts, Count
from data_pipelines.ct.case_task import CaseJob, process_case
from data_pipelines.ct.config import CTBuildConfig
from data_pipelines.ct.discover import CTDiscovery, discover_ct
from data_pipelines.ct.preview import write_ct_preview
from data_pipelines.dedup import mark_exact_duplicates
from data_pipelines.store.layout import (
    ATTR_CLASSES,
    ATTR_FORMAT,
    ATTR_MODALITY,
    ATTR_SPACING,
    CT_MANIFEST_SCHEMA,
    FOREGROUND_GROUP,
    LABELS_GROUP,
    STORE_FORMAT_VERSION,
    VOLUMES_GROUP,
    unique_part_names,
)
from data_pipelines.store.write import replace_column

# -- archive-wide steps ----------------------------------------------------------------------------


def finalize_manifest(
    table: pa.Table, cfg: CTBuildConfig, splits: Mapping[str, str] | None = None
) -> pa.Table:
    """Sort by case, mark exact duplicates (first id of a hash group is kept), assign splits.

    A duplicate takes the split of the volume it duplicates, so the same scan (e.g. its NIfTI
    and its DICOM export) can never sit in both train and val. ``splits`` (case id -> split)
    is a split the archive itself defines; cases it names keep theirs, the others are hashed.
    """
    if table.num_rows == 0:
        return CT_MANIFEST_SCHEMA.empty_table()
    table = table.sort_by([("id", "ascending")])
    ids = table.column("id").to_pylist()
    patients = table.column("patient_id").to_pylist()
    dup_idx = mark_exact_duplicates(table.column("exact_hash").to_pylist())
    assigned: list[str] = []
    for i, j in enumerate(dup_idx):
        orig = i if j < 0 else int(j)
        key = f"patient:{patients[orig]}" if patients[orig] else f"case:{ids[orig]}"
        given = (splits or {}).get(ids[orig])
        assigned.append(given or assign_split(key, cfg.val_fraction))
    table = replace_column(table, "dup_of", [ids[j] if j >= 0 else None for j in dup_idx])
    return replace_column(table, "split", assigned)


def _with_counts(manifest: pa.Table) -> tuple[pa.Table, BuildCounts]:
    dups = sum(1 for d in manifest.column("dup_of").to_pylist() if d)
    return manifest, BuildCounts({Count(DUPLICATES, EXACT): dups})


def finalize_ct(
    out_dir: str, table: pa.Table, cfg: CTBuildConfig, splits: Mapping[str, str] | None = None
) -> tuple[pa.Table, BuildCounts]:
    """The archive-wide steps, then ``preview.png`` (mid-axial slices) of what was stored."""
    manifest = finalize_manifest(table, cfg, splits)
    write_ct_preview(out_dir, manifest)
    return _with_counts(manifest)


# -- entry point -----------------------------------------------------------------------------------


def store_attributes(cfg: CTBuildConfig) -> dict[str, Any]:
    attrs = {
        ATTR_FORMAT: STORE_FORMAT_VERSION,
        ATTR_MODALITY: "ct",
        "units": "HU",
        "dtype": "int16",
        ATTR_SPACING: list(cfg.spacing),
        "axes": "RAS voxel axes [X, Y, Z]",
        "default_window": [-175, 250],
        "chunk_size": cfg.chunk_size,
        "codec": cfg.codec,
    }
    table = cfg.class_table()
    if table is not None:
        attrs[ATTR_CLASSES] = table.to_attrs()
    return attrs


def build_ct(cfg: CTBuildConfig, on_part_committed: PartCommitted | None = None) -> BuildReport:
    """Validate, discover, and run the build; config errors are raised before any work.
    ``on_part_committed`` as in :func:`~data_pipelines.build.run_build`."""
    cfg.validate()
    # one cluster for both: DICOM headers are read on the workers that then build the volumes
    with parallel.session(cfg.scheduler, cfg.workers):
        discovery = discover_ct(
            cfg.input, cfg.labels, cfg.labels_csv, scheduler=cfg.scheduler, workers=cfg.workers
        )
        return run_ct_tasks(cfg, discovery, on_part_committed)


def run_ct_tasks(
    cfg: CTBuildConfig,
    discovery: CTDiscovery,
    on_part_committed: PartCommitted | None = None,
    splits: Mapping[str, str] | None = None,
) -> BuildReport:
    """Build the discovered cases; ``splits`` (case id -> ``"train"``/``"val"``) fixes the
    split of the cases it names (:func:`finalize_manifest`)."""
    out_dir = str(Path(cfg.output).resolve())
    parts = unique_part_names([c.case_id for c in discovery.cases])
    tasks = [
        BuildTask(part=part, source=case.source, payload=CaseJob(case, cfg, out_dir, part))
        for case, part in zip(discovery.cases, parts, strict=True)
    ]
    return run_build(
        out_dir=out_dir,
        tasks=tasks,
        task_fn=process_case,
        group=VOLUMES_GROUP,
        extra_groups=(LABELS_GROUP, FOREGROUND_GROUP),
        store_attrs=store_attributes(cfg),
        settings=cfg.settings(),
        config=asdict(cfg),
        finalize=lambda out, t, _summaries: finalize_ct(out, t, cfg, splits),
        workers=min(cfg.workers, max(1, len(tasks))),
        scheduler=cfg.scheduler,
        overwrite=cfg.overwrite,
        ignored=discovery.ignored,
        unit="volume",
        on_part_committed=on_part_committed,
    )
