"""``preview.png`` of a CT build: the mid-axial slice of each of a few volumes, so a person can
see what the build stored (orientation, windowing, labels) without opening the store.

Slices are shown in the default window (-175 to 250 HU), anterior up and the patient's right
on the left of the image; where a label map exists its classes are tinted over the slice.
Duplicates are shown after the volumes they duplicate, and only when there is room.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import zarr
from PIL import Image, ImageDraw

from data_pipelines.store.layout import LABELS_GROUP, PREVIEW_NAME, VOLUMES_GROUP, store_path
from data_pipelines.store.write import atomic_write_bytes

CELL = 160  # pixels per volume in the mosaic
COLUMNS = 4
MAX_VOLUMES = 12
WINDOW = (-175.0, 250.0)
CAPTION = 16
TINT = np.array([[230, 60, 60], [60, 200, 90], [70, 120, 240], [240, 200, 40]], np.float32)


def mid_axial(volume: np.ndarray) -> np.ndarray:
    """``[X, Y, Z]`` (RAS voxel axes) -> the middle axial slice as an image ``[rows, cols]``
    with anterior up and the patient's right on the image's left (radiological view)."""
    axial = np.asarray(volume[:, :, volume.shape[2] // 2])  # [X (to R), Y (to A)]
    return np.rot90(axial)[:, ::-1]  # rows: A at the top; columns: R at the left


def slice_image(hu: np.ndarray, labels: np.ndarray | None) -> Image.Image:
    """A windowed slice (RGB), labels tinted over it, fitted into a CELL x CELL square."""
    lo, hi = WINDOW
    gray = np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255
    rgb = np.repeat(gray[..., None], 3, -1)
    if labels is not None:
        ids = labels.astype(np.int64)
        color = TINT[(ids - 1) % len(TINT)]
        rgb = np.where((ids > 0)[..., None], 0.6 * rgb + 0.4 * color, rgb)
    img = Image.fromarray(rgb.astype(np.uint8))
    scale = CELL / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    return img.resize(size, Image.BILINEAR)


def _pick(manifest: pa.Table) -> list[dict]:
    rows = [r for r in manifest.to_pylist() if r.get("array")]
    originals = [r for r in rows if not r.get("dup_of")]
    return (originals + [r for r in rows if r.get("dup_of")])[:MAX_VOLUMES]


def write_ct_preview(out_dir: str | Path, manifest: pa.Table) -> Path | None:
    """Write ``preview.png``; None when nothing was stored. Never fails a build: a volume that
    cannot be read is left out."""
    rows = _pick(manifest)
    if not rows:
        return None
    root = zarr.open_group(str(store_path(out_dir)), mode="r")
    n_rows = -(-len(rows) // COLUMNS)
    canvas = Image.new("RGB", (COLUMNS * CELL, n_rows * (CELL + CAPTION)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, row in enumerate(rows):
        part = str(row["array"]).split("/", 1)[-1]
        try:
            hu = mid_axial(root[f"{VOLUMES_GROUP}/{part}"])
            labels_path = f"{LABELS_GROUP}/{part}"
            labels = mid_axial(root[labels_path]) if labels_path in root else None
        except Exception:  # the preview must never fail a build
            continue
        img = slice_image(np.asarray(hu), None if labels is None else np.asarray(labels))
        x0, y0 = (k % COLUMNS) * CELL, (k // COLUMNS) * (CELL + CAPTION)
        canvas.paste(img, (x0 + (CELL - img.size[0]) // 2, y0 + (CELL - img.size[1]) // 2))
        caption = str(row["id"]) + (f" = {row['dup_of']}" if row.get("dup_of") else "")
        draw.text((x0 + 4, y0 + CELL + 2), caption[:26], fill=(230, 230, 230))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    path = Path(out_dir) / PREVIEW_NAME
    atomic_write_bytes(path, buf.getvalue())
    return path
