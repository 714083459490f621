"""Remote-sensing build: scenes -> tiles -> ``tiles/<part>`` arrays and manifest rows.

``build_rs`` plans one task per scene and hands them to the shared runner
(``data_pipelines.build``); the task is ``rs.scene_task.process_scene``. ``finalize_manifest``
runs the archive-wide steps once all parts exist: deduplication, splits, band statistics,
preview.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_pipelines.build import BuildReport, BuildTask, PartCommitted, assign_split, run_build
from data_pipelines.counts import DUPLICATES, EXACT, NEAR, SAMPLES_UNIQUE, BuildCounts, Count
from data_pipelines.dedup import mark_duplicates
from data_pipelines.errors import BuildConfigError
from data_pipelines.rs.config import RSBuildConfig
from data_pipelines.rs.discover import Scene, discover_scenes
from data_pipelines.rs.labels import match_label
from data_pipelines.rs.location_split import SPLIT_BY_SCENE, default_block, location_splits
from data_pipelines.rs.preview import write_preview
from data_pipelines.rs.profiles import SensorProfile, load_profile
from data_pipelines.rs.reader import open_scene_reader
from data_pipelines.rs.scene_task import SceneJob, process_scene
from data_pipelines.stats import BandMoments, percentiles_from_samples, stats_attrs
from data_pipelines.store.layout import (
    ATTR_BAND_STATS,
    ATTR_BANDS,
    ATTR_CALIBRATION,
    ATTR_CLASSES,
    ATTR_FORMAT,
    ATTR_MODALITY,
    ATTR_PROFILE,
    ATTR_STORE_SIZE,
    ATTR_TILE_SIZE,
    ATTR_TILE_SIZES,
    LABELS_GROUP,
    RS_INTERNAL_COLUMNS,
    RS_MANIFEST_SCHEMA,
    STORE_FORMAT_VERSION,
    TILES_GROUP,
    unique_part_names,
)
from data_pipelines.store.write import open_root, replace_column

# -- archive-wide steps ----------------------------------------------------------------------------


def merged_moments(table: pa.Table, use: np.ndarray, n_bands: int) -> BandMoments:
    """Merge the per-tile moments of the rows selected by ``use`` in one vectorized step
    (the closed form of Chan's pairwise update over many parts)."""
    if not use.any():
        return BandMoments.empty(n_bands)
    rows = table.filter(pa.array(use))

    def stack(col: str) -> np.ndarray:
        return np.asarray(rows.column(col).to_pylist(), dtype=np.float64).reshape(-1, n_bands)

    count, mean, m2 = stack("_band_count"), stack("band_mean"), stack("_band_m2")
    total = count.sum(axis=0)
    grand = (count * mean).sum(axis=0) / np.maximum(total, 1)
    m2_total = m2.sum(axis=0) + (count * (mean - grand) ** 2).sum(axis=0)
    return BandMoments(
        total, grand, m2_total, stack("_band_min").min(axis=0), stack("_band_max").max(axis=0)
    )


def mark_tile_duplicates(
    table: pa.Table, cfg: RSBuildConfig
) -> tuple[pa.Table, np.ndarray, BuildCounts]:
    """Fill ``dup_of``/``dup_kind`` (exact, then near duplicates among the kept tiles).

    Returns the table, the mask of kept unique tiles, and the duplicate counts.
    """
    ids = table.column("id").to_pylist()
    kept = pc.is_null(table.column("excluded")).to_numpy(zero_copy_only=False)
    if cfg.dedup:
        phash = table.column("phash").fill_null(0).to_numpy().astype(np.uint64)
        exact = table.column("exact_hash").to_pylist()
        dup_idx, dup_kind = mark_duplicates(exact, phash, kept, cfg.near_dup_radius)
    else:
        dup_idx, dup_kind = np.full(len(ids), -1), [None] * len(ids)
    table = replace_column(table, "dup_of", [ids[j] if j >= 0 else None for j in dup_idx])
    table = replace_column(table, "dup_kind", dup_kind)
    unique = kept & (dup_idx < 0)
    counts = BuildCounts(
        {
            Count(DUPLICATES, EXACT): int(sum(k == EXACT for k in dup_kind)),
            Count(DUPLICATES, NEAR): int(sum(k == NEAR for k in dup_kind)),
            Count(SAMPLES_UNIQUE): int(unique.sum()),
        }
    )
    return table, unique, counts


def record_band_stats(
    out_dir: Path,
    table: pa.Table,
    unique: np.ndarray,
    summaries: list[dict[str, Any]],
    cfg: RSBuildConfig,
    profile: SensorProfile,
) -> None:
    """Per-band statistics over the tiles training will see (kept, not duplicates), written to
    the store's ``band_stats`` attribute."""
    n_bands = len(profile.bands)
    moments = merged_moments(table, unique, n_bands)
    percentiles = percentiles_from_samples([s.get("band_sample", []) for s in summaries], n_bands)
    open_root(out_dir).attrs[ATTR_BAND_STATS] = stats_attrs(
        profile.band_names,
        moments,
        percentiles,
        values="TOA (calibrated)" if cfg.calibrate == "toa" else "raw",
        over="kept, non-duplicate tiles (percentiles: sampled from all kept tiles)",
    )


def split_tiles(table: pa.Table, cfg: RSBuildConfig) -> list[str]:
    """Each tile's split: by scene (tiles of one scene never straddle train and val) or by
    location (every date of a place on one side, :mod:`data_pipelines.rs.location_split`)."""
    if cfg.split_by == SPLIT_BY_SCENE:
        scene_ids = table.column("scene").to_pylist()
        splits = {s: assign_split(s, cfg.val_fraction) for s in set(scene_ids)}
        return [splits[s] for s in scene_ids]
    col = {name: table.column(name).to_pylist() for name in
           ("crs", "transform", "stored_size", "lon", "lat", "gsd")}  # fmt: skip
    lon = [math.nan if v is None else v for v in col["lon"]]
    lat = [math.nan if v is None else v for v in col["lat"]]
    gsd = [math.nan if v is None else v for v in col["gsd"]]
    block = cfg.split_block or default_block(gsd, col["stored_size"])
    return location_splits(col["crs"], col["transform"], col["stored_size"], lon, lat,
                           cfg.val_fraction, block, cfg.split_margin)  # fmt: skip


def finalize_manifest(
    out_dir: Path,
    table: pa.Table,
    summaries: list[dict[str, Any]],
    cfg: RSBuildConfig,
    profile: SensorProfile,
    scenes: dict[str, Scene] | None = None,
) -> tuple[pa.Table, BuildCounts]:
    """Dedup, split, store statistics and preview; returns the manifest and archive counts."""
    if table.num_rows == 0:
        table = RS_MANIFEST_SCHEMA.empty_table()
    table = table.sort_by(
        [("scene", "ascending"), ("native_size", "ascending"), ("row_off", "ascending"),
         ("col_off", "ascending")]
    )  # fmt: skip
    table, unique, counts = mark_tile_duplicates(table, cfg)
    table = replace_column(table, "split", split_tiles(table, cfg))
    record_band_stats(out_dir, table, unique, summaries, cfg, profile)
    manifest = table.drop_columns(list(RS_INTERNAL_COLUMNS))
    if cfg.preview and scenes is not None:
        write_preview(out_dir, manifest, profile, scenes, cfg)
    return manifest, counts


# -- entry point -----------------------------------------------------------------------------------


def store_attributes(profile: SensorProfile, cfg: RSBuildConfig) -> dict[str, Any]:
    table, sizes = cfg.class_table(), cfg.tile_sizes
    return {
        ATTR_CLASSES: table.to_attrs() if table else None,
        ATTR_FORMAT: STORE_FORMAT_VERSION,
        ATTR_MODALITY: "rs",
        ATTR_PROFILE: profile.to_attrs(),
        ATTR_BANDS: profile.band_names,
        # the stored edge when every tile has one (what a loader crops from), else None
        ATTR_TILE_SIZE: cfg.store_size or (sizes[0] if len(sizes) == 1 else None),
        ATTR_TILE_SIZES: sizes,
        ATTR_STORE_SIZE: cfg.store_size,
        ATTR_CALIBRATION: (
            {
                "mode": "toa",
                "kind": profile.calibration.get("kind", "none"),
                "store_dtype": cfg.store_dtype,
                "per_scene": "see the tiles/<part> attributes 'stored_values' and 'calibration'",
            }
            if cfg.calibrate == "toa"
            else {"mode": "none"}
        ),
    }


def plan_tasks(scenes: list[Scene], profile: SensorProfile, cfg: RSBuildConfig) -> list[BuildTask]:
    """One task per scene, with its part name and (for labeled builds) its label raster."""
    out_dir = str(Path(cfg.output).resolve())
    parts = unique_part_names([s.scene_id for s in scenes])
    tasks = []
    for scene, part in zip(scenes, parts, strict=True):
        label = None
        if cfg.labels:
            label = match_label(cfg.labels, [p for _, p in scene.files], scene.scene_id)
        tasks.append(
            BuildTask(
                part=part,
                source=scene.origin
                or (" ".join(scene.paths) if not scene.multi_file else scene.scene_id),
                payload=SceneJob(scene, profile, cfg, out_dir, part, label),
            )
        )
    return tasks


def check_tile_fits(scenes: list[Scene], profile: SensorProfile, cfg: RSBuildConfig) -> None:
    """BuildConfigError when ``--tile-size`` exceeds every scene (no tile could be cut).

    Scene sizes come from the headers, in order, until one scene fits (usually the first); a
    scene that cannot be opened is skipped here (its task quarantines it). Swath products are
    measured in swath geometry (a map-grid resampling reads the whole granule)."""
    sizes: list[tuple[int, int]] = []
    smallest = min(cfg.tile_sizes)
    for scene in scenes:
        try:
            with open_scene_reader(scene, profile, cfg.resampling) as reader:
                height, width = reader.grid.height, reader.grid.width
        except Exception:
            continue
        if min(height, width) >= smallest:
            return
        sizes.append((height, width))
    if sizes:
        h, w = max(sizes, key=min)
        raise BuildConfigError(
            f"--tile-size: {smallest} px is larger than every scene (the largest is "
            f"{h} x {w} px), so no tile can be cut; use --tile-size {min(h, w)} or less"
        )


def build_rs(cfg: RSBuildConfig, on_part_committed: PartCommitted | None = None) -> BuildReport:
    """Validate, discover, and run the build; config errors are raised before any work.
    ``on_part_committed`` as in :func:`~data_pipelines.build.run_build`."""
    cfg.validate()
    profile = load_profile(cfg.profile)
    discovery = discover_scenes(cfg.input, profile)
    check_tile_fits(discovery.scenes, profile, cfg)
    tasks = plan_tasks(discovery.scenes, profile, cfg)
    scenes = {s.scene_id: s for s in discovery.scenes}
    return run_build(
        out_dir=str(Path(cfg.output).resolve()),
        tasks=tasks,
        task_fn=process_scene,
        group=TILES_GROUP,
        store_attrs=store_attributes(profile, cfg),
        settings=cfg.settings(),
        config=asdict(cfg),
        finalize=lambda out, t, s: finalize_manifest(out, t, s, cfg, profile, scenes),
        workers=min(cfg.workers, max(1, len(tasks))),
        scheduler=cfg.scheduler,
        overwrite=cfg.overwrite,
        ignored=discovery.ignored,
        unit="scene",
        extra_groups=(LABELS_GROUP,) if cfg.labels else (),
        on_part_committed=on_part_committed,
    )
