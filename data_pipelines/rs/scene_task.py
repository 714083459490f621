"""The RS build task: one scene in, ``tiles/<part>`` (+ ``labels/<part>``) and its fragment out.

:func:`process_scene` runs these stages for every row of tiles of the scene grid:

1. :func:`read_strip`: one windowed read of the strip of rows the tiles cover (image, QA band,
   label raster), never a whole scene;
2. :func:`cut_tiles`: the strip's tiles, a batch at a time (vectorized, bounded memory);
3. :func:`measure_and_exclude`: quality measures and the exclusion reason of each tile
   (``rs.exclusion``, on raw values);
4. :func:`hash_kept`: calibration (``rs.toa``), perceptual hashes and per-band moments of the
   kept tiles; a compact part (the default) keeps the raw integers and records the
   calibration as CF ``scale_factor``/``add_offset`` attributes (``store.calibration``);
5. :func:`write_kept`: the kept tiles (and their label tiles) appended to the part's arrays;
6. :func:`tile_row`: a manifest row for every tile, kept or excluded.

The fragment (rows plus a summary of counts, timings and a band sample) is written last: it
is the part's commit record. On any error the part's arrays are removed before re-raising.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from data_pipelines.classes import ClassTable
from data_pipelines.dedup import exact_hash, perceptual_hashes
from data_pipelines.rs.config import STORE_DTYPE_COMPACT, RSBuildConfig
from data_pipelines.rs.discover import Scene
from data_pipelines.rs.exclusion import TileQuality, exclusion_reason, measure_batch
from data_pipelines.rs.labels import LabelReader
from data_pipelines.rs.profiles import SensorProfile
from data_pipelines.rs.reader import SceneError, SceneReader, open_scene_reader
from data_pipelines.rs.tiling import TileWindow, tile_grid
from data_pipelines.rs.toa import Calibrator, make_calibrator
from data_pipelines.stats import BandSample, tile_moments
from data_pipelines.store.calibration import ATTR_STORED_VALUES, STORED_CALIBRATED, STORED_RAW
from data_pipelines.store.layout import LABELS_GROUP, RS_MANIFEST_SCHEMA, TILES_GROUP, array_path
from data_pipelines.store.write import PartWriter, delete_part_array, write_fragment

TILE_BATCH = 16  # tiles measured/hashed/calibrated together: vectorized, yet bounded memory


@dataclass(frozen=True)
class SceneJob:
    scene: Scene
    profile: SensorProfile
    config: RSBuildConfig
    out_dir: str
    part: str
    label_path: str | None = None


def scene_source(scene: Scene) -> str:
    """The raster file of a scene, or the folder of a one-file-per-band scene (a STAC item:
    its href)."""
    if scene.origin:
        return scene.origin
    return scene.files[0][1] if not scene.multi_file else str(Path(scene.files[0][1]).parent)


@dataclass
class ScenePart:
    """One scene task's open reader and writers, and what it has gathered so far."""

    job: SceneJob
    reader: SceneReader
    calibrator: Calibrator | None
    tiles: PartWriter
    labels: LabelReader | None = None
    label_writer: PartWriter | None = None
    table: ClassTable | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"scenes_read": 1, "tiles_total": 0, "samples_written": 0}
    )
    sample: BandSample | None = None
    read_s: float = 0.0
    write_s: float = 0.0
    scene_columns: dict[str, Any] = field(default_factory=dict)  # the product's facts
    compact: bool = False  # stores raw integers + the calibration (see stores_dn)

    @property
    def tile_size(self) -> int:
        return self.job.config.tile_size

    @property
    def profile(self) -> SensorProfile:
        """The profile as it applies to this scene's product (raw encoding, QA layout)."""
        return self.reader.profile


@dataclass
class Strip:
    """One row of tiles' worth of the scene: ``T`` rows by the full width."""

    pixels: np.ndarray  # [C, T, W] raw values
    qa: np.ndarray | None  # [T, W] QA band, when the profile has one
    labels: np.ndarray | None  # [T, W] class ids, when the build has labels


@dataclass
class KeptTiles:
    """The kept tiles of a batch: raw and stored values, hashes and per-band moments."""

    raw: np.ndarray  # [n, C, T, T]
    stored: np.ndarray  # [n, C, T, T] as written: raw (compact or uncalibrated) or calibrated
    phashes: np.ndarray  # [n] uint64
    moments: tuple[np.ndarray, ...]  # count, mean, m2, min, max, each [n, C]


# -- opening -------------------------------------------------------------------------------------


