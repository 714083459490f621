"""Fixed sin-cos position embeddings for 2-D and 3-D patch grids, with an optional class slot.

The 2-D functions follow the MAE reference (``util/pos_embed.py``) value for value, including its
axis convention (the first half of the channels encodes the *column*, the second the row), so
weights pretrained with the reference keep their meaning here. The 3-D version extends the same
construction with one block of channels per axis (depth, height, width).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """``embed_dim`` channels for each position in ``pos``: [sin(pos*w_k)..., cos(pos*w_k)...]."""
    if embed_dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega  # [D/2]
    pos = pos.reshape(-1)  # [M]
    out = np.einsum("m,d->md", pos, omega)  # [M, D/2], outer product
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [M, D]


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_size: int | Sequence[int], cls_token: bool = False, scale: float = 1.0
) -> np.ndarray:
    """[(1 +) gh*gw, D] embedding of a row-major 2-D grid; the class slot (if any) is zeros.
    ``scale`` multiplies the patch positions (1: the reference)."""
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    grid_h = np.arange(gh, dtype=np.float32) * scale
    grid_w = np.arange(gw, dtype=np.float32) * scale
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first, as in the reference
    grid = np.stack(grid, axis=0).reshape(2, 1, gh, gw)
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # [gh*gw, D/2]
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # [gh*gw, D/2]
    pos_embed = np.concatenate([emb_h, emb_w], axis=1)  # [gh*gw, D]
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


def split_dim_3d(embed_dim: int) -> tuple[int, int, int]:
    """Even channel counts per axis (depth, height, width) that add up to ``embed_dim``."""
    if embed_dim % 2:
        raise ValueError(f"3-D sin-cos embedding needs an even dimension, got {embed_dim}")
    part = (embed_dim // 6) * 2
    return part, part, embed_dim - 2 * part


def get_3d_sincos_pos_embed(
    embed_dim: int, grid_size: int | Sequence[int], cls_token: bool = False, scale: float = 1.0
) -> np.ndarray:
    """[(1 +) gd*gh*gw, D] embedding of a row-major (d, h, w) grid; class slot zeros.
    ``scale`` multiplies the patch positions."""
    gd, gh, gw = (grid_size,) * 3 if isinstance(grid_size, int) else tuple(grid_size)
    dims = split_dim_3d(embed_dim)
    axes = np.meshgrid(
        np.arange(gd, dtype=np.float32) * scale,
        np.arange(gh, dtype=np.float32) * scale,
        np.arange(gw, dtype=np.float32) * scale,
        indexing="ij",
    )  # each [gd, gh, gw], row-major like the patch sequence
    parts = [get_1d_sincos_pos_embed_from_grid(d, a) for d, a in zip(dims, axes, strict=True)]
    pos_embed = np.concatenate(parts, axis=1)  # [gd*gh*gw, D]
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


def get_sincos_pos_embed(
    embed_dim: int, grid_size: Sequence[int], cls_token: bool = False, scale: float = 1.0
) -> np.ndarray:
    """Dispatch on the grid's rank: 2 → :func:`get_2d_sincos_pos_embed`, 3 → the 3-D one.

    ``scale`` multiplies the patch positions. The frequencies run from 1 to 1/10000 per
    position; on a grid of a few patches (4³ in the CT demo) only the fastest few vary at all
    and the rest add the same vector to every token, so neighbours are hard to tell apart.
    Positions spaced ``scale`` apart spread the grid over the frequencies as a grid ``scale``
    times wider would be."""
    if len(grid_size) == 2:
        return get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token, scale)
    if len(grid_size) == 3:
        return get_3d_sincos_pos_embed(embed_dim, grid_size, cls_token, scale)
    raise ValueError(f"grid must be 2-D or 3-D, got {tuple(grid_size)}")
