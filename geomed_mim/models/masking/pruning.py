"""InfoBatch-style easy-sample pruning for SelectiveMAE pretraining (off by default).

Which samples of a batch take part in a step, the sample-level counterpart of choosing tokens;
the training task applies it (``easy_sample_pruning``).
"""

from __future__ import annotations

import torch


class EasySamplePruner:
    """InfoBatch (Qin et al., 2024) at batch level: a sample whose last loss was below the mean of
    all recorded losses is dropped from the step with probability ``prune_ratio``; the easy samples
    that stay get loss weight ``1 / (1 - prune_ratio)`` so the expected gradient is unchanged. From
    ``anneal_fraction`` of training on, nothing is pruned. Dropped samples skip forward and
    backward (the speed-up); the loader still reads them.

    The loss table is per process and not checkpointed (a resumed run re-learns it in one epoch).
    """

    def __init__(self, prune_ratio: float = 0.5, anneal_fraction: float = 0.875) -> None:
        if not 0.0 <= prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
        self.prune_ratio = prune_ratio
        self.anneal_fraction = anneal_fraction
        self.losses = torch.zeros(0)
        self.seen = torch.zeros(0, dtype=torch.bool)

    def _grow(self, size: int) -> None:
        if size > self.losses.numel():
            extra = size - self.losses.numel()
            self.losses = torch.cat([self.losses, torch.zeros(extra)])
            self.seen = torch.cat([self.seen, torch.zeros(extra, dtype=torch.bool)])

    def keep(
        self, indices: torch.Tensor, progress: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep [B] bool, loss weights [B] for the kept samples) for dataset ``indices`` [B]."""
        idx = indices.detach().cpu().long()
        B = idx.numel()
        if self.prune_ratio == 0 or progress >= self.anneal_fraction or not bool(self.seen.any()):
            return torch.ones(B, dtype=torch.bool), torch.ones(B)
        self._grow(int(idx.max()) + 1)
        mean = self.losses[self.seen].mean()
        easy = self.seen[idx] & (self.losses[idx] < mean)
        drop = easy & (torch.rand(B, generator=generator) < self.prune_ratio)
        if bool(drop.all()):
            drop[0] = False  # a step needs at least one sample
        keep = ~drop
        weight = torch.where(easy, 1.0 / (1.0 - self.prune_ratio), 1.0)
        return keep, weight[keep]

    def update(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the per-sample losses [n] of dataset ``indices`` [n]."""
        idx = indices.detach().cpu().long()
        self._grow(int(idx.max()) + 1)
        self.losses[idx] = losses.detach().float().cpu()
        self.seen[idx] = True
