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


# -- coarse bands onto a finer grid, nodata masked ------------------------------------------------
def _bilinear_taps(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i0 = np.floor(t).astype(int)
    frac = t - i0
    return np.stack([i0, i0 + 1], 1), np.stack([1 - frac, frac], 1)


def _cubic_taps(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Keys' kernel with a = -0.5, the one GDAL's "cubic" uses
    i0 = np.floor(t).astype(int)
    taps = i0[:, None] + np.arange(-1, 3)[None, :]
    d = np.abs(t[:, None] - taps)
    a = -0.5
    near = (a + 2) * d**3 - (a + 3) * d**2 + 1
    far = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return taps, np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def sample_weights(start: float, step: float, n_out: int, n_in: int, kind: str) -> np.ndarray:
    """``[n_out, n_in]`` interpolation weights along one axis: output pixel ``i`` has its centre
    at source coordinate ``start + (i + 0.5) * step`` (source pixel ``j`` spans ``[j, j+1)``).
    Taps beyond the source edge get no weight (rows there sum to less than one): the caller
    renormalises over the taps it has, as GDAL does at an image's edge."""
    centres = start + (np.arange(n_out) + 0.5) * step
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)[:, None]
    if kind == "average":
        lo, hi = centres - step / 2, centres + step / 2
        j = np.arange(n_in)
        overlap = np.minimum(hi[:, None], j + 1) - np.maximum(lo[:, None], j)
        weights = np.clip(overlap, 0, None)
        return weights / np.maximum(weights.sum(1, keepdims=True), 1e-12)
    if kind == "bilinear":
        taps, w = _bilinear_taps(centres - 0.5)
    elif kind == "cubic":
        taps, w = _cubic_taps(centres - 0.5)
    else:
        raise ValueError(f"no masked resampling kernel for {kind!r}")
    inside = (taps >= 0) & (taps < n_in)
    np.add.at(weights, (np.broadcast_to(rows, taps.shape)[inside], taps[inside]), w[inside])
    return weights


def masked_resample(
    values: np.ndarray, valid: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate ``values [h, w]`` with the separable weights ``rows [H, h]`` and
    ``cols [W, w]`` from its ``valid`` pixels only (each output is the weighted mean of its
    valid taps). Returns ``(resampled [H, W] float64, kept [H, W])``: an output pixel is kept
    when the source pixel under its centre is valid, so nodata stays nodata and no value is
    invented beyond the data's edge."""
    v = np.where(valid, values.astype(np.float64), 0.0)
    m = valid.astype(np.float64)
    total = rows @ v @ cols.T
    cover = rows @ m @ cols.T
    # the largest weight of each of these kernels is the tap under the output's centre
    under = valid[np.argmax(rows, 1)[:, None], np.argmax(cols, 1)[None, :]]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / cover
    kept = under & (np.abs(cover) > 1e-6)
    return np.where(kept, out, np.nan), kept
