"""``preview.png``: a mosaic of sample tiles so a person can see what the build kept.

Tiles are shown as an RGB-like composite of the profile's ``preview_rgb`` bands, each stretched
to its own 2-98 % range. Outlines: red = excluded (reason printed), orange = exact duplicate,
yellow = near duplicate, none = kept; a legend strip below the mosaic says so. Builds with
several tile sizes show every size (tiles spread over the sizes, each cell labelled with its
native size in pixels). Excluded tiles have
no pixels in the store, so they are re-read from their source scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw
from rasterio.windows import Window

from data_pipelines.rs.discover import Scene
from data_pipelines.rs.profiles import SensorProfile
from data_pipelines.rs.reader import open_scene_reader
from data_pipelines.store.layout import PREVIEW_NAME
from data_pipelines.store.read import LazyZarrArrays
from data_pipelines.store.write import atomic_write_bytes

CELL = 96  # pixels per tile in the mosaic
COLUMNS = 8
MAX_TILES = 48
OUTLINE = {"excluded": (220, 30, 30), "exact": (255, 140, 0), "near": (255, 220, 0)}
LEGEND = (
    ("excluded (reason on the tile)", "excluded"),
    ("exact duplicate", "exact"),
    ("near duplicate", "near"),
    ("kept: no outline", None),
)
LEGEND_HEIGHT = 22
BACKGROUND = (40, 40, 40)


def outline_legend(width: int) -> Image.Image:
    """A strip naming what each outline colour means, for a person opening the PNG alone."""
    strip = Image.new("RGB", (width, LEGEND_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    x = 6
    for text, key in LEGEND:
        if key is not None:
            draw.rectangle([x, 4, x + 13, 17], outline=OUTLINE[key], width=3)
            x += 19
        draw.text((x, 5), text, fill=(230, 230, 230))
        x += int(draw.textlength(text)) + 20
    return strip


def _pick(manifest: pa.Table) -> list[int]:
    """Up to MAX_TILES rows: with several tile sizes an equal share per size, each share
    spread as :func:`_pick_spread` spreads a manifest."""
    names = manifest.schema.names
    sizes = manifest.column("native_size").to_pylist() if "native_size" in names else []
    if len(set(sizes)) > 8:  # random crops: one share per octave of sizes
        sizes = [None if s is None else 1 << (int(s).bit_length() - 1) for s in sizes]
    distinct = sorted({s for s in sizes if s is not None})
    if len(distinct) <= 1:
        return _pick_spread(manifest, MAX_TILES)
    share = max(1, MAX_TILES // len(distinct))
    chosen: list[int] = []
    for size in distinct:
        rows = [i for i, s in enumerate(sizes) if s == size]
        picked = _pick_spread(manifest.take(rows), share)
        chosen += [rows[i] for i in picked]
    return sorted(chosen)


def _pick_spread(manifest: pa.Table, limit: int) -> list[int]:
    """Up to ``limit`` rows, spread over the manifest, with excluded and duplicates included."""
    n = manifest.num_rows
    excluded = [i for i, v in enumerate(manifest.column("excluded").to_pylist()) if v]
    dups = [i for i, v in enumerate(manifest.column("dup_kind").to_pylist()) if v]
    kept = sorted(set(range(n)) - set(excluded) - set(dups))

    def spread(items: list[int], k: int) -> list[int]:
        if len(items) <= k:
            return items
        return [items[int(j)] for j in np.linspace(0, len(items) - 1, k).round()]

    chosen = spread(excluded, limit // 4) + spread(dups, limit // 4)
    chosen += spread(kept, limit - len(chosen))
    return sorted(set(chosen))


def _to_rgb(tile: np.ndarray, rgb_idx: list[int]) -> np.ndarray:
    x = tile[rgb_idx].astype(np.float64)  # [3, h, w]
    out = np.zeros(x.shape, dtype=np.uint8)
    for c in range(x.shape[0]):
        band = x[c]
        finite = band[np.isfinite(band)]
        if finite.size == 0:
            continue
        lo, hi = np.percentile(finite, [2, 98])
        scaled = (np.nan_to_num(band, nan=lo) - lo) / max(hi - lo, 1e-12)
        out[c] = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return out.transpose(1, 2, 0)


def write_preview(
    out_dir: Path,
    manifest: pa.Table,
    profile: SensorProfile,
    scenes: dict[str, Scene],
    cfg: object,
) -> Path | None:
    if manifest.num_rows == 0:
        return None
    rgb = list(profile.preview_rgb) or profile.band_names[:3]
    rgb_idx = [profile.band_index(b) for b in rgb]
    rgb_idx = [i for i in rgb_idx if i is not None]
    while len(rgb_idx) < 3:
        rgb_idx.append(rgb_idx[-1])
    rows = manifest.take(_pick(manifest)).to_pylist()
    multi_size = len({r.get("native_size") for r in rows}) > 1
    store = LazyZarrArrays(out_dir)
    n_rows = (len(rows) + COLUMNS - 1) // COLUMNS
    canvas = Image.new("RGB", (COLUMNS * CELL, n_rows * CELL + LEGEND_HEIGHT), BACKGROUND)
    canvas.paste(outline_legend(COLUMNS * CELL), (0, n_rows * CELL))
    draw = ImageDraw.Draw(canvas)
    for k, row in enumerate(rows):
        if row["array"]:
            tile = store.read_calibrated(row["array"], row["index"])  # as training sees it
        else:
            scene = scenes.get(row["scene"])
            if scene is None:
                continue
            try:
                reader = open_scene_reader(
                    scene, profile, getattr(cfg, "resampling", "bilinear"), cfg.swath_grid()
                )
                with reader as r:
                    tile = r.read_window(
                        Window(row["col_off"], row["row_off"], row["width"], row["height"])
                    )
            except Exception:  # the preview must never fail a build
                continue
        img = Image.fromarray(_to_rgb(tile, rgb_idx)).resize((CELL - 4, CELL - 4), Image.NEAREST)
        x0, y0 = (k % COLUMNS) * CELL, (k // COLUMNS) * CELL
        canvas.paste(img, (x0 + 2, y0 + 2))
        if multi_size:
            draw.rectangle([x0 + 3, y0 + 3, x0 + 38, y0 + 15], fill=(0, 0, 0))
            draw.text((x0 + 5, y0 + 3), f"{row['native_size']}px", fill=(255, 255, 255))
        status = "excluded" if row["excluded"] else row.get("dup_kind")
        if status:
            draw.rectangle([x0, y0, x0 + CELL - 1, y0 + CELL - 1], outline=OUTLINE[status], width=3)
            label = row["excluded"] or f"dup:{status}"
            draw.text((x0 + 5, y0 + CELL - 14), label, fill=OUTLINE[status])
    path = out_dir / PREVIEW_NAME
    import io

    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path
