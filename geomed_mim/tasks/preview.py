"""PNG previews of MIM training: input, masked input, reconstruction and its error, one row per
sample, each column titled."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from geomed_mim.models.patches import patchify, unpatchify

PANEL_TITLES = ("input", "masked input", "reconstruction", "error |recon - input|")
TITLE_HEIGHT = 20
ERROR_SCALE = 2.0  # the error panel is white at this many input standard deviations (or more)
MASKED_GREY = 64  # patches the model did not see (masked input) or did not predict


def title_strip(width: int, titles: Sequence[tuple[int, int, str]]) -> np.ndarray:
    """A white [TITLE_HEIGHT, width, 3] strip with each title centred on its (x0, x1) span."""
    strip = Image.new("RGB", (width, TITLE_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=13)
    for x0, x1, text in titles:
        x = x0 + max((x1 - x0 - draw.textlength(text, font=font)) / 2, 0)
        draw.text((x, 3), text, fill="black", font=font)
    return np.asarray(strip)


def display_channels(image: torch.Tensor, preview_bands: Sequence[int]) -> torch.Tensor:
    """[C, *spatial] → [3 or 1, H, W]: the chosen bands, middle depth slice for volumes."""
    if image.dim() == 4:  # [C, D, H, W] → middle slice
        image = image[:, image.shape[1] // 2]
    bands = [b for b in preview_bands if b < image.shape[0]]
    if len(bands) not in (1, 3):
        bands = list(range(min(3, image.shape[0]))) if image.shape[0] >= 3 else [0]
    return image[bands]


def to_uint8(panels: list[torch.Tensor]) -> list[np.ndarray]:
    """Stretch all panels with the 2nd-98th percentile of the first (the input), per band."""
    ref = panels[0].float()
    flat = ref.reshape(ref.shape[0], -1)
    lo = torch.quantile(flat, 0.02, dim=1).view(-1, 1, 1)
    hi = torch.quantile(flat, 0.98, dim=1).view(-1, 1, 1)
    return [gray_to_rgb(((p.float() - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)) for p in panels]


def gray_to_rgb(x: torch.Tensor) -> np.ndarray:
    """[c, H, W] in [0, 1] → uint8 [H, W, 3]."""
    x = (x * 255).round().byte().permute(1, 2, 0).numpy()  # [H, W, c]
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


def reconstruction(
    images: torch.Tensor,
    pred: torch.Tensor,
    patch_size: Sequence[int],
    norm_pix_loss: bool,
    norm_pix_eps: float = 1e-6,
) -> torch.Tensor:
    """Predicted patches [B, L, P] in the images' units: per-patch normalized predictions are
    scaled back with the input patch's mean and std (the target's own statistics)."""
    if norm_pix_loss:
        target = patchify(images, patch_size)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + norm_pix_eps) ** 0.5 + mean
    return pred


@torch.no_grad()
def render_preview(
    images: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    patch_size: Sequence[int],
    grid_size: Sequence[int],
    norm_pix_loss: bool,
    preview_bands: Sequence[int] = (),
    scale: int = 4,
    predicted: torch.Tensor | None = None,
    norm_pix_eps: float = 1e-6,
) -> np.ndarray:
    """A grid, one row per sample, under a strip of column titles (:data:`PANEL_TITLES`):

    * input, and the masked input (patches the encoder did not see in dark grey);
    * the reconstruction: visible patches as they are, predicted patches from the model, both
      in the input's units and with the input's stretch; masked patches the model was not asked
      to predict (SelectiveMAE reconstructs a subset) stay dark grey;
    * the error: mean |reconstruction - input| over all bands of each predicted pixel, black at
      0 and white at :data:`ERROR_SCALE` (images are standardized: input standard deviations).

    ``predicted`` [B, L] marks the patches ``pred`` holds (default: ``mask``); ``norm_pix_eps``
    is the model's (normalized predictions are scaled back with it). Each band is
    stretched by the input's own 2nd-98th percentiles, so a training augmentation that shifts
    whole bands (``band_shift_std``) does not change the picture.
    """
    images = images.detach().float().cpu()
    mask = mask.detach().float().cpu()  # [B, L]
    predicted = mask if predicted is None else predicted.detach().float().cpu()
    C = images.shape[1]
    pred = pred.detach().float().cpu()
    recon = reconstruction(images, pred, patch_size, norm_pix_loss, norm_pix_eps)
    recon = unpatchify(recon, patch_size, grid_size, C)

    def per_pixel(flags: torch.Tensor) -> torch.Tensor:  # [B, L] → [B, C, *spatial]
        n = int(np.prod(patch_size)) * C
        return unpatchify(flags.unsqueeze(-1).expand(-1, -1, n), patch_size, grid_size, C)

    hidden, shown_pred = per_pixel(mask), per_pixel(predicted)
    pasted = images * (1 - shown_pred) + recon * shown_pred
    error = ((pasted - images).abs().mean(dim=1, keepdim=True) / ERROR_SCALE).clamp(0, 1)
    rows = []
    for i in range(images.shape[0]):
        panels = [display_channels(t[i], preview_bands) for t in (images, images, pasted)]
        pix = to_uint8(panels)
        unseen = display_channels(hidden[i], [0])[0].numpy() > 0.5
        pix[1][unseen] = MASKED_GREY
        pix[2][unseen & ~(display_channels(shown_pred[i], [0])[0].numpy() > 0.5)] = MASKED_GREY
        pix.append(gray_to_rgb(display_channels(error[i], [0])))
        rows.append(join(pix, axis=1))
    grid = np.kron(join(rows, axis=0), np.ones((scale, scale, 1), dtype=np.uint8))
    panel = pix[0].shape[1] * scale
    step = panel + 2 * scale  # a panel and the gap after it
    spans = [(k * step, k * step + panel, t) for k, t in enumerate(PANEL_TITLES)]
    return np.concatenate([title_strip(grid.shape[1], spans), grid], axis=0)


def join(arrays: list[np.ndarray], axis: int) -> np.ndarray:
    """Concatenate uint8 [H, W, 3] arrays along ``axis`` with a 2-pixel white gap between."""
    gap_shape = list(arrays[0].shape)
    gap_shape[axis] = 2
    gap = np.full(gap_shape, 255, np.uint8)
    parts = functools.reduce(operator.iadd, ([a, gap] for a in arrays), [])[:-1]
    return np.concatenate(parts, axis=axis)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
