"""Semantic-richness score per patch: a HOG-style descriptor over all bands, 2-D and 3-D.

SelectiveMAE (OpticalRS-13M) picks the patches the encoder sees by how much structure they hold.
The released code computes a HOG vector per patch, standardizes it *within* the patch and then
averages it — a mean of a standardized vector is ~0 for every patch, so its softmax is uniform and
the "selection" is random sampling. It also hard-codes 3 channels and a 14×14 grid.

Here, for ``images`` [B, C, *spatial] (2-D or 3-D, any C, any grid):

1. gradients per band by central differences *inside each patch* (one-sided at the patch's own
   border): a patch's score depends on its pixels only, so a flat patch next to texture stays
   flat (a difference across the border would give it its neighbour's edge);
2. each band's gradient magnitudes are divided by that band's mean magnitude over the image, so
   every band counts alike whatever its units, and a band that is flat everywhere counts zero;
3. orientation histograms per patch (HOG cells = patches), summed over bands:
   2-D: ``num_bins`` unsigned orientations in [0, π) with linear interpolation between bins
   (Dalal–Triggs); 3-D: the 13 unsigned directions of a 3×3×3 neighbourhood, soft-assigned by
   ``|cos|^4`` (normalized to sum 1 per voxel);
4. per patch: gradient energy ``E`` (the histogram's L1 mass) times an orientation-spread factor
   ``(1 - w) + w · H / log(K)`` (``H`` the entropy of the normalized histogram): texture and
   corners (many orientations) rank above a single straight edge of the same energy;
5. richness ``r = E' / mean_L(E')`` (per image, mean 1; 0 on flat patches) and the score
   ``s = log(r + floor)``. Then ``softmax(s / T) ∝ (r + floor)^(1/T)``: T = 1 samples patches in
   proportion to their richness, T → 0 takes the richest, T → ∞ is uniform; ``floor`` keeps flat
   patches possible but rare.

All of it is a handful of elementwise passes and a scatter-add (2-D) or one small matmul and a
reshape-sum (3-D); no Python loop over patches or samples. (Image-band rows are processed in
chunks of ~16M pixels only to bound the memory of the per-pixel temporaries.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch


def central_gradients(x: torch.Tensor) -> list[torch.Tensor]:
    """[B, C, *spatial] → one gradient per spatial axis, each [B, C, *spatial]."""
    grads = []
    for axis in range(2, x.dim()):
        n = x.shape[axis]
        if n < 2:
            grads.append(torch.zeros_like(x))
            continue
        fwd = x.narrow(axis, 1, n - 1) - x.narrow(axis, 0, n - 1)  # [.., n-1, ..]
        # central difference inside, one-sided at both ends (np.gradient's edge_order=1)
        inner = (fwd.narrow(axis, 1, n - 2) + fwd.narrow(axis, 0, n - 2)) / 2
        grads.append(
            torch.cat([fwd.narrow(axis, 0, 1), inner, fwd.narrow(axis, n - 2, 1)], dim=axis)
        )
    return grads


def within_patch_gradients(x: torch.Tensor, patch_size: Sequence[int]) -> list[torch.Tensor]:
    """:func:`central_gradients` of every patch on its own: x [N, 1, *spatial] (whole patches)
    → one gradient per spatial axis, each [N, 1, *spatial]."""
    n, dims = x.shape[0], x.dim() - 2
    grid = [s // p for s, p in zip(x.shape[2:], patch_size, strict=True)]
    split = [v for g, p in zip(grid, patch_size, strict=True) for v in (g, p)]
    to_patches = [0, *(1 + 2 * a for a in range(dims)), *(2 + 2 * a for a in range(dims))]
    cells = x.reshape(n, *split).permute(to_patches)  # [N, *grid, *patch]
    cells = cells.reshape(-1, 1, *patch_size)  # [N·L, 1, *patch]
    back = [0] + [v for a in range(dims) for v in (1 + a, 1 + dims + a)]
    return [
        g.reshape(n, *grid, *patch_size).permute(back).reshape(x.shape)  # [N, 1, *spatial]
        for g in central_gradients(cells)
    ]


def direction_bins_3d(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The 13 unsigned directions of a 3×3×3 neighbourhood, unit vectors [13, 3]."""
    dirs = [
        d
        for d in itertools.product((-1, 0, 1), repeat=3)
        if d > (0, 0, 0)  # one of each ± pair: 3 axes, 6 face and 4 body diagonals
    ]
    u = torch.tensor(dirs, dtype=dtype, device=device)
    return u / u.norm(dim=1, keepdim=True)


