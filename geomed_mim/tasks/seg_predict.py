"""Whole-scene / whole-volume prediction written as files a user can open.

* RS: a scene GeoTIFF is read window by window with the store's sensor profile and calibration,
  standardized, predicted tile by tile with overlap and Gaussian blending into a disk-backed
  (memmap) logit accumulator, so scenes larger than memory work; written as a uint8/uint16
  GeoTIFF of class ids with the scene's CRS and transform (+ optional float32 probabilities).
* CT: a NIfTI is loaded as the build does (RAS, resampled to the store spacing), predicted with
  MONAI sliding-window inference (Gaussian, configurable overlap), and the class map is
  resampled back (nearest) onto the input grid and saved with the input's affine.
* A PNG overlay (image + class colours) for a quick look.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

PredictFn = Callable[[torch.Tensor], torch.Tensor]  # [B, C, *S] → logits [B, K, *S]


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


def save_overlay(
    rgb: np.ndarray, class_map: np.ndarray, palette: np.ndarray, path: Path, ignore: int
) -> None:
    """rgb float [H, W, 3] in [0, 1], class ids [H, W] → side by side: image | overlay."""
    color = palette[np.clip(class_map, 0, len(palette) - 1)].astype(np.float32) / 255
    alpha = np.where(class_map == ignore, 0.0, 0.5)[..., None]
    over = rgb * (1 - alpha) + color * alpha
    both = np.concatenate([rgb, over], axis=1)
    Image.fromarray((np.clip(both, 0, 1) * 255).astype(np.uint8)).save(path)


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
    """Predict one scene; returns the written paths and the grid. See the module docstring."""
    import rasterio
    from rasterio.windows import Window

    from data_pipelines.rs.discover import discover_scenes
    from data_pipelines.rs.profiles import load_profile
    from data_pipelines.rs.reader import SceneReader
    from data_pipelines.rs.toa import make_calibrator

    profile = load_profile((store_attrs.get("profile") or {})["name"])
    mode = (store_attrs.get("calibration") or {}).get("mode", "none")
    scenes = discover_scenes(scene_path, profile).scenes
    if len(scenes) != 1:
        raise ValueError(f"{scene_path}: expected one scene, found {len(scenes)}")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(scene_path).name.split(".")[0]
    mean_a = np.asarray(mean, np.float32)[:, None, None]
    std_a = np.asarray(std, np.float32)[:, None, None]
    weight = gaussian_weight(tile)
    classes = classes or {}
    with SceneReader(scenes[0], profile) as reader:
        grid = reader.grid
        calibrator = make_calibrator(profile, mode, reader.tags(), scenes[0].metadata_files)
        H, W = grid.height, grid.width
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".acc_") as tmp:
            # disk-backed accumulators: the scene's logits never need to fit in memory
            acc = np.lib.format.open_memmap(
                Path(tmp) / "acc.npy", "w+", np.float32, (num_classes, H, W)
            )
            wsum = np.lib.format.open_memmap(Path(tmp) / "w.npy", "w+", np.float32, (H, W))
            boxes = [
                (r, c)
                for r in window_starts(H, tile, overlap)
                for c in window_starts(W, tile, overlap)
            ]
            for b0 in range(0, len(boxes), batch_size):
                chunk = boxes[b0 : b0 + batch_size]
                batch = np.zeros((len(chunk), len(mean), tile, tile), np.float32)  # padded edges
                for k, (r, c) in enumerate(chunk):
                    h, w = min(tile, H - r), min(tile, W - c)
                    raw = reader.read_window(Window(c, r, w, h))  # [C, h, w]
                    vals = calibrator.apply(raw) if calibrator else raw.astype(np.float32)
                    batch[k, :, :h, :w] = np.nan_to_num((vals - mean_a) / std_a)
                with torch.no_grad():
                    logits = predict_fn(torch.from_numpy(batch)).float().cpu().numpy()
                for k, (r, c) in enumerate(chunk):
                    h, w = min(tile, H - r), min(tile, W - c)
                    acc[:, r : r + h, c : c + w] += logits[k, :, :h, :w] * weight[:h, :w]
                    wsum[r : r + h, c : c + w] += weight[:h, :w]
            profile_out = {
                "driver": "GTiff",
                "height": H,
                "width": W,
                "count": 1,
                "dtype": "uint8" if num_classes <= 256 else "uint16",
                "crs": grid.crs or None,
                "transform": grid.transform,
                "compress": "deflate",
                "tiled": True,
                "blockxsize": 256,
                "blockysize": 256,
            }
            if W < 256 or H < 256:
                profile_out.update(tiled=False, blockxsize=None, blockysize=None)
                profile_out = {k: v for k, v in profile_out.items() if v is not None}
            class_path = out_dir / f"{stem}_classes.tif"
            prob_path = out_dir / f"{stem}_probabilities.tif"
            strip = 512
            with rasterio.open(class_path, "w", **profile_out) as dst:
                probs_dst = None
                if write_probabilities:
                    probs_dst = rasterio.open(
                        prob_path, "w", **{**profile_out, "count": num_classes, "dtype": "float32"}
                    )
                try:
                    for r in range(0, H, strip):
                        h = min(strip, H - r)
                        logit = torch.from_numpy(acc[:, r : r + h] / wsum[r : r + h][None])
                        ids = logit.argmax(0).numpy().astype(profile_out["dtype"])
                        dst.write(ids, 1, window=Window(0, r, W, h))
                        if probs_dst is not None:
                            p = logit.softmax(0).numpy()
                            probs_dst.write(p, window=Window(0, r, W, h))
                finally:
                    if probs_dst is not None:
                        probs_dst.close()
            del acc, wsum
        # quick look: preview bands, decimated to at most 1024 px on a side
        scale = max(1, int(np.ceil(max(H, W) / 1024)))
        rgb_idx = [
            profile.band_names.index(b) for b in profile.preview_rgb if b in profile.band_names
        ]
        rgb_idx = (rgb_idx or [0, 0, 0])[:3]
        img = reader.read_window(Window(0, 0, W, H))[rgb_idx][:, ::scale, ::scale]
    with rasterio.open(class_path) as src:
        ids = src.read(1)[::scale, ::scale]
    png = out_dir / f"{stem}_overlay.png"
    save_overlay(
        stretch(np.moveaxis(img, 0, -1)),
        ids,
        class_colors(classes, num_classes),
        png,
        int(classes.get("ignore_index", 255)),
    )
    return {
        "classes": str(class_path),
        "probabilities": str(prob_path) if write_probabilities else None,
        "overlay": str(png),
        "shape": (H, W),
    }


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
    import nibabel as nib
    from monai.inferers import sliding_window_inference

    from data_pipelines.ct.volume import (
        load_nifti,
        resample_image,
        resample_label,
        round_affine,
        to_int16_hu,
        to_ras,
    )

    src = load_nifti(nifti_path)
    data, affine = to_ras(src.data, src.affine)
    resampled, new_affine = resample_image(data, round_affine(affine), tuple(spacing))
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
    pred = logits[0].argmax(0).numpy().astype(np.float32)  # [X', Y', Z'] on the RAS grid
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
    save_overlay(
        np.repeat(np.rot90(image[:, :, z])[..., None], 3, -1),
        np.rot90(pred[:, :, z].astype(np.int64)),
        class_colors(classes, num_classes),
        png,
        int(classes.get("ignore_index", 255)),
    )
    return {"classes": str(out_path), "overlay": str(png), "shape": tuple(orig.shape)}
