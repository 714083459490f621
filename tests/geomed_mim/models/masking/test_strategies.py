"""Masking strategies: exact visible counts, per-sample masks, seeded reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from geomed_mim.models.masking import BlockMasking, RandomMasking, build_masking


@pytest.mark.parametrize("strategy", [RandomMasking, BlockMasking])
@pytest.mark.parametrize(
    ("grid", "ratio"),
    [((14, 14), 0.75), ((8, 8), 0.6), ((6, 6, 6), 0.75), ((10, 10), 0.9), ((4, 5), 0.5)],
)
def test_exact_visible_count_and_masks_differ(strategy, grid, ratio):
    L = math.prod(grid)
    result = strategy(mask_ratio=ratio)(8, grid, torch.device("cpu"), torch.arange(8) + 100)
    K = int(L * (1 - ratio))
    assert result.keep_idx.shape == (8, K)
    assert torch.equal(result.mask.sum(dim=1), torch.full((8,), float(L - K)))
    # the kept indices are exactly the unmasked positions
    for b in range(8):
        assert set(result.keep_idx[b].tolist()) == set(
            torch.nonzero(result.mask[b] == 0).flatten().tolist()
        )
    assert len({tuple(m.tolist()) for m in result.mask}) == 8  # every sample its own mask
    torch.testing.assert_close(
        torch.gather(result.ids_shuffle, 1, result.ids_restore), torch.arange(L).expand(8, L)
    )


@pytest.mark.parametrize("strategy", [RandomMasking, BlockMasking])
def test_seeded_masks_do_not_depend_on_the_batch(strategy):
    masker = strategy(mask_ratio=0.75)
    seeds = torch.tensor([11, 22, 33, 44])
    whole = masker(4, (8, 8), torch.device("cpu"), seeds)
    # the same samples split over two "ranks", in another order
    a = masker(2, (8, 8), torch.device("cpu"), seeds[[3, 1]])
    b = masker(2, (8, 8), torch.device("cpu"), seeds[[0, 2]])
    torch.testing.assert_close(a.mask, whole.mask[[3, 1]])
    torch.testing.assert_close(b.mask, whole.mask[[0, 2]])
    # unseeded draws follow the global RNG
    torch.manual_seed(0)
    first = masker(4, (8, 8), torch.device("cpu")).mask
    torch.manual_seed(0)
    torch.testing.assert_close(masker(4, (8, 8), torch.device("cpu")).mask, first)


def adjacent_masked_pairs(mask2d: torch.Tensor) -> int:
    m = mask2d.bool()
    return int((m[1:] & m[:-1]).sum() + (m[:, 1:] & m[:, :-1]).sum())


def test_block_masking_is_blocky():
    grid = (14, 14)
    seeds = torch.arange(32)
    block = BlockMasking(mask_ratio=0.4)(32, grid, torch.device("cpu"), seeds).mask.view(32, *grid)
    rand = RandomMasking(mask_ratio=0.4)(32, grid, torch.device("cpu"), seeds).mask.view(32, *grid)
    block_pairs = sum(adjacent_masked_pairs(m) for m in block)
    rand_pairs = sum(adjacent_masked_pairs(m) for m in rand)
    assert block_pairs > 1.5 * rand_pairs  # masked patches cluster into blocks


def test_build_masking_names():
    assert isinstance(build_masking("random", 0.5), RandomMasking)
    assert build_masking("block", 0.3).mask_ratio == 0.3
    with pytest.raises(ValueError, match="unknown masking"):
        build_masking("nope", 0.5)
    with pytest.raises(ValueError, match="mask_ratio"):
        RandomMasking(1.0)