def _patch_ids(spatial: Sequence[int], patch_size: Sequence[int], device) -> torch.Tensor:
    """Patch index (patchify's order) of every pixel/voxel: [*spatial] long."""
    grid = [s // p for s, p in zip(spatial, patch_size, strict=True)]
    ids = torch.zeros((), dtype=torch.long, device=device)
    for axis, (s, p, g) in enumerate(zip(spatial, patch_size, grid, strict=True)):
        coord = torch.arange(s, device=device) // p  # [s]
        shape = [1] * len(spatial)
        shape[axis] = s
        ids = ids * g + coord.view(shape)
    return ids


def _band_histograms(
    rows: torch.Tensor, patch_size: Sequence[int], num_bins: int, eps: float
) -> torch.Tensor:
    """Histograms of single bands: rows [N, 1, *spatial] (one band of one image each) →
    [N, L, K]; each row's magnitudes are scaled to unit mean first."""
    N = rows.shape[0]
    grid = [s // p for s, p in zip(rows.shape[2:], patch_size, strict=True)]
    L = math.prod(grid)
    grads = within_patch_gradients(rows, patch_size)  # spatial_dims × [N, 1, *spatial]
    raw = torch.sqrt(sum(g * g for g in grads))  # [N, 1, *spatial] |gradient|
    # per band and image: unit mean magnitude, so bands count alike; a flat band stays 0
    band_scale = raw.flatten(1).mean(dim=1).clamp_min(eps)  # [N]
    mag = raw / band_scale.view(N, *([1] * (rows.dim() - 1)))
    if rows.dim() == 4:
        gy, gx = grads
        # unsigned orientation in [0, π) → fractional bin position, centres at (k + 0.5)·π/K;
        # linear interpolation between the two nearest (circular) bins, scattered per patch
        pos = torch.remainder(torch.atan2(gy, gx), math.pi) * (num_bins / math.pi) - 0.5
        lo = torch.floor(pos)
        frac = pos - lo
        lo = torch.remainder(lo.long(), num_bins)  # [N, 1, H, W]
        base = (_patch_ids(rows.shape[2:], patch_size, rows.device) * num_bins).expand_as(lo)
        hist = torch.zeros(N, L * num_bins, device=rows.device)
        hist.scatter_add_(1, (base + lo).flatten(1), (mag * (1 - frac)).flatten(1))
        hist.scatter_add_(
            1, (base + torch.remainder(lo + 1, num_bins)).flatten(1), (mag * frac).flatten(1)
        )
        return hist.view(N, L, num_bins)
    # 3-D: soft assignment of each voxel's unit gradient to 13 directions by |cos|^4 (one
    # small matmul), then a reshape-sum per patch
    u = direction_bins_3d(rows.device, rows.dtype)  # [13, 3]
    unit = torch.stack(grads, dim=-1) / raw.clamp_min(eps).unsqueeze(-1)  # [N, 1, D, H, W, 3]
    cos4 = (unit @ u.T) ** 4  # [N, 1, D, H, W, 13]
    w = cos4 * (mag / cos4.sum(-1).clamp_min(eps)).unsqueeze(-1)
    (pd, ph, pw), (d, h, w_) = patch_size, grid
    w = w.view(N, d, pd, h, ph, w_, pw, u.shape[0]).sum(dim=(2, 4, 6))  # [N, d, h, w, 13]
    return w.reshape(N, L, u.shape[0])


@torch.no_grad()
def orientation_histograms(
    images: torch.Tensor,
    patch_size: Sequence[int],
    num_bins: int = 9,
    eps: float = 1e-6,
    chunk_elements: int = 2**24,
) -> torch.Tensor:
    """HOG-style histograms per patch, summed over bands: [B, L, K] (K = num_bins or 13 in 3-D).

    Values are sums of (band-normalized) gradient magnitude per patch and orientation bin. The
    (image, band) rows are processed in chunks of about ``chunk_elements`` pixels, so the
    per-pixel temporaries stay bounded whatever the batch and band count (a loop over chunks of
    rows, never over patches).
    """
    if images.dim() not in (4, 5):
        raise ValueError(f"expected a 4-D or 5-D batch, got {list(images.shape)}")
    B, C = images.shape[:2]
    grid = [s // p for s, p in zip(images.shape[2:], patch_size, strict=True)]
    # drop a remainder that does not fill a whole patch (patchify ignores it too)
    x = images[(..., *(slice(0, g * p) for g, p in zip(grid, patch_size, strict=True)))]
    rows = x.reshape(B * C, 1, *x.shape[2:])  # one (image, band) per row
    per_row = math.prod(x.shape[2:]) * (13 if x.dim() == 5 else 1)
    step = max(1, chunk_elements // per_row)
    hist = torch.cat(
        [
            _band_histograms(rows[i : i + step].float(), patch_size, num_bins, eps)
            for i in range(0, B * C, step)
        ]
    )  # [B*C, L, K]
    return hist.view(B, C, *hist.shape[1:]).sum(dim=1)  # [B, L, K]


@torch.no_grad()
def semantic_richness(
    images: torch.Tensor,
    patch_size: Sequence[int],
    num_bins: int = 9,
    orientation_weight: float = 0.5,
) -> torch.Tensor:
    """Richness ``r`` [B, L] ≥ 0, mean 1 per image (all 1 for a flat image); see module doc."""
    hist = orientation_histograms(images, patch_size, num_bins)  # [B, L, K]
    energy = hist.sum(dim=-1)  # [B, L]
    p = hist / energy.unsqueeze(-1).clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1) / math.log(hist.shape[-1])
    rich = energy * ((1 - orientation_weight) + orientation_weight * entropy)  # [B, L]
    mean = rich.mean(dim=1, keepdim=True)
    flat = mean <= 1e-12  # no structure anywhere: every patch alike
    return torch.where(flat, torch.ones_like(rich), rich / mean.clamp_min(1e-12))


@torch.no_grad()
def semantic_score(
    images: torch.Tensor,
    patch_size: Sequence[int],
    num_bins: int = 9,
    orientation_weight: float = 0.5,
    floor: float = 0.02,
) -> torch.Tensor:
    """Score ``log(r + floor)`` [B, L]; ``softmax(score / T)`` is the seed-selection law."""
    return torch.log(semantic_richness(images, patch_size, num_bins, orientation_weight) + floor)
