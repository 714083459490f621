"""Whole-scene / whole-volume prediction written as files a user can open.

* RS: a scene (any input the build reads: GeoTIFF stacks or band files, .SAFE folders/zips,
  MODIS granules, Landsat scenes, STAC items) is opened through the build's reader with the
  store's sensor profile and calibrated with its product's own coefficients, as the build does
  (a scene the store's profile does not read, or cannot calibrate, is refused); read window by
  window, standardized, predicted tile by tile with overlap and Gaussian blending into a disk-backed
  (memmap) logit accumulator, so scenes larger than memory work; written as a uint8/uint16
  GeoTIFF of class ids with the scene's CRS and transform (+ optional float32 probabilities).
* CT: a NIfTI is loaded as the build does (RAS, resampled to the store spacing), predicted with
  MONAI sliding-window inference (Gaussian, configurable overlap), and the class map is
  resampled back (nearest) onto the input grid and saved with the input's affine.
* A PNG overlay (image + class colours) for a quick look.

Predictions are always ids of the class table: output channels that are no class (the ignore
index when it lies below the class count, gaps between class ids) are masked before the argmax,
so a class map never holds the ignore index.
"""

from __future__ import annotations

import contextlib
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import rasterio
import torch
from monai.inferers import sliding_window_inference
from PIL import Image, ImageDraw, ImageFont
from rasterio.windows import Window

from data_pipelines.ct.volume import load_nifti, resample_label, stored_grid, to_int16_hu
from data_pipelines.errors import InputError, UserError, first_line
from data_pipelines.rs.discover import Scene, discover_scenes
from data_pipelines.rs.profiles import SensorProfile, load_profile
from data_pipelines.rs.reader import SceneError, SceneReader, open_scene_reader
from data_pipelines.rs.toa import CalibrationError, Calibrator, make_calibrator
from geomed_mim.tasks.preview import title_strip

PredictFn = Callable[[torch.Tensor], torch.Tensor]  # [B, C, *S] → logits [B, K, *S]


class PredictInputError(UserError, ValueError):
    """An input file that cannot be predicted (missing, not one scene, wrong band count)."""


# what an input file (not the code) can make fail: ``predict`` reports the file, goes on
INPUT_ERRORS = (
    PredictInputError,
    SceneError,
    InputError,
    OSError,  # missing or unreadable file (rasterio's RasterioIOError is one)
    nib.filebasedimages.ImageFileError,
)


def class_logits(logits: torch.Tensor, class_ids: Sequence[int], dim: int = 1) -> torch.Tensor:
    """``logits`` with every channel along ``dim`` that is not a class id set to -inf."""
    keep = torch.zeros(logits.shape[dim], dtype=torch.bool, device=logits.device)
    keep[torch.as_tensor(list(class_ids), dtype=torch.long, device=logits.device)] = True
    if bool(keep.all()):
        return logits
    shape = [1] * logits.dim()
    shape[dim] = -1
    return logits.masked_fill(~keep.view(shape), float("-inf"))


def predicted_ids(logits: torch.Tensor, class_ids: Sequence[int], dim: int = 1) -> torch.Tensor:
    """The predicted class id per pixel/voxel: argmax over the class channels only."""
    return class_logits(logits, class_ids, dim).argmax(dim)


