"""Remote-sensing build: scenes -> tiles -> ``tiles/<part>`` arrays and manifest rows.

``build_rs`` plans one task per scene and hands them to the shared runner
(``data_pipelines.build``); ``process_scene`` is the task: it reads the scene strip by strip,
cuts tiles (``rs.tiling``), decides exclusion, and writes its part.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from data_pipelines import parallel
from data_pipelines.build import BuildConfigError, BuildReport, BuildTask, run_build
from data_pipelines.rs.discover import Scene, discover_scenes
from data_pipelines.rs.profiles import SensorProfile, load_profile
from data_pipelines.rs.reader import SceneReader
from data_pipelines.rs.tiling import tile_grid
from data_pipelines.store import PartWriter, delete_part_array, safe_part_name, write_fragment

STORE_FORMAT_VERSION = 1
MIN_TILE, MAX_TILE = 8, 8192
RESAMPLING_CHOICES = ("nearest", "bilinear", "cubic", "average")

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
        ("excluded", pa.string()),
        ("dup_of", pa.string()),
        ("split", pa.string()),
    ]
)


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
    max_nodata_fraction: float = 0.5
    val_fraction: float = 0.05
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
        for name in ("max_nodata_fraction", "val_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise BuildConfigError(f"--{name.replace('_', '-')}: {v} is not in [0, 1]")
        if not 0 <= self.compression_level <= 9:
            raise BuildConfigError(f"--compression-level: {self.compression_level} not in [0, 9]")
        if not self.output:
            raise BuildConfigError("--output: give the folder to write the dataset into")

    def settings(self) -> dict[str, Any]:
        """The settings that shape the output; a resume must use the same ones."""
        return {
            "modality": "rs",
            "profile": self.profile,
            "tile_size": self.tile_size,
            "stride": self.stride or self.tile_size,
            "cover_edges": self.cover_edges,
            "resampling": self.resampling,
            "max_nodata_fraction": self.max_nodata_fraction,
            "store_format": STORE_FORMAT_VERSION,
        }


@dataclass(frozen=True)
class SceneJob:
    scene: Scene
    profile: SensorProfile
    config: RSBuildConfig
    out_dir: str
    part: str


# -- the task ------------------------------------------------------------------------------------


def nodata_fraction(tile: np.ndarray, nodata: float | None) -> float:
    """Fraction of pixels that are NaN or nodata in any band."""
    bad = np.zeros(tile.shape[1:], dtype=bool)
    if np.issubdtype(tile.dtype, np.floating):
        bad |= np.isnan(tile).any(axis=0)
    if nodata is not None:
        bad |= (tile == nodata).any(axis=0)
    return float(bad.mean())


def exclusion_reason(tile: np.ndarray, profile: SensorProfile, cfg: RSBuildConfig) -> str | None:
    """Why a tile is not written, or None to keep it."""
    if nodata_fraction(tile, profile.nodata) > cfg.max_nodata_fraction:
        return "nodata"
    return None


def process_scene(job: SceneJob) -> dict[str, Any]:
    """Read one scene, write ``tiles/<part>`` and its fragment; return counts and timings."""
    cfg, profile, scene = job.config, job.profile, job.scene
    t_start = time.perf_counter()
    read_s = write_s = 0.0
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {"scenes_read": 1, "tiles_total": 0, "samples_written": 0}
    source = scene.files[0][1] if not scene.multi_file else str(Path(scene.files[0][1]).parent)
    try:
        with SceneReader(scene, profile, cfg.resampling) as reader:
            grid = reader.grid
            assert grid is not None
            assert reader.dtype is not None
            T = cfg.tile_size
            rows_of_windows = tile_grid(grid.height, grid.width, T, cfg.stride, cfg.cover_edges)
            if not rows_of_windows:
                counts["scenes_smaller_than_tile"] = 1
            writer = PartWriter(
                job.out_dir,
                "tiles",
                job.part,
                (len(profile.bands), T, T),
                reader.dtype,
                attrs={
                    "scene": scene.scene_id,
                    "source": source,
                    "bands": profile.band_names,
                    "crs": grid.crs,
                },
                compression_level=cfg.compression_level,
            )
            for windows in rows_of_windows:
                t0 = time.perf_counter()
                strip = reader.read_window(Window(0, windows[0].row_off, grid.width, T))  # [C,T,W]
                read_s += time.perf_counter() - t0
                for w in windows:
                    tile = np.ascontiguousarray(strip[:, :, w.col_off : w.col_off + T])  # [C,T,T]
                    counts["tiles_total"] += 1
                    reason = exclusion_reason(tile, profile, cfg)
                    index = -1
                    if reason is None:
                        t0 = time.perf_counter()
                        index = writer.append(tile)
                        write_s += time.perf_counter() - t0
                        counts["samples_written"] += 1
                    else:
                        counts[f"excluded:{reason}"] = counts.get(f"excluded:{reason}", 0) + 1
                    tile_window = Window(w.col_off, w.row_off, T, T)
                    rows.append(
                        {
                            "id": f"{scene.scene_id}/r{w.row_off}_c{w.col_off}",
                            "scene": scene.scene_id,
                            "source": source,
                            "array": f"tiles/{job.part}" if index >= 0 else "",
                            "index": index,
                            "row_off": w.row_off,
                            "col_off": w.col_off,
                            "height": T,
                            "width": T,
                            "crs": grid.crs,
                            "transform": list(window_transform(tile_window, grid.transform))[:6],
                            "nodata_fraction": nodata_fraction(tile, profile.nodata),
                            "excluded": reason,
                            "dup_of": None,
                            "split": None,
                        }
                    )
            t0 = time.perf_counter()
            writer.close()
            write_s += time.perf_counter() - t0
        summary = {
            "counts": counts,
            "timings": {
                "read": read_s,
                "write": write_s,
                "total": time.perf_counter() - t_start,
            },
        }
        write_fragment(job.out_dir, job.part, rows, summary, schema=MANIFEST_SCHEMA)
        return summary
    except BaseException:
        delete_part_array(job.out_dir, "tiles", job.part)
        raise


# -- archive-wide steps ----------------------------------------------------------------------------


def assign_split(scene_id: str, val_fraction: float) -> str:
    """Deterministic per-scene split: tiles of one scene never straddle train and val."""
    h = int.from_bytes(hashlib.sha1(scene_id.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def finalize_manifest(table: pa.Table, cfg: RSBuildConfig) -> pa.Table:
    if table.num_rows == 0:
        return MANIFEST_SCHEMA.empty_table()
    table = table.sort_by(
        [("scene", "ascending"), ("row_off", "ascending"), ("col_off", "ascending")]
    )
    splits = {s: assign_split(s, cfg.val_fraction) for s in set(table.column("scene").to_pylist())}
    split_col = pa.array([splits[s] for s in table.column("scene").to_pylist()], pa.string())
    return table.set_column(table.schema.get_field_index("split"), "split", split_col)


# -- entry point -----------------------------------------------------------------------------------


def plan_parts(scenes: list[Scene]) -> list[str]:
    """Unique, stable part names derived from scene ids."""
    names: list[str] = []
    seen: set[str] = set()
    for s in scenes:
        name = safe_part_name(s.scene_id)
        if name in seen:
            name = f"{name}-{hashlib.sha1(s.scene_id.encode()).hexdigest()[:8]}"
        seen.add(name)
        names.append(name)
    return names


def build_rs(cfg: RSBuildConfig) -> BuildReport:
    """Validate, discover, and run the build; config errors are raised before any work."""
    cfg.validate()
    profile = load_profile(cfg.profile)
    discovery = discover_scenes(cfg.input, profile)
    out_dir = str(Path(cfg.output).resolve())
    parts = plan_parts(discovery.scenes)
    tasks = [
        BuildTask(
            part=part,
            source=" ".join(scene.paths) if not scene.multi_file else scene.scene_id,
            payload=SceneJob(scene, profile, cfg, out_dir, part),
        )
        for scene, part in zip(discovery.scenes, parts, strict=True)
    ]
    store_attrs = {
        "geomed_mim_store": STORE_FORMAT_VERSION,
        "modality": "rs",
        "profile": profile.to_attrs(),
        "bands": profile.band_names,
        "tile_size": cfg.tile_size,
        "calibration": "none",
    }
    return run_build(
        out_dir=out_dir,
        tasks=tasks,
        task_fn=process_scene,
        group="tiles",
        store_attrs=store_attrs,
        settings=cfg.settings(),
        config=asdict(cfg),
        finalize=lambda t: finalize_manifest(t, cfg),
        workers=min(cfg.workers, max(1, len(tasks))),
        scheduler=cfg.scheduler,
        overwrite=cfg.overwrite,
        ignored=discovery.ignored,
        unit="scene",
    )
