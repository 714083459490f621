"""Patch sequences: images to patch vectors and back, and per-sample token gathers.

Shared by the models (targets, previews), the encoder (keeping a subset of tokens) and token
choice (semantic selection reads raw patch pixels), so it imports nothing else of the package.
Patch values are ordered (p, p, C) in 2-D (MAE's ``'nchpwq->nhwpqc'``) and (p, p, p, C) in 3-D;
patches run row-major over the grid ((d,) h, w), as the patch embedding emits them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def patchify(imgs: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """[B, C, H, W] → [B, L, p*p*C]; [B, C, D, H, W] → [B, L, p*p*p*C] (channels last)."""
    B, C = imgs.shape[:2]
    if imgs.dim() == 4:
        ph, pw = patch_size
        h, w = imgs.shape[2] // ph, imgs.shape[3] // pw
        x = imgs.reshape(B, C, h, ph, w, pw)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(B, h * w, ph * pw * C)  # [B, L, p*p*C]
    if imgs.dim() == 5:
        pd, ph, pw = patch_size
        d, h, w = imgs.shape[2] // pd, imgs.shape[3] // ph, imgs.shape[4] // pw
        x = imgs.reshape(B, C, d, pd, h, ph, w, pw)
        x = torch.einsum("ncdohpwq->ndhwopqc", x)
        return x.reshape(B, d * h * w, pd * ph * pw * C)  # [B, L, p*p*p*C]
    raise ValueError(f"expected a 4-D or 5-D batch, got {list(imgs.shape)}")


def unpatchify(
    x: torch.Tensor, patch_size: Sequence[int], grid_size: Sequence[int], in_chans: int
) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, L, prod(p)*C] → [B, C, *spatial]."""
    B = x.shape[0]
    if len(grid_size) == 2:
        (h, w), (ph, pw) = grid_size, patch_size
        x = x.reshape(B, h, w, ph, pw, in_chans)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(B, in_chans, h * ph, w * pw)  # [B, C, H, W]
    (d, h, w), (pd, ph, pw) = grid_size, patch_size
    x = x.reshape(B, d, h, w, pd, ph, pw, in_chans)
    x = torch.einsum("ndhwopqc->ncdohpwq", x)
    return x.reshape(B, in_chans, d * pd, h * ph, w * pw)  # [B, C, D, H, W]


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-sample token gather: x [B, L, D], idx [B, K] → [B, K, D]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
