"""InfoBatch-style easy-sample pruning: who is dropped, the weights of those kept, annealing."""

from __future__ import annotations

import torch

from geomed_mim.models.masking import EasySamplePruner


def test_easy_sample_pruning():
    pruner = EasySamplePruner(prune_ratio=0.5, anneal_fraction=0.8)
    idx = torch.arange(200)
    keep, weight = pruner.keep(idx, 0.0)  # nothing recorded yet: keep all
    assert keep.all()
    assert torch.equal(weight, torch.ones(200))
    losses = torch.where(idx < 100, 0.1, 1.0)  # 100 easy, 100 hard
    pruner.update(idx, losses)
    gen = torch.Generator().manual_seed(0)
    keep, weight = pruner.keep(idx, 0.5, gen)
    assert keep[100:].all()  # hard samples are never pruned
    assert 30 < int((~keep[:100]).sum()) < 70  # about half of the easy ones are
    easy_kept = int(keep[:100].sum())
    assert torch.equal(weight[:easy_kept], torch.full((easy_kept,), 2.0))  # 1 / (1 - 0.5)
    assert torch.equal(weight[easy_kept:], torch.ones(100))
    keep, _ = pruner.keep(idx, 0.85)  # annealing: the end of training uses everything
    assert keep.all()
    # unseen samples are kept
    keep, _ = pruner.keep(torch.tensor([500, 3]), 0.5, gen)
    assert keep[0]
