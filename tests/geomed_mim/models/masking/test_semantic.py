"""SelectiveMAE's selection: set sizes and disjointness, per-sample draws, the PSTS schedule."""

from __future__ import annotations

import math

import pytest
import torch

from geomed_mim.models.masking import PSTSSchedule, SemanticTokenSelection


def textured(batch: int, channels: int, spatial: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *spatial, generator=gen).cumsum(-1)


@pytest.mark.parametrize(
    ("spatial", "patch", "mask_ratio", "recon_ratio"),
    [
        ((224, 224), (16, 16), 0.85, 0.25),  # the paper's ViT-B: 29 selected, 49 targets
        ((32, 32), (4, 4), 0.85, 0.25),
        ((40, 24), (8, 8), 0.6, 0.3),
        ((48, 48, 48), (16, 16, 16), 0.75, 0.25),
    ],
)
def test_sets_are_disjoint_with_the_configured_sizes(spatial, patch, mask_ratio, recon_ratio):
    L = math.prod(s // p for s, p in zip(spatial, patch, strict=True))
    selector = SemanticTokenSelection(mask_ratio=mask_ratio, reconstruction_ratio=recon_ratio)
    B = 4
    images = textured(B, 3, spatial)
    for progress in (0.0, 0.3, 0.5, 1.0):  # every PSTS stage
        selector.set_progress(progress)
        r = selector.select(images, patch, sample_seeds=torch.arange(B) + 7)
        K, T = int(L * (1 - mask_ratio)), int(L * recon_ratio)
        assert r.selected_idx.shape == (B, K)
        assert r.target_idx.shape == (B, T)
        assert r.ignored_idx.shape == (B, L - K - T)
        for b in range(B):
            sel, tgt, ign = (
                set(t[b].tolist()) for t in (r.selected_idx, r.target_idx, r.ignored_idx)
            )
            assert len(sel) == K
            assert len(tgt) == T
            assert len(ign) == L - K - T
            assert not (sel & tgt)
            assert not (sel & ign)
            assert not (tgt & ign)
            assert sel | tgt | ign == set(range(L))
        assert torch.equal(r.mask.sum(dim=1), torch.full((B,), float(L - K)))
        assert torch.equal(r.target_mask.sum(dim=1), torch.full((B,), float(T)))
        assert not (r.target_mask.bool() & ~r.mask.bool()).any()  # targets are masked patches


def test_paper_defaults_on_a_vit_b_grid():
    selector = SemanticTokenSelection()
    assert (selector.mask_ratio, selector.reconstruction_ratio) == (0.85, 0.25)
    assert selector.set_sizes(196) == (29, 14, 49)


def test_impossible_sizes_are_rejected():
    with pytest.raises(ValueError, match="reconstruction_ratio"):
        SemanticTokenSelection(mask_ratio=0.5, reconstruction_ratio=0.6)
    with pytest.raises(ValueError, match=r"K \+ T <= L|both >= 1"):
        SemanticTokenSelection(mask_ratio=0.9, reconstruction_ratio=0.05).set_sizes(16)


def test_every_sample_is_selected_on_its_own():
    selector = SemanticTokenSelection(mask_ratio=0.75)
    one = textured(1, 4, (32, 32))
    B = 8
    r = selector.select(one.expand(B, -1, -1, -1), (4, 4), sample_seeds=torch.arange(B))
    # the same image in 8 rows: 8 different selections and target sets
    assert len({tuple(sorted(s.tolist())) for s in r.selected_idx}) == B
    assert len({tuple(sorted(t.tolist())) for t in r.target_idx}) == B
    # a sample's selection depends on its image and seed only, not on the other rows
    images = textured(4, 4, (32, 32), seed=3)
    seeds = torch.tensor([11, 22, 33, 44])
    whole = selector.select(images, (4, 4), sample_seeds=seeds)
    part = selector.select(images[[2, 0]], (4, 4), sample_seeds=seeds[[2, 0]])
    assert torch.equal(part.ids_shuffle, whole.ids_shuffle[[2, 0]])
    # different images in one batch with one seed each: selections follow each image
    other = selector.select(images[[1, 0]], (4, 4), sample_seeds=seeds[[2, 0]])
    assert not torch.equal(other.selected_idx[0], whole.selected_idx[2])


def test_schedule_weights_follow_the_config():
    s = PSTSSchedule(boundaries=(0.2, 0.6), blend=0.1)
    assert s.weights(0.0) == (1.0, 0.0, 0.0)
    assert s.weights(0.14) == (1.0, 0.0, 0.0)  # before the first blend window [0.15, 0.25]
    assert s.weights(0.2) == pytest.approx((0.5, 0.5, 0.0))  # halfway through near → far
    assert s.weights(0.3) == pytest.approx((0.0, 1.0, 0.0))
    assert s.weights(0.6) == pytest.approx((0.0, 0.5, 0.5))
    assert s.weights(0.9) == pytest.approx((0.0, 0.0, 1.0))
    for p in torch.linspace(0, 1, 41).tolist():
        w = s.weights(p)
        assert sum(w) == pytest.approx(1.0)
        assert min(w) >= 0
        assert sum(s.counts(15, p)) == 15
    hard = PSTSSchedule(boundaries=(0.5, 0.5), blend=0.0)  # no far stage, a hard switch
    assert hard.weights(0.49) == (1.0, 0.0, 0.0)
    assert hard.weights(0.5) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="boundaries"):
        PSTSSchedule(boundaries=(0.7, 0.3))


