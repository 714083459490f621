"""The semantic-richness score ranks patches (unlike the reference's degenerate HOG average)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geomed_mim.models.masking import SemanticTokenSelection
from geomed_mim.models.masking.semantic_score import (
    orientation_histograms,
    semantic_richness,
    semantic_score,
)

REPO_ROOT = Path(__file__).resolve().parents[4]
S2_SCENE = REPO_ROOT / "geomed_mim/demo_data/sentinel2_l1c/scenes/s2_l1c_reference_scene_0.tif"
PATCH = (8, 8)


@pytest.fixture(scope="module")
def half_flat_s2_tile() -> torch.Tensor:
    """A real 13-band Sentinel-2 L1C tile (96×96, per-band standardized) whose left half is one
    constant value: [1, 13, 96, 96], a 12×12 grid of 8×8 patches."""
    with rasterio.open(S2_SCENE) as src:
        tile = src.read(window=((0, 96), (0, 96))).astype(np.float32)
    x = torch.from_numpy(tile)
    x = (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True)
    x[:, :, :48] = 0.3  # flat like water or a cloud deck
    return x.unsqueeze(0)


def reference_degenerate_score(images: torch.Tensor) -> torch.Tensor:
    """The released SelectiveMAE score: the per-patch HOG vector standardized, then averaged."""
    hog = orientation_histograms(images, PATCH)  # [B, L, K]
    z = (hog - hog.mean(dim=-1, keepdim=True)) / (hog.std(dim=-1, keepdim=True) + 1e-6)
    return z.mean(dim=-1)  # ≈ 0 for every patch


def seed_columns_and_probs(selector, images, draws=64):
    batch = images.expand(draws, -1, -1, -1)
    result = selector.select(batch, PATCH, sample_seeds=torch.arange(draws))
    grid_w = images.shape[-1] // PATCH[1]
    cols = result.selected_idx[:, : result.num_seeds] % grid_w  # [draws, K0]
    return cols, result.seed_probs[0]


def total_variation_from_uniform(p: torch.Tensor) -> float:
    return float(0.5 * (p - 1 / p.numel()).abs().sum())


def test_score_ranks_patches_on_a_real_s2_tile(half_flat_s2_tile):
    selector = SemanticTokenSelection(mask_ratio=0.85)
    cols, probs = seed_columns_and_probs(selector, half_flat_s2_tile)
    right = (cols >= 6).float().mean()
    assert right >= 0.95, f"only {right:.1%} of seed tokens in the structured right half"
    # far from uniform: the right half holds almost all probability mass
    assert total_variation_from_uniform(probs) > 0.4
    assert probs.view(12, 12)[:, 6:].sum() > 0.95
    # flat patches (away from the edge column) score at the floor, structured ones well above it
    rich = semantic_richness(half_flat_s2_tile, PATCH).view(12, 12)
    assert rich[:, :5].max() == 0
    assert rich[:, 6:].min() > 0.3


def test_the_same_check_fails_on_the_reference_degenerate_score(half_flat_s2_tile):
    """What the test above would see with the released code's score: ~uniform probabilities."""
    score = reference_degenerate_score(half_flat_s2_tile)
    assert score.abs().max() < 1e-5  # every patch ~0
    probs = torch.softmax(score[0], dim=0)
    assert total_variation_from_uniform(probs) < 0.01
    assert probs.view(12, 12)[:, 6:].sum() < 0.55


@pytest.mark.parametrize("bands", [1, 3, 13, 14])
def test_any_band_count_2d(bands):
    torch.manual_seed(0)
    x = torch.zeros(2, bands, 48, 64)  # 6×8 grid: not square, not 14×14
    x[:, :, :, 32:] = torch.randn(2, bands, 48, 32)  # texture on the right
    score = semantic_score(x, PATCH)
    assert score.shape == (2, 48)
    assert torch.isfinite(score).all()
    grid = score.view(2, 6, 8)
    assert grid[:, :, 5:].min() > grid[:, :, :3].max()


def test_a_flat_band_does_not_change_the_ranking():
    """Bands are scaled to unit mean gradient: a constant band adds nothing, a loud one no more
    than a quiet one."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    with_flat = torch.cat([x, torch.full((1, 1, 32, 32), 7.0)], dim=1)
    torch.testing.assert_close(semantic_richness(with_flat, PATCH), semantic_richness(x, PATCH))
    loud = x.clone()
    loud[:, 0] *= 1000
    torch.testing.assert_close(semantic_richness(loud, PATCH), semantic_richness(x, PATCH))


def test_flat_image_is_uniform_and_richness_has_mean_one():
    flat = torch.full((2, 4, 32, 32), 5.0)
    torch.testing.assert_close(semantic_richness(flat, PATCH), torch.ones(2, 16))
    torch.manual_seed(0)
    r = semantic_richness(torch.randn(3, 4, 32, 32).cumsum(-1), PATCH)
    torch.testing.assert_close(r.mean(dim=1), torch.ones(3))


def test_orientation_spread_ranks_texture_above_a_single_edge():
    """Equal gradient energy, one orientation vs many: the histogram (not only the energy)
    matters."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    stripes = torch.sin(xx * 2 * math.pi / 4)  # one orientation
    blobs = torch.sin(xx * 2 * math.pi / 4) * torch.sin(yy * 2 * math.pi / 4)  # many
    img = torch.cat([stripes, blobs], dim=1)[None, None]  # [1, 1, 16, 32], two 16² patches
    hist = orientation_histograms(img, (16, 16))[0]
    energy = hist.sum(dim=-1)
    rich = semantic_richness(img, (16, 16))[0]
    assert rich[1] / rich[0] > energy[1] / energy[0]


def test_3d_gradient_score_ranks_volume_patches():
    torch.manual_seed(0)
    vol = torch.zeros(2, 1, 32, 32, 32)  # 4×4×4 grid of 8³ patches
    vol[:, :, :, :, 16:] = torch.randn(2, 1, 32, 32, 16)  # "body" on one side, air on the other
    score = semantic_score(vol, (8, 8, 8))
    assert score.shape == (2, 64)
    grid = score.view(2, 4, 4, 4)
    assert grid[..., 2:].min() > grid[..., :2].max()
    selector = SemanticTokenSelection(mask_ratio=0.75, reconstruction_ratio=0.25)
    result = selector.select(vol, (8, 8, 8), sample_seeds=torch.tensor([1, 2]))
    w = result.selected_idx[:, : result.num_seeds] % 4
    assert (w >= 2).float().mean() >= 0.9


@pytest.mark.parametrize("spatial", [(24, 40), (16, 16, 16)])
def test_chunked_histograms_equal_the_whole_batch(spatial):
    """Memory-bounding chunks over (image, band) rows change nothing."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, *spatial).cumsum(-1)
    patch = (8,) * len(spatial)
    whole = orientation_histograms(x, patch)
    torch.testing.assert_close(orientation_histograms(x, patch, chunk_elements=1), whole)
