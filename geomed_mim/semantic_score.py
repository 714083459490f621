"""Semantic-richness score per patch: a HOG-style descriptor over all bands, 2-D and 3-D.

SelectiveMAE (OpticalRS-13M) picks the patches the encoder sees by how much structure they hold.
The released code computes a HOG vector per patch, standardizes it *within* the patch and then
averages it — a mean of a standardized vector is ~0 for every patch, so its softmax is uniform and
the "selection" is random sampling. It also hard-codes 3 channels and a 14×14 grid.

Here, for ``images`` [B, C, *spatial] (2-D or 3-D, any C, any grid):

1. gradients per band by central differences (one-sided at the border);
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

All of it is a handful of elementwise passes plus average pooling to the patch grid; the only
Python loop is over the histogram bins (9 or 13), never over patches or samples.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


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


def pool_to_patches(t: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """Mean over each patch: [B, C, *spatial] → [B, C, L] (patch order = patchify's)."""
    pool = F.avg_pool2d if t.dim() == 4 else F.avg_pool3d
    return pool(t, kernel_size=tuple(patch_size), stride=tuple(patch_size)).flatten(2)


def direction_bins_3d(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The 13 unsigned directions of a 3×3×3 neighbourhood, unit vectors [13, 3]."""
    dirs = [
        d
        for d in itertools.product((-1, 0, 1), repeat=3)
        if d > (0, 0, 0)  # one of each ± pair: 3 axes, 6 face and 4 body diagonals
    ]
    u = torch.tensor(dirs, dtype=dtype, device=device)
    return u / u.norm(dim=1, keepdim=True)


@torch.no_grad()
def orientation_histograms(
    images: torch.Tensor,
    patch_size: Sequence[int],
    num_bins: int = 9,
    eps: float = 1e-6,
) -> torch.Tensor:
    """HOG-style histograms per patch, summed over bands: [B, L, K] (K = num_bins or 13 in 3-D)."""
    x = images.float()
    grads = central_gradients(x)  # spatial_dims × [B, C, *spatial]
    mag = torch.sqrt(sum(g * g for g in grads))  # [B, C, *spatial]
    # per band and image: unit mean magnitude, so bands count alike; a flat band stays 0
    band_scale = mag.flatten(2).mean(dim=2).clamp_min(eps)  # [B, C]
    mag = mag / band_scale.view(*band_scale.shape, *([1] * (x.dim() - 2)))
    bins = []
    if x.dim() == 4:
        gy, gx = grads
        # unsigned orientation in [0, π) → fractional bin position, centres at (k + 0.5)·π/K
        pos = torch.remainder(torch.atan2(gy, gx), math.pi) * (num_bins / math.pi) - 0.5
        for k in range(num_bins):  # linear interpolation to the two nearest (circular) bins
            dist = torch.remainder(pos - k, num_bins)
            dist = torch.minimum(dist, num_bins - dist)
            weight = (1 - dist).clamp_min(0)
            bins.append(pool_to_patches(mag * weight, patch_size).sum(dim=1))  # [B, L]
    elif x.dim() == 5:
        u = direction_bins_3d(x.device, x.dtype)  # [13, 3]
        gd, gh, gw = grads
        norm = mag * band_scale.view(*band_scale.shape, 1, 1, 1)  # raw |g| for the direction
        inv = 1 / norm.clamp_min(eps)
        dirs = u.tolist()

        def power(a: float, b: float, c: float) -> torch.Tensor:
            return ((gd * a + gh * b + gw * c) * inv) ** 4  # |cos(g, u)|^4, [B, C, D, H, W]

        # two passes (normalizer, then bins) keep memory at a few volumes instead of 13
        weight = mag / sum(power(*d) for d in dirs).clamp_min(eps)
        for d in dirs:
            bins.append(pool_to_patches(weight * power(*d), patch_size).sum(dim=1))  # [B, L]
    else:
        raise ValueError(f"expected a 4-D or 5-D batch, got {list(images.shape)}")
    return torch.stack(bins, dim=-1)  # [B, L, K]


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
