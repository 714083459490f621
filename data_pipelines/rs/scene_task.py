"""The RS build task: one scene in, ``tiles/<part>`` (+ ``labels/<part>``) and its fragment out.

:func:`process_scene` runs these stages for every row of tiles of the scene grid:

0. :func:`plan_windows`: where crops are cut (``rs.tiling``): a grid per tile size, or crops
   of random positions and sizes seeded by the scene;
1. :func:`read_strip`: one windowed read of the strip of rows a group of same-size crops covers
   (image, QA band, label raster), never a whole scene;
2. :func:`cut_tiles`: the strip's tiles, a batch at a time (vectorized, bounded memory);
3. :func:`measure_and_exclude`: quality measures and the exclusion reason of each tile
   (``rs.exclusion``, on raw values);
4. :func:`hash_kept`: resampling to ``--store-size`` (``rs.resample``: area averaging),
   calibration (``rs.toa``), perceptual hashes and per-band moments of the kept tiles; a
   compact part (the default) keeps the raw integers and records the calibration as CF
   ``scale_factor``/``add_offset`` attributes (``store.calibration``);
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
from rasterio import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from data_pipelines.classes import ClassTable
from data_pipelines.counts import (
    EXCLUDED,
    SAMPLES_WRITTEN,
    SCENES_READ,
    SCENES_SMALLER_THAN_TILE,
    SCENES_WITHOUT_CLOUD_MASK,
    TILES_TOTAL,
    BuildCounts,
    Count,
)
from data_pipelines.dedup import exact_hash, perceptual_hashes
from data_pipelines.rs.config import SLICING_RANDOM, STORE_DTYPE_COMPACT, RSBuildConfig
from data_pipelines.rs.discover import Scene
from data_pipelines.rs.exclusion import TileQuality, exclusion_reason, measure_batch
from data_pipelines.rs.labels import LabelReader
from data_pipelines.rs.profiles import SensorProfile
from data_pipelines.rs.reader import SceneError, SceneReader, open_scene_reader
from data_pipelines.rs.resample import area_average, nearest
from data_pipelines.rs.tiling import (
    TileWindow,
    crops_for_area,
    multi_size_grid,
    random_crops,
    scene_seed,
    strips,
    tile_grid,
)
from data_pipelines.rs.toa import Calibrator, make_calibrator
from data_pipelines.stats import BandSample, tile_moments
from data_pipelines.store.calibration import ATTR_STORED_VALUES, STORED_CALIBRATED, STORED_RAW
from data_pipelines.store.layout import LABELS_GROUP, RS_MANIFEST_SCHEMA, TILES_GROUP
from data_pipelines.store.write import PartWriter, delete_part_array, write_fragment

TILE_BATCH = 16  # tiles measured/hashed/calibrated together: vectorized, yet bounded memory
BATCH_PIXELS = TILE_BATCH * 256 * 256  # ...and fewer of them when crops are large


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
    tiles: dict[int, PartWriter]  # by stored size
    labels: LabelReader | None = None
    label_writers: dict[int, PartWriter] = field(default_factory=dict)
    table: ClassTable | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: BuildCounts = field(
        default_factory=lambda: BuildCounts(
            {Count(SCENES_READ): 1, Count(TILES_TOTAL): 0, Count(SAMPLES_WRITTEN): 0}
        )
    )
    sample: BandSample | None = None
    read_s: float = 0.0
    write_s: float = 0.0
    scene_columns: dict[str, Any] = field(default_factory=dict)  # the product's facts
    compact: bool = False  # stores raw integers + the calibration (see stores_dn)

    @property
    def profile(self) -> SensorProfile:
        """The profile as it applies to this scene's product (raw encoding, QA layout)."""
        return self.reader.profile


@dataclass
class Strip:
    """One row of same-size crops' worth of the scene: ``T`` rows by the columns they span."""

    pixels: np.ndarray  # [C, T, W'] raw values
    qa: np.ndarray | None  # [T, W'] QA band, when the profile has one
    labels: np.ndarray | None  # [T, W'] class ids, when the build has labels
    col_off: int = 0  # scene column of the strip's first column


@dataclass
class KeptTiles:
    """The kept tiles of a batch: raw and stored values, hashes and per-band moments."""

    raw: np.ndarray  # [n, C, S, S] raw values at the stored size S (hashed)
    stored: np.ndarray  # [n, C, S, S] as written: raw (compact or uncalibrated) or calibrated
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
    attrs = {
        "scene": scene.scene_id,
        "source": scene_source(scene),
        "bands": profile.band_names,
        "crs": grid.crs,
        "calibration": calibrator.describe() if calibrator else None,
        "product": reader.product.describe() if reader.product else None,
        **stored_values_attrs(calibrator, compact),
    }
    dtype = reader.dtype if compact or calibrator is None else np.dtype(np.float32)
    tiles = {
        size: PartWriter(
            job.out_dir,
            TILES_GROUP,
            part_array_name(job.part, size, cfg),
            (len(profile.bands), size, size),
            dtype,
            attrs=attrs,
            compression_level=cfg.compression_level,
        )
        for size in stored_sizes(cfg)
    }
    part = ScenePart(
        job, reader, calibrator, tiles, sample=BandSample(len(profile.bands)), compact=compact
    )
    part.scene_columns = {**reader.scene_columns(), "cloud_mask": reader.cloud_mask}
    if reader.cloud_mask is None:  # counted, so the summary says what was not checked
        part.counts[Count(SCENES_WITHOUT_CLOUD_MASK)] = 1
    table = cfg.class_table()
    if table is not None:
        open_labels(part, table, stack)
    return part