def open_scene_part(job: SceneJob, stack: ExitStack) -> ScenePart:
    """Open the scene (and its label raster) and create the part's arrays."""
    cfg, profile, scene = job.config, job.profile, job.scene
    reader = stack.enter_context(
        open_scene_reader(scene, profile, cfg.resampling, cfg.swath_grid())
    )
    grid = reader.grid
    assert grid is not None
    assert reader.dtype is not None
    calibrator = make_calibrator(
        reader.profile, cfg.calibrate, reader.tags(), scene.metadata_files, reader.product
    )
    compact = stores_dn(calibrator, reader.dtype, cfg.store_dtype)
    T = cfg.tile_size
    tiles = PartWriter(
        job.out_dir,
        TILES_GROUP,
        job.part,
        (len(profile.bands), T, T),
        reader.dtype if compact or calibrator is None else np.dtype(np.float32),
        attrs={
            "scene": scene.scene_id,
            "source": scene_source(scene),
            "bands": profile.band_names,
            "crs": grid.crs,
            "calibration": calibrator.describe() if calibrator else None,
            "product": reader.product.describe() if reader.product else None,
            **stored_values_attrs(calibrator, compact),
        },
        compression_level=cfg.compression_level,
    )
    part = ScenePart(
        job, reader, calibrator, tiles, sample=BandSample(len(profile.bands)), compact=compact
    )
    part.scene_columns = reader.scene_columns()
    table = cfg.class_table()
    if table is not None:
        open_labels(part, table, stack)
    return part


def stores_dn(calibrator: Calibrator | None, raw_dtype: np.dtype, store_dtype: str) -> bool:
    """Whether the part keeps the raw integers and records the calibration (a compact part):
    with a calibration, integer raw values and no ``--store-dtype float32``."""
    return (
        calibrator is not None
        and store_dtype == STORE_DTYPE_COMPACT
        and np.issubdtype(np.dtype(raw_dtype), np.integer)
    )


def stored_values_attrs(calibrator: Calibrator | None, compact: bool) -> dict[str, Any]:
    """The part attributes that say what its values are (CF scale/offset for compact parts)."""
    if calibrator is None:
        return {ATTR_STORED_VALUES: STORED_RAW}
    if compact:
        return calibrator.stored().cf_attrs()
    return {ATTR_STORED_VALUES: STORED_CALIBRATED}


