"""Remote-sensing build: scenes -> tiles -> ``tiles/<part>`` arrays and manifest rows.

``build_rs`` plans one task per scene and hands them to the shared runner
(``data_pipelines.build``). ``process_scene`` is the task: it reads the scene strip by strip,
cuts tiles (``rs.tiling``), measures and excludes (``rs.exclusion``), hashes for dedup,
calibrates to TOA units (``rs.toa``) and writes its part. ``finalize_manifest`` runs the
archive-wide steps once all parts exist: deduplication, splits, band statistics, preview.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from data_pipelines import parallel
from data_pipelines.build import (
    BuildConfigError,
    BuildReport,
    BuildTask,
    assign_split,
    run_build,
)
from data_pipelines.dedup import MAX_EXACT_RADIUS, exact_hash, mark_duplicates, perceptual_hashes
from data_pipelines.rs.discover import Scene, discover_scenes
from data_pipelines.rs.exclusion import ExclusionRules, exclusion_reason, measure_batch
from data_pipelines.rs.labels import (
    ClassTable,
    LabelError,
    LabelReader,
    check_labels_spec,
    load_class_table,
    match_label,
)
from data_pipelines.rs.profiles import SensorProfile, load_profile
from data_pipelines.rs.reader import SceneError, SceneReader
from data_pipelines.rs.tiling import tile_grid
from data_pipelines.rs.toa import CALIBRATE_CHOICES, make_calibrator
from data_pipelines.stats import (
    BandMoments,
    BandSample,
    percentiles_from_samples,
    stats_attrs,
    tile_moments,
)
from data_pipelines.store import (
    PartWriter,
    delete_part_array,
    open_root,
    unique_part_names,
    write_fragment,
)

STORE_FORMAT_VERSION = 1
MIN_TILE, MAX_TILE = 8, 8192
RESAMPLING_CHOICES = ("nearest", "bilinear", "cubic", "average")
DEFAULT_NEAR_DUP_RADIUS = 4  # chosen by measurement, see docs/benchmarks.md
TILE_BATCH = 16  # tiles measured/hashed/calibrated together: vectorized, yet bounded memory

_F64_LIST = pa.list_(pa.float64())
MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("scene", pa.string()),
        ("source", pa.string()),
        ("array", pa.string()),
        ("index", pa.int64()),
        ("row_off", pa.int32()),
        ("col_off", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("crs", pa.string()),
        ("transform", pa.list_(pa.float64(), 6)),
        ("nodata_fraction", pa.float32()),
        ("out_of_range_fraction", pa.float32()),
        ("saturated_fraction", pa.float32()),
        ("cloud_fraction", pa.float32()),
        ("max_band_std", pa.float32()),
        ("excluded", pa.string()),
        ("exact_hash", pa.string()),
        ("phash", pa.uint64()),
        ("dup_of", pa.string()),
        ("dup_kind", pa.string()),
        ("split", pa.string()),
        ("label_array", pa.string()),
        ("labeled_fraction", pa.float32()),
        ("band_mean", _F64_LIST),
        ("band_std", _F64_LIST),
        # per-tile moments for the archive-wide merge; dropped from the final manifest
        ("_band_count", _F64_LIST),
        ("_band_m2", _F64_LIST),
        ("_band_min", _F64_LIST),
        ("_band_max", _F64_LIST),
    ]
)
INTERNAL_COLUMNS = ("_band_count", "_band_m2", "_band_min", "_band_max")


@dataclass
class RSBuildConfig:
    """Settings of a remote-sensing build (the CLI flags and the data YAML share these names)."""

    input: str | list[str]
    output: str
    profile: str = "sentinel2_l1c"
    tile_size: int = 64
    stride: int | None = None
    cover_edges: bool = True
    resampling: str = "bilinear"
    calibrate: str = "toa"
    max_nodata_fraction: float = 0.5
    max_out_of_range_fraction: float = 0.05
    max_saturated_fraction: float = 0.05
    max_cloud_fraction: float = 0.5
    min_band_std: float | None = None
    labels: str | None = None
    classes: str | None = None
    dedup: bool = True
    near_dup_radius: int = DEFAULT_NEAR_DUP_RADIUS
    val_fraction: float = 0.05
    preview: bool = True
    workers: int = 1
    scheduler: str = parallel.LOCAL
    strict: bool = False
    overwrite: bool = False
    compression_level: int = 5

    def validate(self) -> None:
        """Raise BuildConfigError naming the field and the fix; reads no input."""
        if not (MIN_TILE <= self.tile_size <= MAX_TILE):
            raise BuildConfigError(
                f"--tile-size: {self.tile_size} is outside [{MIN_TILE}, {MAX_TILE}]; "
                f"use e.g. 64, 128 or 256"
            )
        stride = self.stride if self.stride is not None else self.tile_size
        if not (1 <= stride <= self.tile_size * 4):
            raise BuildConfigError(
                f"--stride: {stride} must be between 1 and 4x the tile size "
                f"({self.tile_size * 4}); a stride below the tile size gives overlapping tiles"
            )
        if self.workers < 1:
            raise BuildConfigError(f"--workers: must be at least 1 (got {self.workers})")
        if self.resampling not in RESAMPLING_CHOICES:
            raise BuildConfigError(
                f"--resampling: {self.resampling!r} is not one of {', '.join(RESAMPLING_CHOICES)}"
            )
        if self.calibrate not in CALIBRATE_CHOICES:
            raise BuildConfigError(
                f"--calibrate: {self.calibrate!r} is not one of {', '.join(CALIBRATE_CHOICES)}"
            )
        for name in (
            "max_nodata_fraction",
            "max_out_of_range_fraction",
            "max_saturated_fraction",
            "max_cloud_fraction",
            "val_fraction",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise BuildConfigError(f"--{name.replace('_', '-')}: {v} is not in [0, 1]")
        if not 0 <= self.near_dup_radius <= MAX_EXACT_RADIUS:
            raise BuildConfigError(
                f"--near-dup-radius: {self.near_dup_radius} is not in [0, {MAX_EXACT_RADIUS}] "
                f"(bits of a 64-bit perceptual hash)"
            )
        if not 0 <= self.compression_level <= 9:
            raise BuildConfigError(f"--compression-level: {self.compression_level} not in [0, 9]")
        if not self.output:
            raise BuildConfigError("--output: give the folder to write the dataset into")
        if self.labels is not None:
            try:
                check_labels_spec(self.labels)
            except LabelError as e:
                raise BuildConfigError(str(e)) from None
            if self.classes is None:
                raise BuildConfigError(
                    "--classes: --labels needs a class table (YAML with ignore_index and "
                    "classes: [{id, name}]), e.g. configs/data/classes/eolearn_lulc.yaml"
                )
            try:
                load_class_table(self.classes)
            except LabelError as e:
                raise BuildConfigError(str(e)) from None

    def class_table(self) -> ClassTable | None:
        return load_class_table(self.classes) if self.labels and self.classes else None

    def rules(self) -> ExclusionRules:
        return ExclusionRules(
            max_nodata_fraction=self.max_nodata_fraction,
            max_out_of_range_fraction=self.max_out_of_range_fraction,
            max_saturated_fraction=self.max_saturated_fraction,
            max_cloud_fraction=self.max_cloud_fraction,
            min_band_std=self.min_band_std,
        )

    def settings(self) -> dict[str, Any]:
        """The settings that shape the parts; a resume must use the same ones."""
        return {
            "modality": "rs",
            "profile": self.profile,
            "tile_size": self.tile_size,
            "stride": self.stride or self.tile_size,
            "cover_edges": self.cover_edges,
            "resampling": self.resampling,
            "calibrate": self.calibrate,
            "exclusion": asdict(self.rules()),
            "labels": str(Path(self.labels).resolve()) if self.labels else None,
            "classes": self.class_table().to_attrs() if self.labels else None,
            "store_format": STORE_FORMAT_VERSION,
        }


@dataclass(frozen=True)
class SceneJob:
    scene: Scene
    profile: SensorProfile
    config: RSBuildConfig
    out_dir: str
    part: str
    label_path: str | None = None


def label_dtype(table: ClassTable) -> np.dtype:
    return np.dtype(np.uint8 if max(*table.ids, table.ignore_index) < 256 else np.uint16)


# -- the task ------------------------------------------------------------------------------------


def _list(a: np.ndarray) -> list[float]:
    return [float(v) for v in a]


def process_scene(job: SceneJob) -> dict[str, Any]:
    """Read one scene, write ``tiles/<part>`` and its fragment; return counts and timings."""
    cfg, profile, scene = job.config, job.profile, job.scene
    rules = cfg.rules()
    t_start = time.perf_counter()
    read_s = write_s = 0.0
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {"scenes_read": 1, "tiles_total": 0, "samples_written": 0}
    source = scene.files[0][1] if not scene.multi_file else str(Path(scene.files[0][1]).parent)
    sample = BandSample(len(profile.bands))
    try:
        with ExitStack() as stack:
            reader = stack.enter_context(SceneReader(scene, profile, cfg.resampling))
            grid = reader.grid
            assert grid is not None
            assert reader.dtype is not None
            calibrator = make_calibrator(
                profile, cfg.calibrate, reader.tags(), scene.metadata_files
            )
            T = cfg.tile_size
            rows_of_windows = tile_grid(grid.height, grid.width, T, cfg.stride, cfg.cover_edges)
            if not rows_of_windows:
                counts["scenes_smaller_than_tile"] = 1
            store_dtype = np.dtype(calibrator.out_dtype) if calibrator else reader.dtype
            table = cfg.class_table()
            labels = label_writer = None
            if table is not None:
                if job.label_path is None:
                    raise SceneError(
                        f"no label raster for this scene in --labels {cfg.labels} (looked for "
                        f"<name>.tif, <name>_label.tif, <name>_labels.tif, <name>_mask.tif)"
                    )
                labels = stack.enter_context(
                    closing(
                        LabelReader(
                            job.label_path,
                            grid.crs,
                            grid.transform,
                            grid.height,
                            grid.width,
                            fill=table.ignore_index,
                        )
                    )
                )
                label_writer = PartWriter(
                    job.out_dir,
                    "labels",
                    job.part,
                    (T, T),
                    label_dtype(table),
                    attrs={
                        "scene": scene.scene_id,
                        "label_source": job.label_path,
                        "classes": table.to_attrs(),
                    },
                )
            writer = PartWriter(
                job.out_dir,
                "tiles",
                job.part,
                (len(profile.bands), T, T),
                store_dtype,
                attrs={
                    "scene": scene.scene_id,
                    "source": source,
                    "bands": profile.band_names,
                    "crs": grid.crs,
                    "calibration": calibrator.describe() if calibrator else None,
                },
                compression_level=cfg.compression_level,
            )
            for windows in rows_of_windows:
                t0 = time.perf_counter()
                strip_window = Window(0, windows[0].row_off, grid.width, T)
                strip = reader.read_window(strip_window)  # [C, T, W]
                qa_strip = reader.read_qa(strip_window)  # [T, W] or None
                label_strip = None
                if labels is not None:
                    label_strip = labels.read(strip_window)  # [T, W]
                    known = np.isin(label_strip, np.asarray(table.ids))
                    label_strip = np.where(known, label_strip, table.ignore_index).astype(
                        label_dtype(table)
                    )
                read_s += time.perf_counter() - t0
                # tiles of the strip in batches: vectorized, with memory bounded by the batch
                for start in range(0, len(windows), TILE_BATCH):
                    batch = windows[start : start + TILE_BATCH]
                    raw = np.stack([strip[:, :, w.col_off : w.col_off + T] for w in batch])
                    qa = None
                    if qa_strip is not None:
                        qa = np.stack([qa_strip[:, w.col_off : w.col_off + T] for w in batch])
                    qualities = measure_batch(raw, profile, qa)
                    reasons = [exclusion_reason(q, rules, profile) for q in qualities]
                    keep = np.array([r is None for r in reasons])
                    counts["tiles_total"] += len(batch)
                    if keep.any():
                        kept_raw = raw[keep]
                        stored = calibrator.apply(kept_raw) if calibrator else kept_raw
                        phashes = perceptual_hashes(kept_raw, profile.nodata)
                        count, mean, m2, minimum, maximum = tile_moments(stored)
                        sample.add_tiles(stored)
                    k = 0  # position among the kept tiles of this strip
                    for w, quality, reason in zip(batch, qualities, reasons, strict=True):
                        row: dict[str, Any] = {
                            "id": f"{scene.scene_id}/r{w.row_off}_c{w.col_off}",
                            "scene": scene.scene_id,
                            "source": source,
                            "array": "",
                            "index": -1,
                            "row_off": w.row_off,
                            "col_off": w.col_off,
                            "height": T,
                            "width": T,
                            "crs": grid.crs,
                            "transform": list(
                                window_transform(Window(w.col_off, w.row_off, T, T), grid.transform)
                            )[:6],
                            **quality.as_row(),
                            "excluded": reason,
                        }
                        if reason is None:
                            row.update(
                                exact_hash=exact_hash(kept_raw[k]),
                                phash=int(phashes[k]),
                                band_mean=_list(mean[k]),
                                band_std=_list(np.sqrt(m2[k] / np.maximum(count[k], 1))),
                                _band_count=_list(count[k]),
                                _band_m2=_list(m2[k]),
                                _band_min=_list(minimum[k]),
                                _band_max=_list(maximum[k]),
                            )
                            t0 = time.perf_counter()
                            row["index"] = writer.append(stored[k])
                            write_s += time.perf_counter() - t0
                            row["array"] = f"tiles/{job.part}"
                            if label_strip is not None:
                                label_tile = label_strip[:, w.col_off : w.col_off + T]
                                label_writer.append(np.ascontiguousarray(label_tile))
                                row["label_array"] = f"labels/{job.part}"
                                row["labeled_fraction"] = float(
                                    (label_tile != table.ignore_index).mean()
                                )
                            counts["samples_written"] += 1
                            k += 1
                        else:
                            counts[f"excluded:{reason}"] = counts.get(f"excluded:{reason}", 0) + 1
                        rows.append(row)
            t0 = time.perf_counter()
            writer.close()
            if label_writer is not None:
                label_writer.close()
            write_s += time.perf_counter() - t0
        summary = {
            "counts": counts,
            "timings": {"read": read_s, "write": write_s, "total": time.perf_counter() - t_start},
            "band_sample": sample.finish(),
        }
        write_fragment(job.out_dir, job.part, rows, summary, schema=MANIFEST_SCHEMA)
        return {"counts": counts, "timings": summary["timings"]}
    except BaseException:
        delete_part_array(job.out_dir, "tiles", job.part)
        delete_part_array(job.out_dir, "labels", job.part)
        raise


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


def finalize_manifest(
    out_dir: Path,
    table: pa.Table,
    summaries: list[dict[str, Any]],
    cfg: RSBuildConfig,
    profile: SensorProfile,
    scenes: dict[str, Scene] | None = None,
) -> tuple[pa.Table, dict[str, int]]:
    """Dedup, split, store statistics and preview; returns the manifest and archive counts."""
    if table.num_rows == 0:
        table = MANIFEST_SCHEMA.empty_table()
    table = table.sort_by(
        [("scene", "ascending"), ("row_off", "ascending"), ("col_off", "ascending")]
    )
    ids = table.column("id").to_pylist()
    kept = pc.is_null(table.column("excluded")).to_numpy(zero_copy_only=False)
    phash = table.column("phash").fill_null(0).to_numpy().astype(np.uint64)
    radius = cfg.near_dup_radius if cfg.dedup else None
    if cfg.dedup:
        dup_idx, dup_kind = mark_duplicates(
            table.column("exact_hash").to_pylist(), phash, kept, radius
        )
    else:
        dup_idx, dup_kind = np.full(len(ids), -1), [None] * len(ids)
    dup_of = [ids[j] if j >= 0 else None for j in dup_idx]
    table = table.set_column(
        table.schema.get_field_index("dup_of"), "dup_of", pa.array(dup_of, pa.string())
    )
    table = table.set_column(
        table.schema.get_field_index("dup_kind"), "dup_kind", pa.array(dup_kind, pa.string())
    )
    scenes_col = table.column("scene").to_pylist()
    # per scene: tiles of one scene never straddle train and val
    splits = {s: assign_split(s, cfg.val_fraction) for s in set(scenes_col)}
    table = table.set_column(
        table.schema.get_field_index("split"),
        "split",
        pa.array([splits[s] for s in scenes_col], pa.string()),
    )
    counts = {
        "duplicates:exact": int(sum(k == "exact" for k in dup_kind)),
        "duplicates:near": int(sum(k == "near" for k in dup_kind)),
        "samples_unique": int((kept & (dup_idx < 0)).sum()),
    }

    # statistics over the tiles training will see: kept and not duplicates
    unique = kept & (dup_idx < 0)
    moments = merged_moments(table, unique, len(profile.bands))
    percentiles = percentiles_from_samples(
        [s.get("band_sample", []) for s in summaries], len(profile.bands)
    )
    root = open_root(out_dir)
    root.attrs["band_stats"] = stats_attrs(
        profile.band_names,
        moments,
        percentiles,
        values="TOA (calibrated)" if cfg.calibrate == "toa" else "raw",
        over="kept, non-duplicate tiles (percentiles: sampled from all kept tiles)",
    )
    manifest = table.drop_columns(list(INTERNAL_COLUMNS))
    if cfg.preview and scenes is not None:
        from data_pipelines.rs.preview import write_preview

        write_preview(out_dir, manifest, profile, scenes, cfg)
    return manifest, counts


# -- entry point -----------------------------------------------------------------------------------


def store_attributes(profile: SensorProfile, cfg: RSBuildConfig) -> dict[str, Any]:
    table = cfg.class_table()
    return {
        "classes": table.to_attrs() if table else None,
        "geomed_mim_store": STORE_FORMAT_VERSION,
        "modality": "rs",
        "profile": profile.to_attrs(),
        "bands": profile.band_names,
        "tile_size": cfg.tile_size,
        "calibration": (
            {
                "mode": "toa",
                "kind": profile.calibration.get("kind", "none"),
                "per_scene": "see tiles/<part> attribute 'calibration'",
            }
            if cfg.calibrate == "toa"
            else {"mode": "none"}
        ),
    }


def build_rs(cfg: RSBuildConfig) -> BuildReport:
    """Validate, discover, and run the build; config errors are raised before any work."""
    cfg.validate()
    profile = load_profile(cfg.profile)
    discovery = discover_scenes(cfg.input, profile)
    out_dir = str(Path(cfg.output).resolve())
    parts = unique_part_names([s.scene_id for s in discovery.scenes])
    tasks = [
        BuildTask(
            part=part,
            source=" ".join(scene.paths) if not scene.multi_file else scene.scene_id,
            payload=SceneJob(
                scene,
                profile,
                cfg,
                out_dir,
                part,
                match_label(cfg.labels, [p for _, p in scene.files], scene.scene_id)
                if cfg.labels
                else None,
            ),
        )
        for scene, part in zip(discovery.scenes, parts, strict=True)
    ]
    scenes = {s.scene_id: s for s in discovery.scenes}
    return run_build(
        out_dir=out_dir,
        tasks=tasks,
        task_fn=process_scene,
        group="tiles",
        store_attrs=store_attributes(profile, cfg),
        settings=cfg.settings(),
        config=asdict(cfg),
        finalize=lambda out, t, s: finalize_manifest(out, t, s, cfg, profile, scenes),
        workers=min(cfg.workers, max(1, len(tasks))),
        scheduler=cfg.scheduler,
        overwrite=cfg.overwrite,
        ignored=discovery.ignored,
        unit="scene",
        extra_groups=("labels",) if cfg.labels else (),
    )