def test_psts_takes_near_then_far_then_random_tokens():
    """Embeddings with a known similarity to the seeds: PSTS tokens are the most similar rich
    ones early, the least similar later, and similarity-blind at the end."""
    torch.manual_seed(0)
    B, L, D = 16, 64, 8
    images = textured(B, 2, (32, 32))  # 8×8 grid of 4×4 patches
    emb = torch.randn(B, L, D)
    selector = SemanticTokenSelection(
        mask_ratio=0.75, seed_fraction=0.25, stage_boundaries=(0.3, 0.7), stage_blend=0.1
    )
    K, K0, _ = selector.set_sizes(L)  # 16 selected, 4 seeds, 12 by PSTS

    def psts_similarity(progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        selector.set_progress(progress)
        r = selector.select(images, (4, 4), emb, sample_seeds=torch.arange(B))
        # cosine similarity of the per-sample centred embeddings, written out here
        e = torch.nn.functional.normalize(emb - emb.mean(dim=1, keepdim=True), dim=-1)
        seeds = torch.gather(e, 1, r.selected_idx[:, :K0, None].expand(-1, -1, D))
        sim = torch.bmm(e, seeds.transpose(1, 2)).amax(-1)  # [B, L]
        rest = torch.ones(B, L, dtype=torch.bool).scatter_(1, r.selected_idx, False)
        return torch.gather(sim, 1, r.selected_idx[:, K0:]), sim.masked_fill(~rest, math.nan)

    near, rest = psts_similarity(0.0)
    rich = selector.richness(images, (4, 4)) >= selector.near_richness_floor  # [B, L]
    assert rich.sum(dim=1).min() >= K  # enough rich patches: near never falls back here
    rich_rest = rest.masked_fill(~rich, math.nan)
    assert (near.min(dim=1).values >= rich_rest.nan_to_num(-2).max(dim=1).values).all()
    near_idx = selector.select(images, (4, 4), emb, sample_seeds=torch.arange(B)).selected_idx
    assert torch.gather(rich, 1, near_idx[:, K0:]).all()  # near tokens are all rich
    far, rest = psts_similarity(0.5)
    assert (far.max(dim=1).values <= rest.nan_to_num(2).min(dim=1).values).all()
    rand, _ = psts_similarity(1.0)
    assert near.mean() > rand.mean() > far.mean()
    # mid-blend: half near, half far
    selector.set_progress(0.3)
    assert selector.schedule.counts(K - K0, 0.3) == (6, 6, 0)


def test_masking_strategy_interface():
    """As a MaskingStrategy (no encoder): keep_idx is the selection."""
    selector = SemanticTokenSelection(mask_ratio=0.75)
    images = textured(3, 2, (32, 32))
    seeds = torch.tensor([5, 6, 7])
    result = selector(3, (8, 8), images.device, seeds, images)
    direct = selector.select(images, (4, 4), sample_seeds=seeds)
    assert torch.equal(result.keep_idx, direct.selected_idx)
    assert torch.equal(result.ids_shuffle, direct.ids_shuffle)
