"""Per-rank sharding of a store's samples: whole global batches, every sample once per epoch.

The order of an epoch depends on (seed, epoch, number of samples, global batch size) only — not
on the world size. It is cut into *global batches*; rank ``r`` of ``W`` takes the ``r``-th of
``W`` contiguous slices of each global batch. So:

* within an epoch no sample is seen twice and (``drop_last=False``) none is left out:
  ``DistributedSampler`` pads ranks with repeated samples instead;
* the samples of global step ``s`` are the same whatever ``W``: with per-sample seeded masks and
  augmentation (:class:`SeededBatchDataset`) a 2-process step equals a 1-process step with the
  same global batch, and a run resumed on a different number of nodes continues the same sequence;
* all ranks run the same number of steps (DDP needs that).

With ``drop_last=False`` the last global batch of an epoch may be short; when it would hold fewer
samples than there are ranks it is merged into the one before, so every rank still gets at least
one sample. DDP averages the ranks' gradients with equal weight, so in that last step a sample's
weight differs from the others' by at most one part in the per-rank batch.

Lightning integration: :class:`ShardedBatchSampler` subclasses ``DistributedSampler`` so
Lightning does not wrap it again (its ``use_distributed_sampler`` check), and
:class:`ResumableDataLoader` implements ``state_dict``/``load_state_dict``, which
:class:`~geomed_mim.data.loader_position.LoaderPosition` saves in every checkpoint and applies on
resume: training restarted mid-epoch continues with the next unseen global batch of the same epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from geomed_mim.data.loader_position import ensure_loader_position
from geomed_mim.data.seeds import augment_seed, batch_order_seed, group_order_seed, group_pass

log = logging.getLogger(__name__)


def global_batches(
    num_samples: int,
    global_batch_size: int,
    epoch: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    min_batch: int = 1,
) -> list[np.ndarray]:
    """The epoch's global batches (arrays of sample indices); independent of the world size.

    ``min_batch`` (the world size) is the smallest batch every rank can take a share of: a short
    last batch below it is merged into the previous one.
    """
    if global_batch_size < 1:
        raise ValueError(f"global batch size must be >= 1, got {global_batch_size}")
    if shuffle:
        gen = torch.Generator().manual_seed(batch_order_seed(seed, epoch))
        order = torch.randperm(num_samples, generator=gen).numpy()
    else:
        order = np.arange(num_samples)
    full = num_samples // global_batch_size
    batches = [order[i * global_batch_size : (i + 1) * global_batch_size] for i in range(full)]
    tail = order[full * global_batch_size :]
    if len(tail) and not drop_last:
        if len(tail) >= min_batch or not batches:
            batches.append(tail)
        else:
            batches[-1] = np.concatenate([batches[-1], tail])
    return batches


def grouped_global_batches(
    groups: np.ndarray,
    global_batch_size: int,
    epoch: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    min_batch: int = 1,
    weights: dict[int, float] | None = None,
) -> list[np.ndarray]:
    """Global batches that each hold samples of one group (one tile size, so one shape).

    Each group is cut into batches as :func:`global_batches` cuts a store; the epoch has as many
    batches as all groups together. Without ``weights`` every batch is used once, in an order
    shuffled by (seed, epoch); with ``weights`` (group -> share of the batches) the group of
    each batch is drawn with those shares, a group drawn more often than it has batches
    continuing with a fresh permutation (its samples repeat within the epoch), one drawn less
    often leaving some out. Like :func:`global_batches`, independent of the world size.
    """
    names = [int(g) for g in np.unique(groups)]
    members = {g: np.flatnonzero(groups == g) for g in names}

    def cut(g: int, cycle: int) -> list[np.ndarray]:
        pass_seed, pass_epoch = group_pass(seed, g, epoch, cycle)
        cuts = global_batches(len(members[g]), global_batch_size, pass_epoch, pass_seed, shuffle,
                              drop_last, min_batch)  # fmt: skip
        return [members[g][b] for b in cuts]

    batches = {g: cut(g, 0) for g in names}
    total = sum(len(b) for b in batches.values())
    if not shuffle:
        return [b for g in names for b in batches[g]]
    rng = np.random.default_rng(group_order_seed(seed, epoch))
    if weights is None:
        order = rng.permutation(np.repeat(names, [len(batches[g]) for g in names]))
    else:
        share = np.array([max(float(weights.get(g, 0.0)), 0.0) for g in names])
        order = rng.choice(names, size=total, p=share / share.sum())
    out, used, cycles = [], dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    for g in order.tolist():
        if used[g] == len(batches[g]):  # drawn more often than it has batches: a new pass
            cycles[g] += 1
            batches[g], used[g] = cut(g, cycles[g]), 0
        out.append(batches[g][used[g]])
        used[g] += 1
    return out


def rank_share(batch: Sequence[int] | np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous slice of a global batch (sizes differ by at most one)."""
    n = len(batch)
    return np.asarray(batch)[rank * n // world_size : (rank + 1) * n // world_size]


class ShardedBatchSampler(DistributedSampler):
    """Yields ``(epoch, [sample indices])`` — this rank's share of each global batch.

    Use with ``DataLoader(SeededBatchDataset(ds), sampler=this, batch_size=None)``.

    Args:
        dataset: the map-style dataset (only its length is used).
        batch_size: samples per rank per step; the global batch is ``batch_size × num_replicas``.
        num_replicas, rank: world size and this process's global rank.
        shuffle: a new permutation each epoch (seeded by ``seed`` and the epoch).
        drop_last: leave out the short last global batch (at most ``global batch - 1`` samples,
            different ones each epoch) so that every step has the same batch size.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        groups: np.ndarray | None = None,
        group_weights: dict[int, float] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.drop_last = drop_last
        self.groups = groups
        self.group_weights = group_weights
        self.batch_size = int(batch_size)
        self.num_samples_total = len(dataset)  # type: ignore[arg-type]
        if self.num_samples_total < num_replicas and not drop_last:
            raise ValueError(
                f"{self.num_samples_total} samples cannot be shared by {num_replicas} ranks: "
                "every rank needs at least one sample per step"
            )
        self.start_batch = 0  # batches of the current epoch to skip once (set on resume)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def batches(self, epoch: int | None = None) -> list[np.ndarray]:
        if self.groups is not None:
            return grouped_global_batches(
                self.groups, self.global_batch_size, self.epoch if epoch is None else epoch,
                self.seed, self.shuffle, self.drop_last, self.num_replicas, self.group_weights,
            )  # fmt: skip
        return global_batches(
            self.num_samples_total,
            self.global_batch_size,
            self.epoch if epoch is None else epoch,
            self.seed,
            self.shuffle,
            self.drop_last,
            min_batch=self.num_replicas,
        )

    def __len__(self) -> int:
        if self.groups is not None:
            return len(self.batches())
        n, g = self.num_samples_total, self.global_batch_size
        if self.drop_last:
            return n // g
        full, tail = divmod(n, g)
        return full + int(bool(tail) and (tail >= self.num_replicas or full == 0))

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        # computed when iter() is called (as DistributedSampler does), so the epoch set before
        # the iterator was created is the one used
        epoch, start = self.epoch, self.start_batch
        self.start_batch = 0
        shares = [
            (epoch, rank_share(b, self.rank, self.num_replicas).tolist())
            for b in self.batches(epoch)[start:]
        ]
        return iter(shares)


class SeededBatchDataset(Dataset):
    """``ds[(epoch, [i, j, ...])]`` → the collated batch of items ``i, j, ...``.

    Each item is loaded with torch's global RNG seeded from ``(seed, epoch, index)`` (and
    restored afterwards), so random crops and flips drawn with ``torch.rand``/``torch.randint``
    depend on the sample and the epoch only: not on the batch, the worker, the rank, the world
    size or what ran before a resume. A dataset with a ``load_batch(indices, seeds)`` method
    reads the whole batch itself and draws sample ``indices[k]``'s augmentation from a
    generator seeded with ``seeds[k]``, the same seed, so the same guarantee holds.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.collate_fn = collate_fn or default_collate

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, spec: tuple[int, list[int]]) -> Any:
        epoch, indices = spec
        load_batch = getattr(self.dataset, "load_batch", None)
        if load_batch is not None:  # the dataset reads a whole batch, one seed per sample
            return load_batch(indices, [augment_seed(self.seed, epoch, i) for i in indices])
        items = []
        for i in indices:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(augment_seed(self.seed, epoch, i))
                items.append(self.dataset[i])
        return self.collate_fn(items)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ShardedBatchSampler` whose position Lightning checkpoints.

    ``consumed_batches`` returns how many batches of the current epoch the training loop has
    finished (the loader itself cannot tell: Lightning and the workers prefetch ahead).
    """

    def __init__(
        self, *args: Any, consumed_batches: Callable[[], int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.consumed_batches = consumed_batches

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        assert isinstance(sampler, ShardedBatchSampler)
        done = int(self.consumed_batches()) if self.consumed_batches is not None else 0
        if done >= len(sampler):  # saved at the end of an epoch: the next one starts afresh
            return {"epoch": sampler.epoch + 1, "batch": 0}
        return {"epoch": sampler.epoch, "batch": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, ShardedBatchSampler)
        sampler.set_epoch(int(state["epoch"]))
        sampler.start_batch = int(state["batch"])
        if sampler.start_batch:
            log.info(
                "resuming epoch %d at global batch %d of %d",
                sampler.epoch,
                sampler.start_batch,
                len(sampler),
            )


def world_of(trainer: Any) -> tuple[int, int]:
    """(world size, global rank) of a Lightning trainer, or (1, 0) without one."""
    if trainer is None:
        return 1, 0
    return int(trainer.world_size), int(trainer.global_rank)


def per_rank_batch_size(
    batch_size: int, global_batch_size: int | None, world_size: int, accumulate: int = 1
) -> int:
    """``global_batch_size / (world size × accumulation)`` when a global batch is fixed."""
    if global_batch_size is None:
        return int(batch_size)
    per_rank, rest = divmod(int(global_batch_size), world_size * accumulate)
    if rest or per_rank < 1:
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a multiple of world size {world_size} "
            f"× accumulate_grad_batches {accumulate}"
        )
    return per_rank


def sharded_loader(
    dataset: Dataset,
    batch_size: int,
    trainer: Any = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    resumable: bool = True,
    groups: np.ndarray | None = None,
    group_weights: dict[int, float] | None = None,
    **loader_kwargs: Any,
) -> DataLoader:
    """A loader of this rank's shares of the global batches (see the module docstring); with
    ``groups`` each batch holds one group (see :func:`grouped_global_batches`)."""
    world_size, rank = world_of(trainer)
    sampler = ShardedBatchSampler(
        dataset, batch_size, world_size, rank, shuffle=shuffle, seed=seed, drop_last=drop_last,
        groups=groups, group_weights=group_weights,
    )  # fmt: skip
    batched = SeededBatchDataset(dataset, seed=seed, collate_fn=collate_fn)
    if not resumable:
        return DataLoader(batched, sampler=sampler, batch_size=None, **loader_kwargs)

    position = ensure_loader_position(trainer)
    loader = ResumableDataLoader(
        batched,
        sampler=sampler,
        batch_size=None,
        consumed_batches=(lambda: position.batches_done) if position is not None else None,
        **loader_kwargs,
    )
    if position is not None:
        position.attach(loader)  # a position restored from a checkpoint applies here
    return loader