def stored_sizes(cfg: RSBuildConfig) -> list[int]:
    """The tile edges the part stores: ``--store-size``, or each grid size as cut."""
    return [cfg.store_size] if cfg.store_size else cfg.tile_sizes


def part_array_name(part: str, stored_size: int, cfg: RSBuildConfig) -> str:
    """``<part>``, or ``<part>/<size>`` when the part stores tiles of several sizes (one
    array per shape, under one folder so the part is removed as a whole)."""
    return f"{part}/{stored_size}" if len(stored_sizes(cfg)) > 1 else part


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
    """The scene's label raster seen on the scene grid, and the part's label arrays."""
    job, grid = part.job, part.reader.grid
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
    attrs = {
        "scene": job.scene.scene_id,
        "label_source": job.label_path,
        "classes": table.to_attrs(),
    }
    part.label_writers = {
        size: PartWriter(
            job.out_dir,
            LABELS_GROUP,
            part_array_name(job.part, size, job.config),
            (size, size),
            table.label_dtype,
            attrs=attrs,
        )
        for size in stored_sizes(job.config)
    }


# -- the stages ----------------------------------------------------------------------------------


def plan_windows(part: ScenePart) -> list[TileWindow]:
    """Stage 0: where the scene's crops are cut (``--slicing``, ``--tile-size``)."""
    cfg, grid = part.job.config, part.reader.grid
    sizes = cfg.tile_sizes
    if cfg.slicing == SLICING_RANDOM:
        count = cfg.crops_per_scene
        if count is None:
            count = crops_for_area(grid.height, grid.width, pixel_area_m2(grid), cfg.crops_per_km2)
        seed = scene_seed(part.job.scene.scene_id, cfg.seed)
        return random_crops(grid.height, grid.width, (sizes[0], sizes[-1]), count, seed)
    if len(sizes) == 1:
        rows = tile_grid(grid.height, grid.width, sizes[0], cfg.stride, cfg.cover_edges)
        return [w for row in rows for w in row]
    return multi_size_grid(grid.height, grid.width, sizes, cfg.overlap, cfg.cover_edges)


def pixel_area_m2(grid: Any) -> float:
    """Area of one scene pixel in m² (``--crops-per-km2`` needs a CRS in metres)."""
    from pyproj import CRS

    try:
        crs = CRS.from_user_input(grid.crs) if grid.crs else None
    except Exception:
        crs = None
    unit = crs.axis_info[0].unit_name if crs is not None and crs.axis_info else None
    if crs is None or not crs.is_projected or unit not in ("metre", "meter"):
        raise SceneError(
            "--crops-per-km2: the scene's CRS is not in metres, so its area is unknown; use "
            "--crops-per-scene (or --grid with a UTM CRS for swath products)"
        )
    return abs(grid.transform.a * grid.transform.e)


def read_strip(part: ScenePart, windows: list[TileWindow]) -> Strip:
    """Stage 1: the rows ``[row_off, row_off + T)`` over the columns the windows span."""
    t0 = time.perf_counter()
    first, size = windows[0], windows[0].size
    span = windows[-1].col_off + size - first.col_off
    window = Window(first.col_off, first.row_off, span, size)
    pixels = part.reader.read_window(window)  # [C, T, W]
    qa = part.reader.read_qa(window)  # [T, W] or None
    labels = None
    if part.labels is not None:
        # [T, W] label-map values -> stored class ids (anything else -> the stored ignore)
        labels = part.table.remap(part.labels.read(window))
    part.read_s += time.perf_counter() - t0
    return Strip(pixels, qa, labels, first.col_off)


def cut_tiles(strip: Strip, batch: list[TileWindow]) -> tuple[np.ndarray, np.ndarray | None]:
    """Stage 2: the batch's tiles ``[n, C, T, T]`` and their QA tiles ``[n, T, T]`` (or None)."""
    T, c0 = batch[0].size, strip.col_off
    raw = np.stack([strip.pixels[:, :, w.col_off - c0 : w.col_off - c0 + T] for w in batch])
    qa = None
    if strip.qa is not None:
        qa = np.stack([strip.qa[:, w.col_off - c0 : w.col_off - c0 + T] for w in batch])
    return raw, qa


def measure_and_exclude(
    part: ScenePart, raw: np.ndarray, qa: np.ndarray | None
) -> tuple[list[TileQuality], list[str | None]]:
    """Stage 3: each tile's quality and its exclusion reason (None: kept), counted."""
    profile, rules = part.profile, part.job.config.rules()
    qualities = measure_batch(raw, profile, qa)
    reasons = [exclusion_reason(q, rules, profile) for q in qualities]
    part.counts[Count(TILES_TOTAL)] += len(reasons)
    part.counts[Count(TILES_TOTAL, int(raw.shape[-1]))] += len(reasons)
    part.counts.update(Count(EXCLUDED, r) for r in reasons if r is not None)
    return qualities, reasons