def open_labels(part: ScenePart, table: ClassTable, stack: ExitStack) -> None:
    """The scene's label raster seen on the scene grid, and the part's label array."""
    job, grid, T = part.job, part.reader.grid, part.tile_size
    if job.label_path is None:
        raise SceneError(
            f"no label raster for this scene in --labels {job.config.labels} (looked for "
            f"<name>.tif, <name>_label.tif, <name>_labels.tif, <name>_mask.tif)"
        )
    part.table = table
    part.labels = stack.enter_context(
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
    part.label_writer = PartWriter(
        job.out_dir,
        LABELS_GROUP,
        job.part,
        (T, T),
        table.label_dtype,
        attrs={
            "scene": job.scene.scene_id,
            "label_source": job.label_path,
            "classes": table.to_attrs(),
        },
    )


# -- the stages ----------------------------------------------------------------------------------


def read_strip(part: ScenePart, row_off: int) -> Strip:
    """Stage 1: the strip of rows ``[row_off, row_off + T)`` over the full scene width."""
    t0 = time.perf_counter()
    window = Window(0, row_off, part.reader.grid.width, part.tile_size)
    pixels = part.reader.read_window(window)  # [C, T, W]
    qa = part.reader.read_qa(window)  # [T, W] or None
    labels = None
    if part.labels is not None:
        # [T, W] label-map values -> stored class ids (anything else -> the stored ignore)
        labels = part.table.remap(part.labels.read(window))
    part.read_s += time.perf_counter() - t0
    return Strip(pixels, qa, labels)


def cut_tiles(
    strip: Strip, batch: list[TileWindow], T: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Stage 2: the batch's tiles ``[n, C, T, T]`` and their QA tiles ``[n, T, T]`` (or None)."""
    raw = np.stack([strip.pixels[:, :, w.col_off : w.col_off + T] for w in batch])
    qa = None
    if strip.qa is not None:
        qa = np.stack([strip.qa[:, w.col_off : w.col_off + T] for w in batch])
    return raw, qa


def measure_and_exclude(
    part: ScenePart, raw: np.ndarray, qa: np.ndarray | None
) -> tuple[list[TileQuality], list[str | None]]:
    """Stage 3: each tile's quality and its exclusion reason (None: kept), counted."""
    profile, rules = part.profile, part.job.config.rules()
    qualities = measure_batch(raw, profile, qa)
    reasons = [exclusion_reason(q, rules, profile) for q in qualities]
    part.counts["tiles_total"] += len(reasons)
    for reason in reasons:
        if reason is not None:
            key = f"excluded:{reason}"
            part.counts[key] = part.counts.get(key, 0) + 1
    return qualities, reasons


def hash_kept(part: ScenePart, kept_raw: np.ndarray) -> KeptTiles:
    """Stage 4: stored values, perceptual hashes and per-band moments of the kept tiles.

    Moments and the band sample are always of calibrated values; a compact part stores the
    raw integers and the reader applies the recorded calibration."""
    values = part.calibrator.apply(kept_raw) if part.calibrator else kept_raw
    phashes = perceptual_hashes(kept_raw, part.profile.nodata)
    moments = tile_moments(values)
    part.sample.add_tiles(values)
    return KeptTiles(kept_raw, kept_raw if part.compact else values, phashes, moments)


def tile_row(
    part: ScenePart, w: TileWindow, quality: TileQuality, reason: str | None
) -> dict[str, Any]:
    """Stage 6: the manifest row of one tile, before anything kept-only is filled in."""
    scene, grid, T = part.job.scene, part.reader.grid, part.tile_size
    window = Window(w.col_off, w.row_off, T, T)
    return {
        **part.scene_columns,
        **part.reader.tile_metadata(window),
        "id": f"{scene.scene_id}/r{w.row_off}_c{w.col_off}",
        "scene": scene.scene_id,
        "source": scene_source(scene),
        "array": "",
        "index": -1,
        "row_off": w.row_off,
        "col_off": w.col_off,
        "height": T,
        "width": T,
        "crs": grid.crs,
        "transform": list(window_transform(window, grid.transform))[:6],
        **quality.as_row(),
        "excluded": reason,
    }


def _floats(a: np.ndarray) -> list[float]:
    return [float(v) for v in a]


def write_kept(
    part: ScenePart, row: dict[str, Any], kept: KeptTiles, k: int, strip: Strip, col_off: int
) -> None:
    """Stage 5: append kept tile ``k`` (and its label tile) and complete its manifest row."""
    count, mean, m2, minimum, maximum = kept.moments
    row.update(
        exact_hash=exact_hash(kept.raw[k]),
        phash=int(kept.phashes[k]),
        band_mean=_floats(mean[k]),
        band_std=_floats(np.sqrt(m2[k] / np.maximum(count[k], 1))),
        _band_count=_floats(count[k]),
        _band_m2=_floats(m2[k]),
        _band_min=_floats(minimum[k]),
        _band_max=_floats(maximum[k]),
    )
    t0 = time.perf_counter()
    row["index"] = part.tiles.append(kept.stored[k])
    part.write_s += time.perf_counter() - t0
    row["array"] = array_path(TILES_GROUP, part.job.part)
    if strip.labels is not None:
        label_tile = strip.labels[:, col_off : col_off + part.tile_size]
        part.label_writer.append(np.ascontiguousarray(label_tile))
        row["label_array"] = array_path(LABELS_GROUP, part.job.part)
        row["labeled_fraction"] = float((label_tile != part.table.stored_ignore_index).mean())
    part.counts["samples_written"] += 1


def process_strip(part: ScenePart, strip: Strip, windows: list[TileWindow]) -> None:
    """Stages 2-6 for the tiles of one strip, a batch at a time."""
    for start in range(0, len(windows), TILE_BATCH):
        batch = windows[start : start + TILE_BATCH]
        raw, qa = cut_tiles(strip, batch, part.tile_size)
        qualities, reasons = measure_and_exclude(part, raw, qa)
        keep = np.array([r is None for r in reasons])
        kept = hash_kept(part, raw[keep]) if keep.any() else None
        k = 0  # position among the kept tiles of this batch
        for w, quality, reason in zip(batch, qualities, reasons, strict=True):
            row = tile_row(part, w, quality, reason)
            if reason is None:
                write_kept(part, row, kept, k, strip, w.col_off)
                k += 1
            part.rows.append(row)


# -- the task ------------------------------------------------------------------------------------


def process_scene(job: SceneJob) -> dict[str, Any]:
    """Read one scene, write ``tiles/<part>`` and its fragment; return counts and timings."""
    cfg = job.config
    t_start = time.perf_counter()
    try:
        with ExitStack() as stack:
            part = open_scene_part(job, stack)
            grid = part.reader.grid
            rows_of_windows = tile_grid(
                grid.height, grid.width, cfg.tile_size, cfg.stride, cfg.cover_edges
            )
            if not rows_of_windows:
                part.counts["scenes_smaller_than_tile"] = 1
            for windows in rows_of_windows:
                process_strip(part, read_strip(part, windows[0].row_off), windows)
            t0 = time.perf_counter()
            part.tiles.close()
            if part.label_writer is not None:
                part.label_writer.close()
            part.write_s += time.perf_counter() - t0
        timings = {
            "read": part.read_s,
            "write": part.write_s,
            "total": time.perf_counter() - t_start,
        }
        summary = {"counts": part.counts, "timings": timings, "band_sample": part.sample.finish()}
        write_fragment(job.out_dir, job.part, part.rows, summary, schema=RS_MANIFEST_SCHEMA)
        return {"counts": part.counts, "timings": timings}
    except BaseException:
        delete_part_array(job.out_dir, TILES_GROUP, job.part)
        delete_part_array(job.out_dir, LABELS_GROUP, job.part)
        raise