def gaussian_weight(size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """[size, size] Gaussian importance map (MONAI's default sigma), minimum clamped > 0."""
    c = (size - 1) / 2
    g = np.exp(-0.5 * ((np.arange(size) - c) / (sigma_scale * size)) ** 2)
    w = np.outer(g, g)
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Tile starts covering ``[0, length)`` with ``overlap``; the last one ends at the edge."""
    if length <= tile:
        return [0]
    step = max(1, round(tile * (1 - overlap)))
    starts = list(range(0, length - tile + 1, step))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def class_colors(classes: dict[str, Any], num_classes: int) -> np.ndarray:
    """[num_classes, 3] uint8 palette: the class table's colours, else a fixed random one."""
    palette = np.random.default_rng(0).integers(0, 256, (num_classes, 3)).astype(np.uint8)
    for cid, color in zip(classes.get("ids", []), classes.get("colors", []), strict=False):
        if cid < num_classes:
            palette[cid] = color
    return palette


OVERLAY_MIN_SIZE = 512  # overlays are enlarged (nearest neighbour) to at least this many px


def save_overlay(
    rgb: np.ndarray, class_map: np.ndarray, classes: dict[str, Any], num_classes: int, path: Path
) -> None:
    """rgb float [H, W, 3] in [0, 1], class ids [H, W] → side by side: image | overlay in the
    class table's colours (its ignore index left clear), enlarged to at least
    :data:`OVERLAY_MIN_SIZE` px, titled, with a legend of the class colours below."""
    palette = class_colors(classes, num_classes)
    ignore = int(classes.get("ignore_index", 255))
    color = palette[np.clip(class_map, 0, len(palette) - 1)].astype(np.float32) / 255
    # the ignore index and the nodata of the class map (beyond the table) stay clear
    alpha = np.where((class_map == ignore) | (class_map >= num_classes), 0.0, 0.5)[..., None]
    over = rgb * (1 - alpha) + color * alpha
    k = max(1, -(-OVERLAY_MIN_SIZE // max(class_map.shape)))  # ceil: integer enlargement
    panels = [np.kron(np.clip(x, 0, 1), np.ones((k, k, 1))) for x in (rgb, over)]
    gap = np.ones((panels[0].shape[0], 8, 3))
    both = (np.concatenate([panels[0], gap, panels[1]], axis=1) * 255).astype(np.uint8)
    width, panel = both.shape[1], panels[0].shape[1]
    titles = title_strip(width, [(0, panel, "image"), (panel + 8, width, "predicted classes")])
    legend = class_legend(width, classes, palette, class_map)
    Image.fromarray(np.concatenate([titles, both, legend], axis=0)).save(path)


def class_legend(
    width: int, classes: dict[str, Any], palette: np.ndarray, class_map: np.ndarray
) -> np.ndarray:
    """[h, width, 3] white strip: a colour swatch, the id, the name and the share of predicted
    pixels for each class of the table, in rows that fit ``width``."""
    ids = [int(i) for i in classes.get("ids", range(len(palette)))]
    names = list(classes.get("names") or [str(i) for i in ids])
    counts = np.bincount(class_map.ravel().astype(np.int64), minlength=len(palette))
    total = max(int(class_map.size), 1)
    entries = [
        (palette[i], f"{i} {name} {100 * counts[i] / total:.0f}%")
        for i, name in zip(ids, names, strict=False)
        if i < len(palette)
    ]
    font = ImageFont.load_default(size=13)
    cell = max(int(font.getlength(text)) for _, text in entries) + 30 if entries else 1
    per_row = max(1, width // cell)
    rows = -(-len(entries) // per_row)
    strip = Image.new("RGB", (width, 6 + 20 * rows), "white")
    draw = ImageDraw.Draw(strip)
    for n, (rgb, text) in enumerate(entries):
        x, y = 4 + (n % per_row) * cell, 4 + (n // per_row) * 20
        draw.rectangle([x, y + 1, x + 14, y + 15], fill=tuple(int(v) for v in rgb), outline="black")
        draw.text((x + 20, y + 1), text, fill="black", font=font)
    return np.asarray(strip)


def stretch(img: np.ndarray) -> np.ndarray:
    """[H, W, 3] → [0, 1] with a 2–98 percentile stretch per channel (NaN → 0)."""
    img = np.nan_to_num(img.astype(np.float32))
    lo, hi = np.percentile(img, 2, axis=(0, 1)), np.percentile(img, 98, axis=(0, 1))
    return np.clip((img - lo) / np.maximum(hi - lo, 1e-6), 0, 1)


# -- RS -------------------------------------------------------------------------------------------
def predict_rs_scene(
    predict_fn: PredictFn,
    scene_path: str,
    store_attrs: dict[str, Any],
    mean: Sequence[float],
    std: Sequence[float],
    tile: int,
    num_classes: int,
    output_dir: str | Path,
    overlap: float = 0.5,
    batch_size: int = 16,
    write_probabilities: bool = False,
    classes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict one scene; returns the written paths and the grid. See the module docstring.

    Stages: find the scene as the build does → open it through the build's reader and
    calibrate it with its product's coefficients → accumulate blended logits on disk → write
    the class GeoTIFF (+ probabilities) → write the PNG overlay.
    """
    profile = load_profile((store_attrs.get("profile") or {})["name"])
    mode = (store_attrs.get("calibration") or {}).get("mode", "none")
    scene = the_scene(scene_path, profile)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(scene_path).name.split(".")[0]
    class_path = out_dir / f"{stem}_classes.tif"
    prob_path = out_dir / f"{stem}_probabilities.tif" if write_probabilities else None
    png = out_dir / f"{stem}_overlay.png"
    # the build's door: the product's reader (its bands, nodata and grid) and calibration
    with open_scene_reader(scene, profile) as reader:
        grid = reader.grid
        calibrator = scene_calibrator(reader, scene, profile, mode)
        standardize = band_standardizer(calibrator, mean, std)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".acc_") as tmp:
            acc, wsum, valid = accumulate_scene_logits(
                predict_fn, reader, standardize, (grid.height, grid.width), len(mean), tile,
                num_classes, Path(tmp), overlap, batch_size,
            )  # fmt: skip
            write_class_geotiff(acc, wsum, grid, classes or {}, class_path, prob_path, valid)
            del acc, wsum, valid  # release the memmaps before their folder goes
        write_rs_overlay(reader, reader.profile, class_path, png, classes or {}, num_classes)
    return {
        "classes": str(class_path),
        "probabilities": str(prob_path) if prob_path else None,
        "overlay": str(png),
        "shape": (grid.height, grid.width),
    }


def the_scene(scene_path: str, profile: SensorProfile) -> Scene:
    """The one scene ``scene_path`` holds, found as the build finds scenes (GeoTIFF stacks or
    band files, .SAFE folders/zips, MODIS granules, Landsat scenes, STAC items)."""
    if not Path(scene_path).exists():
        raise PredictInputError("no such file")
    found = discover_scenes(scene_path, profile)
    if len(found.scenes) == 1:
        return found.scenes[0]
    if not found.scenes and found.ignored:
        # a product the store's profile does not read: the build's reason, for this model
        why = found.ignored[0][1].split(" (read it with --profile")[0]
        raise PredictInputError(
            f"{why}; the model was trained on a {profile.name} store, so it predicts "
            f"{profile.name} scenes only"
        )
    raise PredictInputError(f"expected one {profile.name} scene, found {len(found.scenes)}")


def scene_calibrator(
    reader: SceneReader, scene: Scene, profile: SensorProfile, mode: str
) -> Calibrator | None:
    """The scene's calibration as the build makes it (the product's own coefficients), or a
    refusal when the scene cannot be brought to the units the store holds."""
    try:
        calibrator = make_calibrator(
            reader.profile, mode, reader.tags(), scene.metadata_files, reader.product
        )
    except CalibrationError as e:
        raise PredictInputError(f"cannot calibrate: {first_line(e)}") from None
    if mode == "toa" and calibrator is None:
        raise PredictInputError(
            f"the model was trained on TOA values but profile {profile.name} gives this scene "
            f"no calibration; predict scenes the store's build could calibrate"
        )
    return calibrator


def band_standardizer(
    calibrator: Any, mean: Sequence[float], std: Sequence[float]
) -> Callable[[np.ndarray], np.ndarray]:
    """Raw window [C, h, w] → calibrated, standardized float32 values (NaN → 0)."""
    mean_a = np.asarray(mean, np.float32)[:, None, None]
    std_a = np.asarray(std, np.float32)[:, None, None]

    def standardize(raw: np.ndarray) -> np.ndarray:
        vals = calibrator.apply(raw) if calibrator else raw.astype(np.float32)
        return np.nan_to_num((vals - mean_a) / std_a)

    return standardize


def accumulate_scene_logits(
    predict_fn: PredictFn,
    reader: SceneReader,
    standardize: Callable[[np.ndarray], np.ndarray],
    shape: tuple[int, int],
    bands: int,
    tile: int,
    num_classes: int,
    tmp_dir: Path,
    overlap: float,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted logit sums [K, H, W] and weight sums [H, W] over overlapping tiles,
    and where every band holds data [H, W] (the reader's nodata convention).

    Disk-backed (memmaps in ``tmp_dir``): the scene's logits never need to fit in memory.
    """
    H, W = shape
    acc = np.lib.format.open_memmap(tmp_dir / "acc.npy", "w+", np.float32, (num_classes, H, W))
    wsum = np.lib.format.open_memmap(tmp_dir / "w.npy", "w+", np.float32, (H, W))
    valid = np.lib.format.open_memmap(tmp_dir / "valid.npy", "w+", np.bool_, (H, W))
    weight = gaussian_weight(tile)
    boxes = [
        (r, c) for r in window_starts(H, tile, overlap) for c in window_starts(W, tile, overlap)
    ]
    for b0 in range(0, len(boxes), batch_size):
        chunk = boxes[b0 : b0 + batch_size]
        batch = np.zeros((len(chunk), bands, tile, tile), np.float32)  # padded edges
        for k, (r, c) in enumerate(chunk):
            h, w = min(tile, H - r), min(tile, W - c)
            raw = reader.read_window(Window(c, r, w, h))
            valid[r : r + h, c : c + w] = reader.profile.valid_raw(raw).all(0)
            batch[k, :, :h, :w] = standardize(raw)
        with torch.no_grad():
            logits = predict_fn(torch.from_numpy(batch)).float().cpu().numpy()
        for k, (r, c) in enumerate(chunk):
            h, w = min(tile, H - r), min(tile, W - c)
            acc[:, r : r + h, c : c + w] += logits[k, :, :h, :w] * weight[:h, :w]
            wsum[r : r + h, c : c + w] += weight[:h, :w]
    return acc, wsum, valid


def class_nodata(num_classes: int) -> int:
    """The class map's nodata value: the largest value of its type, never a class id."""
    return 255 if num_classes < 256 else 65535


def class_geotiff_profile(grid: Any, num_classes: int) -> dict[str, Any]:
    """A deflate-compressed, single-band class-id GeoTIFF on the scene's grid (tiled if ≥ 256)."""
    H, W = grid.height, grid.width
    profile = {
        "driver": "GTiff",
        "height": H,
        "width": W,
        "count": 1,
        "dtype": "uint8" if num_classes <= 256 else "uint16",
        "crs": grid.crs or None,
        "transform": grid.transform,
        "compress": "deflate",
        "nodata": class_nodata(num_classes),
    }
    if W >= 256 and H >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    else:
        profile.update(tiled=False)
    return profile


def write_class_geotiff(
    acc: np.ndarray,
    wsum: np.ndarray,
    grid: Any,
    classes: dict[str, Any],
    class_path: Path,
    prob_path: Path | None = None,
    valid: np.ndarray | None = None,
    strip: int = 512,
) -> None:
    """Argmax of the blended logits over the class channels (+ softmax probabilities), strip by
    strip; nodata where the scene has none. The file carries its classes (colour table, nodata,
    category names) so a GIS shows the legend as trained."""
    H, W = grid.height, grid.width
    num_classes = acc.shape[0]
    class_ids = classes.get("ids") or list(range(num_classes))
    profile = class_geotiff_profile(grid, num_classes)
    with contextlib.ExitStack() as stack:
        dst = stack.enter_context(rasterio.open(class_path, "w", **profile))
        probs_dst = None
        if prob_path is not None:
            prob_profile = {**profile, "count": num_classes, "dtype": "float32", "nodata": None}
            probs_dst = stack.enter_context(rasterio.open(prob_path, "w", **prob_profile))
        for r in range(0, H, strip):
            h = min(strip, H - r)
            logit = torch.from_numpy(acc[:, r : r + h] / wsum[r : r + h][None])
            logit = class_logits(logit, class_ids, dim=0)
            ids = logit.argmax(0).numpy().astype(profile["dtype"])
            if valid is not None:
                ids[~valid[r : r + h]] = profile["nodata"]
            dst.write(ids, 1, window=Window(0, r, W, h))
            if probs_dst is not None:
                probs_dst.write(logit.softmax(0).numpy(), window=Window(0, r, W, h))
        palette = class_colors(classes, num_classes)
        dst.write_colormap(1, {int(i): (*map(int, palette[i]), 255) for i in class_ids})
    write_category_names(class_path, class_ids, classes.get("names"))


def write_category_names(path: Path, ids: Sequence[int], names: Sequence[str] | None) -> None:
    """The class names as GDAL category names (``<file>.aux.xml``, read by GDAL and QGIS): the
    category at position ``v`` names pixel value ``v``."""
    names = list(names or [str(i) for i in ids])
    by_id = dict(zip((int(i) for i in ids), names, strict=False))
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    categories = ET.SubElement(band, "CategoryNames")
    for value in range(max(by_id, default=-1) + 1):
        ET.SubElement(categories, "Category").text = by_id.get(value, "")
    ET.ElementTree(root).write(f"{path}.aux.xml", encoding="utf-8")


def write_rs_overlay(
    reader: SceneReader,
    profile: Any,
    class_path: Path,
    png: Path,
    classes: dict[str, Any],
    num_classes: int,
) -> None:
    """Quick look: preview bands with the class map, decimated to at most 1024 px on a side."""
    H, W = reader.grid.height, reader.grid.width
    scale = max(1, int(np.ceil(max(H, W) / 1024)))
    rgb_idx = [profile.band_names.index(b) for b in profile.preview_rgb if b in profile.band_names]
    rgb_idx = (rgb_idx or [0, 0, 0])[:3]
    img = reader.read_window(Window(0, 0, W, H))[rgb_idx][:, ::scale, ::scale]
    with rasterio.open(class_path) as src:
        ids = src.read(1)[::scale, ::scale]
    save_overlay(stretch(np.moveaxis(img, 0, -1)), ids, classes, num_classes, png)


# -- CT -------------------------------------------------------------------------------------------
def predict_ct_volume(
    predict_fn: PredictFn,
    nifti_path: str,
    spacing: Sequence[float],
    window: Sequence[float],
    roi: int,
    num_classes: int,
    output_dir: str | Path,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    classes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict a NIfTI volume; the class map is saved on the *input* grid with its affine."""
    src = load_nifti(nifti_path)
    resampled, new_affine = stored_grid(src.data, src.affine, tuple(spacing))
    hu, _ = to_int16_hu(resampled)
    lo, hi = float(window[0]), float(window[1])
    image = np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1)
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(image)[None, None],
            roi_size=(roi,) * 3,
            sw_batch_size=sw_batch_size,
            predictor=predict_fn,
            overlap=overlap,
            mode="gaussian",
        )
    class_ids = (classes or {}).get("ids") or range(num_classes)
    pred = predicted_ids(logits[0], class_ids, dim=0).numpy().astype(np.float32)  # [X', Y', Z']
    # back onto the input's voxel grid (nearest; through world coordinates)
    orig = resample_label(pred, new_affine, np.asarray(src.affine), src.data.shape[:3])
    orig = orig.astype(np.uint8 if num_classes <= 256 else np.uint16)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(nifti_path).name.split(".")[0]
    out_path = out_dir / f"{stem}_classes.nii.gz"
    img = nib.Nifti1Image(orig, np.asarray(src.affine))
    img.set_qform(np.asarray(src.affine), code=1)
    img.set_sform(np.asarray(src.affine), code=1)
    nib.save(img, out_path)
    classes = classes or {}
    z = image.shape[2] // 2
    png = out_dir / f"{stem}_overlay.png"
    gray = np.repeat(np.rot90(image[:, :, z])[..., None], 3, -1)
    save_overlay(gray, np.rot90(pred[:, :, z].astype(np.int64)), classes, num_classes, png)
    table = out_dir / f"{stem}_classes.ctbl"
    write_slicer_color_table(table, classes, num_classes)
    return {
        "classes": str(out_path),
        "overlay": str(png),
        "color_table": str(table),
        "shape": tuple(orig.shape),
    }


def write_slicer_color_table(path: Path, classes: dict[str, Any], num_classes: int) -> None:
    """The class table as a 3D Slicer colour table (``id name R G B A`` per line), so Slicer
    shows the label map's segments with the trained names and colours."""
    ids = [int(i) for i in classes.get("ids") or range(num_classes)]
    names = list(classes.get("names") or [f"class_{i}" for i in ids])
    palette = class_colors(classes, num_classes)
    lines = [f"# Color table file {path.name}", f"# {len(ids)} values"]
    for i, name in zip(ids, names, strict=False):
        r, g, b = (int(v) for v in palette[i])
        label = "_".join(str(name).split()) or f"class_{i}"  # Slicer splits on spaces
        lines.append(f"{i} {label} {r} {g} {b} 255")
    path.write_text("\n".join(lines) + "\n")