def hash_kept(part: ScenePart, kept_raw: np.ndarray) -> KeptTiles:
    """Stage 4: stored values, perceptual hashes and per-band moments of the kept tiles.

    Crops are first brought to ``--store-size`` by area averaging (nodata ignored): raw
    integers are averaged and rounded (calibration is affine in them, so this is the average of
    the reflectance or radiance), calibrated float32 values are averaged as floats. Moments and
    the band sample are always of calibrated values; a compact part stores the raw integers and
    the reader applies the recorded calibration. Hashes are of what is stored."""
    native = kept_raw.shape[-1]
    size, nodata = part.job.config.stored_size(native), part.profile.nodata
    raw = kept_raw
    if size != native:
        raw_dtype = kept_raw.dtype if np.issubdtype(kept_raw.dtype, np.integer) else np.float32
        raw = area_average(kept_raw, size, nodata, raw_dtype)
    if part.calibrator is None:
        values = raw
    elif size != native and not part.compact:  # float32 parts: average the calibrated values
        values = area_average(part.calibrator.apply(kept_raw), size, None, np.float32)
    else:
        values = part.calibrator.apply(raw)
    phashes = perceptual_hashes(raw, nodata)
    moments = tile_moments(values)
    part.sample.add_tiles(values)
    return KeptTiles(raw, raw if part.compact else values, phashes, moments)


def tile_row(
    part: ScenePart, w: TileWindow, quality: TileQuality, reason: str | None
) -> dict[str, Any]:
    """Stage 6: the manifest row of one tile, before anything kept-only is filled in."""
    cfg, scene, grid, T = part.job.config, part.job.scene, part.reader.grid, w.size
    window = Window(w.col_off, w.row_off, T, T)
    stored = cfg.stored_size(T)
    scale = T / stored
    size_tag = f"s{T}_" if cfg.multi_size else ""
    return {
        **part.scene_columns,
        **part.reader.tile_metadata(window),
        "id": f"{scene.scene_id}/{size_tag}r{w.row_off}_c{w.col_off}",
        "scene": scene.scene_id,
        "source": scene_source(scene),
        "array": "",
        "index": -1,
        "row_off": w.row_off,
        "col_off": w.col_off,
        "height": T,
        "width": T,
        "native_size": T,
        "stored_size": stored,
        "scale": scale,
        "gsd": abs(grid.transform.a) * scale,
        "crs": grid.crs,
        "transform": list(window_transform(window, grid.transform) * Affine.scale(scale))[:6],
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
    size, native = kept.stored.shape[-1], row["native_size"]
    t0 = time.perf_counter()
    row["index"] = part.tiles[size].append(kept.stored[k])
    part.write_s += time.perf_counter() - t0
    row["array"] = part.tiles[size].path
    if strip.labels is not None:
        c0 = col_off - strip.col_off
        label_tile = strip.labels[:, c0 : c0 + native]
        if size != native:
            label_tile = nearest(label_tile, size)
        part.label_writers[size].append(np.ascontiguousarray(label_tile))
        row["label_array"] = part.label_writers[size].path
        row["labeled_fraction"] = float((label_tile != part.table.stored_ignore_index).mean())
    part.counts[Count(SAMPLES_WRITTEN)] += 1
    part.counts[Count(SAMPLES_WRITTEN, int(native))] += 1


def process_strip(part: ScenePart, strip: Strip, windows: list[TileWindow]) -> None:
    """Stages 2-6 for the tiles of one strip, a batch at a time."""
    per_batch = max(1, min(TILE_BATCH, BATCH_PIXELS // windows[0].size ** 2))
    for start in range(0, len(windows), per_batch):
        batch = windows[start : start + per_batch]
        raw, qa = cut_tiles(strip, batch)
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
    t_start = time.perf_counter()
    try:
        with ExitStack() as stack:
            part = open_scene_part(job, stack)
            windows = plan_windows(part)
            if not windows:
                part.counts[Count(SCENES_SMALLER_THAN_TILE)] = 1
            for group in strips(windows):
                process_strip(part, read_strip(part, group), group)
            t0 = time.perf_counter()
            for writer in [*part.tiles.values(), *part.label_writers.values()]:
                writer.close()
            part.write_s += time.perf_counter() - t0
        timings = {
            "read": part.read_s,
            "write": part.write_s,
            "total": time.perf_counter() - t_start,
        }
        counts = part.counts.to_json()  # the fragment holds the flat JSON form
        summary = {"counts": counts, "timings": timings, "band_sample": part.sample.finish()}
        write_fragment(job.out_dir, job.part, part.rows, summary, schema=RS_MANIFEST_SCHEMA)
        return {"counts": part.counts, "timings": timings}
    except BaseException:
        delete_part_array(job.out_dir, TILES_GROUP, job.part)
        delete_part_array(job.out_dir, LABELS_GROUP, job.part)
        raise
