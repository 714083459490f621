"""The near stage of PSTS encodes textured content, on real Sentinel-2 tiles with flat regions,
while the far and random stages still reach the flat ones.

Flat regions are put into real 13-band L1C tiles the way they occur in products: a nodata wedge
(DN 0, a swath edge), an opaque cloud deck (bright, near constant) and a lake (dark, near
constant), each with sensor-like noise of 1 % of the band's spread, plus a tile whose left half is
one constant. A patch is flat when all its pixels lie in the region (the mask, decided before and
independently of the selector); a patch across the region's border holds textured content.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geomed_mim.models.masking import SemanticTokenSelection

PATCH = (8, 8)
TILE = 96
CALLS = 24  # selections per tile, each with its own sample seed


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-band standardization, as the loaders do before the model."""
    return (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)


def flat_region_masks(size: int) -> dict[str, np.ndarray]:
    """Boolean [size, size] masks of the flat regions: left half, nodata wedge, cloud, lake."""
    yy, xx = np.mgrid[:size, :size]
    return {
        "left_half": xx < size // 2,
        "nodata_wedge": xx + yy < 0.75 * size,
        "cloud_deck": (yy - 0.3 * size) ** 2 + (xx - 0.65 * size) ** 2 < (0.3 * size) ** 2,
        "lake": ((yy - 0.7 * size) / 0.25) ** 2 + ((xx - 0.35 * size) / 0.4) ** 2 < size**2,
    }


def with_flat_region(tile: np.ndarray, kind: str, mask: np.ndarray, seed: int) -> np.ndarray:
    """``tile`` [C, H, W] (DN) with ``mask`` made flat as ``kind`` would be."""
    out = tile.astype(np.float32).copy()
    rng = np.random.default_rng(seed)
    spread = out.std(axis=(1, 2), keepdims=True)
    level = {
        "left_half": out.mean(axis=(1, 2), keepdims=True),
        "nodata_wedge": np.zeros_like(spread),
        "cloud_deck": np.percentile(out, 99.5, axis=(1, 2), keepdims=True) * 1.2,
        "lake": np.percentile(out, 0.5, axis=(1, 2), keepdims=True),
    }[kind]
    noise = 0.0 if kind in ("left_half", "nodata_wedge") else 0.01
    flat = level + noise * spread * rng.standard_normal(out.shape).astype(np.float32)
    return np.where(mask[None], flat, out)


def flat_patches(mask: np.ndarray) -> torch.Tensor:
    """[L] bool: patches lying wholly in the flat region."""
    g = mask.shape[0] // PATCH[0]
    cover = mask.reshape(g, PATCH[0], g, PATCH[1]).mean(axis=(1, 3))
    return torch.from_numpy(cover.reshape(-1) == 1.0)


def random_patch_embedding(images: torch.Tensor, dim: int = 64) -> torch.Tensor:
    """[B, L, dim]: a freshly initialized patch embedding (the model at progress 0)."""
    conv = torch.nn.Conv2d(images.shape[1], dim, PATCH, stride=PATCH)
    torch.nn.init.xavier_uniform_(conv.weight.view(dim, -1))
    with torch.no_grad():
        return conv(images).flatten(2).transpose(1, 2)


def textured_share(selector, images, flat, progress, embed) -> torch.Tensor:
    """images [N, C, H, W], flat [L] → [N, CALLS] share of each call's encoded tokens that are
    not flat (every tile selected CALLS times, each call with its own sample seed)."""
    selector.set_progress(progress)
    batch = images.repeat_interleave(CALLS, dim=0)  # [N·CALLS, C, H, W]
    emb = random_patch_embedding(batch) if embed else None
    seeds = torch.arange(batch.shape[0]) + 1000
    sel = selector.select(batch, PATCH, emb, sample_seeds=seeds)
    return (1.0 - flat[sel.selected_idx].float().mean(dim=1)).view(-1, CALLS)


def check_stages(tiles: list[np.ndarray], kind: str, embed: bool) -> None:
    mask = flat_region_masks(TILE)[kind]
    flat = flat_patches(mask)
    assert 0.15 < flat.float().mean() < 0.6  # a sizeable flat share, yet texture to spare
    images = torch.stack(
        [
            standardize(torch.from_numpy(with_flat_region(t, kind, mask, i)))
            for i, t in enumerate(tiles)
        ]
    )
    torch.manual_seed(0)
    selector = SemanticTokenSelection()  # the shipped defaults
    near = textured_share(selector, images, flat, 0.0, embed)  # [N, CALLS]
    assert near.min() >= 0.85, f"{kind}: worst near-stage call {near.min():.2f} on texture"
    far = textured_share(selector, images, flat, 0.5, embed)
    rand = textured_share(selector, images, flat, 1.0, embed)
    # the curriculum still shows the flat content later: on every tile, some calls reach it
    assert (far < 1).any(dim=1).all(), f"{kind}: the far stage never reached a flat token"
    assert ((rand < 1).float().mean(dim=1) > 0.5).all(), f"{kind}: random rarely reaches flat"
    assert (rand.mean(dim=1) < near.mean(dim=1)).all()


S2_SCENES = "rs_seg/eolearn_s2_l1c_lulc/s2_l1c_reference_scene_{}.tif"
KINDS = ("left_half", "nodata_wedge", "cloud_deck", "lake")


@pytest.fixture(scope="module")
def s2_tiles(shared_data: Path) -> list[np.ndarray]:
    """The five real 13-band L1C scenes' top-left 96×96 tiles (uint16 DN)."""
    tiles = []
    for scene in range(5):
        with rasterio.open(shared_data / S2_SCENES.format(scene)) as src:
            tiles.append(src.read(window=((0, TILE), (0, TILE))))  # [13, 96, 96]
    assert all(t.shape == (13, TILE, TILE) for t in tiles)
    return tiles


@pytest.mark.parametrize("embed", [False, True], ids=["pixels", "patch_embed"])
@pytest.mark.parametrize("kind", KINDS)
def test_near_stage_stays_on_texture_on_real_s2_tiles(s2_tiles, kind, embed):
    check_stages(s2_tiles, kind, embed=embed)


@pytest.mark.parametrize("kind", KINDS)
def test_near_stage_stays_on_texture_on_synthetic_tiles(kind):
    """The same check without the sample data: 13 bands of correlated random-walk texture."""
    gen = torch.Generator().manual_seed(7)
    walk = torch.randn(13, TILE, TILE, generator=gen).cumsum(-1).cumsum(-2)  # smooth, textured
    tile = (walk + torch.randn(13, TILE, TILE, generator=gen) * 5).numpy() + 1000
    check_stages([tile], kind, embed=True)
