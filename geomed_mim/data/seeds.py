"""Every seed training derives, from the run's seed, the epoch and a sample's index.

Each stream (the order of the global batches, the order of groups, a sample's augmentation,
its mask noise, its band shift, CT crops) has its own function, so a value depends only on what
names it, not on the world size, the batch a sample lands in or the resumption point. The
values are part of what a run reproduces: a change here changes every seeded run.
"""

from __future__ import annotations

import numpy as np
import torch

# torch.Generator.manual_seed takes a seed below 2**63
TORCH_SEED_MASK = 2**63 - 1
# entropy tags that keep the streams apart; the mask-noise stream is seeded from
# (mask_seed, epoch, index) without a tag
AUGMENT_STREAM = 0xA06
GROUP_ORDER_STREAM = 0x5125
BAND_SHIFT_SALT = 0x5EED_BA4D  # band shifts: derived from the mask seed, a stream of their own


def _words64(entropy: list[int], words: int = 1) -> int:
    """The first 64-bit word of a ``SeedSequence`` state over ``entropy``."""
    return int(np.random.SeedSequence(entropy).generate_state(words, np.uint64)[0])


def batch_order_seed(seed: int, epoch: int) -> int:
    """The torch seed of the permutation that cuts an epoch's global batches."""
    return _words64([int(seed), int(epoch)]) & TORCH_SEED_MASK


def group_order_seed(seed: int, epoch: int) -> int:
    """The numpy seed of the order in which groups' batches follow each other in an epoch."""
    entropy = [int(seed), int(epoch), GROUP_ORDER_STREAM]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])  # one 32-bit word


def augment_seed(seed: int, epoch: int, index: int) -> int:
    """The torch RNG seed for one sample's augmentation in one epoch."""
    return _words64([int(seed), int(epoch), int(index), AUGMENT_STREAM]) & TORCH_SEED_MASK


def mask_noise_seed(base_seed: int, epoch: int, index: int) -> int:
    """The 63-bit seed of one sample's mask noise in one epoch."""
    return _words64([base_seed, epoch, int(index)], words=2) & TORCH_SEED_MASK


def band_shift_seed(sample_mask_seed: int) -> int:
    """The torch seed of one sample's band shift, from its :func:`mask_noise_seed`."""
    return int(sample_mask_seed) ^ BAND_SHIFT_SALT


def group_pass(seed: int, group: int, epoch: int, cycle: int) -> tuple[int, int]:
    """The (seed, epoch) of :func:`batch_order_seed` for pass ``cycle`` over ``group``'s samples
    in ``epoch``: a permutation of its own per group and pass."""
    return seed + group, epoch * 1009 + cycle


def crop_rng(seed: int) -> np.random.Generator:
    """The crop generator of one CT loader process: the dataset's seed with the process's torch
    seed (which DataLoader sets per worker and per epoch), so workers never draw the same crops."""
    return np.random.default_rng([seed, torch.initial_seed() % 2**63])


def fixed_crop_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s fixed crops (the same in every epoch and process)."""
    return np.random.default_rng([seed, index])
