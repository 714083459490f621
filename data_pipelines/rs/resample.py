"""Crops brought to the store's training size: area averaging for values, nearest for classes.

Area averaging is exact for any ratio: a stored pixel is the mean of the scene pixels its
footprint covers, each weighted by the covered fraction (separable, so one weight matrix per
axis). Nodata pixels carry no weight; a stored pixel that covers only nodata stays nodata.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: the fraction of output pixel ``i``'s footprint that input pixel ``j``
    covers (rows sum to one). Works for shrinking and enlarging."""
    scale = n_in / n_out
    lo = np.arange(n_out) * scale  # footprint of output pixel i: [lo, lo + scale)
    hi = lo + scale
    j = np.arange(n_in)
    overlap = np.clip(np.minimum(hi[:, None], j[None, :] + 1) - np.maximum(lo[:, None], j), 0, None)
    weights = overlap / scale
    weights.setflags(write=False)
    return weights


def area_average(
    tiles: np.ndarray, size: int, nodata: float | None, out_dtype: np.dtype
) -> np.ndarray:
    """``[n, C, S, S]`` -> ``[n, C, size, size]`` by area averaging, ignoring ``nodata`` (and
    NaN). Integer outputs are rounded to the nearest value."""
    s, s2 = tiles.shape[-2:]
    assert s == s2, "square crops only"
    weights = area_weights(s, size)  # [size, S]
    x = tiles.astype(np.float64)
    valid = np.isfinite(x)
    if nodata is not None:
        valid &= x != nodata
    x = np.where(valid, x, 0.0)
    total = np.einsum("ij,ncjk,lk->ncil", weights, x, weights, optimize=True)
    cover = np.einsum("ij,ncjk,lk->ncil", weights, valid.astype(np.float64), weights, optimize=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / cover
    empty = cover <= 1e-12
    out_dtype = np.dtype(out_dtype)
    if np.issubdtype(out_dtype, np.integer):
        info = np.iinfo(out_dtype)
        mean = np.clip(np.rint(np.where(empty, 0, mean)), info.min, info.max)
        fill = nodata if nodata is not None else 0
    else:
        fill = nodata if nodata is not None else np.nan
    return np.where(empty, fill, mean).astype(out_dtype)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """The input pixel under each output pixel's centre."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)


def nearest(tiles: np.ndarray, size: int) -> np.ndarray:
    """``[..., S, S]`` -> ``[..., size, size]`` by nearest neighbour (class ids, QA flags)."""
    idx = nearest_indices(tiles.shape[-1], size)
    return tiles[..., idx[:, None], idx[None, :]]
