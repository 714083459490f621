"""PNG previews of MIM training: input, masked input, reconstruction, reconstruction + visible,
one row per sample, each column titled."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from geomed_mim.models.patches import patchify, unpatchify

PANEL_TITLES = ("input", "masked", "reconstruction", "recon. + visible")
TITLE_HEIGHT = 20


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
    """Stretch all panels with the 2nd-98th percentile of the first (the input)."""
    ref = panels[0].float()
    flat = ref.reshape(ref.shape[0], -1)
    lo = torch.quantile(flat, 0.02, dim=1).view(-1, 1, 1)
    hi = torch.quantile(flat, 0.98, dim=1).view(-1, 1, 1)
    out = []
    for p in panels:
        x = ((p.float() - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        x = (x * 255).round().byte().permute(1, 2, 0).numpy()  # [H, W, c]
        out.append(np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x)
    return out


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
) -> np.ndarray:
    """A grid, one row per sample: input | masked | reconstruction | reconstruction + visible,
    under a strip of column titles (:data:`PANEL_TITLES`)."""
    images = images.detach().float().cpu()
    pred = pred.detach().float().cpu()  # [B, L, P]
    mask = mask.detach().float().cpu()  # [B, L]
    C = images.shape[1]
    if norm_pix_loss:  # back from per-patch normalized space, with the input's patch stats
        target = patchify(images, patch_size)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    recon = unpatchify(pred, patch_size, grid_size, C)
    patch_numel = int(np.prod(patch_size)) * C
    mask_img = unpatchify(mask.unsqueeze(-1).expand(-1, -1, patch_numel), patch_size, grid_size, C)
    masked = images * (1 - mask_img)
    pasted = images * (1 - mask_img) + recon * mask_img
    rows = []
    for i in range(images.shape[0]):
        panels = [display_channels(t[i], preview_bands) for t in (images, masked, recon, pasted)]
        pix = to_uint8(panels)
        pix[1][display_channels(mask_img[i], [0])[0].numpy() > 0.5] = 64  # masked → dark grey
        gap = np.full((pix[0].shape[0], 2, 3), 255, np.uint8)
        rows.append(
            np.concatenate(
                functools.reduce(operator.iadd, ([p, gap] for p in pix), [])[:-1], axis=1
            )
        )
    hgap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate(
        functools.reduce(operator.iadd, ([r, hgap] for r in rows), [])[:-1], axis=0
    )
    grid = np.kron(grid, np.ones((scale, scale, 1), dtype=np.uint8))
    panel = pix[0].shape[1] * scale
    step = panel + 2 * scale  # a panel and the gap after it
    spans = [(k * step, k * step + panel, t) for k, t in enumerate(PANEL_TITLES)]
    return np.concatenate([title_strip(grid.shape[1], spans), grid], axis=0)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
