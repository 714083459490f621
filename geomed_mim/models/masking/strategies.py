"""Masking strategies: which patches the encoder sees and which are reconstructed.

Every strategy reduces to one thing: a per-sample *noise* [B, L] whose ascending argsort puts the
patches to keep first (MAE's construction). That gives one shared, exact bookkeeping step
(:func:`masking_from_noise`): exactly ``int(L * (1 - mask_ratio))`` visible patches per sample, the
shuffle and restore permutations the MAE decoder needs, and a binary mask (1 = masked).

A new strategy (SelectiveMAE's semantic selection, say) only implements
:meth:`MaskingStrategy.noise`; it may look at the images and at the training progress
(:meth:`MaskingStrategy.set_progress`).

Reproducibility: when ``sample_seeds`` [B] is given, sample *i*'s noise comes from a generator
seeded with ``sample_seeds[i]`` alone, so a sample gets the same mask whatever the batch it lands
in, the world size, or the device. Without seeds the global torch RNG is used (as the reference).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class MaskingResult:
    """Indices are into the patch sequence (0..L-1), class token excluded."""

    keep_idx: torch.Tensor  # [B, K] long, visible patches in shuffle order
    mask: torch.Tensor  # [B, L] float, 1 = masked, 0 = visible (original patch order)
    ids_shuffle: torch.Tensor  # [B, L] long, keep first
    ids_restore: torch.Tensor  # [B, L] long, inverse permutation of ids_shuffle

    @property
    def num_visible(self) -> int:
        return self.keep_idx.shape[1]


def num_visible_patches(num_patches: int, mask_ratio: float) -> int:
    """``int(L * (1 - mask_ratio))``, the reference's count of visible patches."""
    return int(num_patches * (1 - mask_ratio))


def masking_from_noise(noise: torch.Tensor, num_visible: int) -> MaskingResult:
    """The MAE reference ``random_masking`` bookkeeping, given the noise [B, L]."""
    B, L = noise.shape
    ids_shuffle = torch.argsort(noise, dim=1)  # [B, L], ascending: small is keep
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # [B, L]
    keep_idx = ids_shuffle[:, :num_visible]  # [B, K]
    mask = torch.ones(B, L, device=noise.device)
    mask[:, :num_visible] = 0
    mask = torch.gather(mask, 1, ids_restore)  # [B, L] back in patch order
    return MaskingResult(keep_idx, mask, ids_shuffle, ids_restore)


def seeded_uniform(
    sample_seeds: torch.Tensor, num_patches: int, device: torch.device
) -> torch.Tensor:
    """U(0, 1) noise [B, L], row i drawn from a CPU generator seeded with ``sample_seeds[i]``."""
    rows = []
    gen = torch.Generator()
    for seed in sample_seeds.tolist():
        gen.manual_seed(int(seed))
        rows.append(torch.rand(num_patches, generator=gen))
    return torch.stack(rows).to(device)


def uniform_noise(
    batch_size: int,
    num_patches: int,
    device: torch.device,
    sample_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """U(0, 1) noise [B, L]: per-sample seeded (:func:`seeded_uniform`) or the global RNG."""
    if sample_seeds is not None:
        return seeded_uniform(sample_seeds, num_patches, device)
    return torch.rand(batch_size, num_patches, device=device)


class MaskingStrategy(ABC):
    """Chooses visible patches per sample; subclasses provide :meth:`noise`."""

    def __init__(self, mask_ratio: float = 0.75) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.progress = 0.0

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1]; strategies with a schedule read ``self.progress``."""
        self.progress = float(fraction)

    @abstractmethod
    def noise(
        self,
        batch_size: int,
        grid_size: Sequence[int],
        device: torch.device,
        sample_seeds: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, L] scores; the ``int(L*(1-ratio))`` smallest per row are kept visible."""

    def __call__(
        self,
        batch_size: int,
        grid_size: Sequence[int],
        device: torch.device,
        sample_seeds: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> MaskingResult:
        if noise is None:
            noise = self.noise(batch_size, grid_size, device, sample_seeds, images)
        width = self.noise_width(grid_size)
        if noise.shape != (batch_size, width):
            raise ValueError(f"noise must be [{batch_size}, {width}], got {list(noise.shape)}")
        return self.masking(noise, grid_size)

    def noise_width(self, grid_size: Sequence[int]) -> int:
        """L of the noise [B, L] :meth:`noise` draws: one score per patch."""
        return math.prod(grid_size)

    def masking(self, noise: torch.Tensor, grid_size: Sequence[int]) -> MaskingResult:
        """The masking a (checked) noise [B, :meth:`noise_width`] fixes."""
        num_patches = math.prod(grid_size)
        return masking_from_noise(noise, num_visible_patches(num_patches, self.mask_ratio))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mask_ratio={self.mask_ratio})"


class RandomMasking(MaskingStrategy):
    """MAE: uniform noise, so every subset of the right size is equally likely."""

    def noise(self, batch_size, grid_size, device, sample_seeds=None, images=None):
        return uniform_noise(batch_size, math.prod(grid_size), device, sample_seeds)


class BlockMasking(MaskingStrategy):
    """BEiT/SimMIM-style block-wise masking: rectangles (boxes in 3-D) of patches.

    Blocks of random size (``min_block_patches`` to the remaining budget) and aspect ratio are
    masked until the target count is reached (BEiT's algorithm, generalized to 3-D). The exact
    count is then enforced by :func:`masking_from_noise`: block patches get noise in [1, 1.5),
    others in [0, 0.5), so visible patches are drawn first from outside the blocks.
    """

    def __init__(
        self,
        mask_ratio: float = 0.4,
        min_block_patches: int = 4,
        aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
        max_attempts: int = 10,
    ) -> None:
        super().__init__(mask_ratio)
        self.min_block_patches = min_block_patches
        self.log_aspect = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
        self.max_attempts = max_attempts

    def block_mask(self, grid_size: Sequence[int], gen: torch.Generator) -> torch.Tensor:
        """Boolean [*grid] with about ``mask_ratio`` of the patches in blocks."""
        grid = tuple(grid_size)
        L = math.prod(grid)
        target = L - num_visible_patches(L, self.mask_ratio)
        mask = torch.zeros(grid, dtype=torch.bool)

        def rand() -> float:
            return float(torch.rand((), generator=gen))

        count = 0
        for _ in range(20 * L):  # bounded: a full grid always stops it earlier
            if count >= target:
                break
            budget = target - count
            if budget < self.min_block_patches and count > 0:
                break
            for _attempt in range(self.max_attempts):
                area = self.min_block_patches + rand() * max(budget - self.min_block_patches, 0)
                aspect = math.exp(
                    self.log_aspect[0] + rand() * (self.log_aspect[1] - self.log_aspect[0])
                )
                if len(grid) == 2:
                    sides = [round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))]
                else:  # a box: the aspect stretches one axis against the other two
                    edge = area ** (1 / 3)
                    sides = [round(edge * aspect ** (2 / 3)), round(edge / aspect ** (1 / 3)), 0]
                    sides[2] = round(area / max(sides[0] * sides[1], 1))
                sides = [max(1, min(s, g)) for s, g in zip(sides, grid, strict=True)]
                start = [int(rand() * (g - s + 1)) for s, g in zip(sides, grid, strict=True)]
                region = tuple(slice(a, a + s) for a, s in zip(start, sides, strict=True))
                new = int((~mask[region]).sum())
                if 0 < new <= budget or (new > 0 and count == 0):
                    mask[region] = True
                    count += new
                    break
            else:
                break  # no block fits the remaining budget: the noise fill tops it up
        return mask

    def noise(self, batch_size, grid_size, device, sample_seeds=None, images=None):
        L = math.prod(grid_size)
        rows = []
        gen = torch.Generator()
        for i in range(batch_size):
            if sample_seeds is not None:
                gen.manual_seed(int(sample_seeds[i]))
            else:
                gen.manual_seed(int(torch.randint(0, 2**62, ())))
            blocks = self.block_mask(grid_size, gen).reshape(L).float()
            rows.append(blocks + 0.5 * torch.rand(L, generator=gen))
        return torch.stack(rows).to(device)


def masking_from_mask(mask: torch.Tensor) -> MaskingResult:
    """The bookkeeping for a given binary mask [B, L] (1 = masked, the same count per row):
    visible patches first, each group in patch order."""
    L = mask.shape[1]
    counts = mask.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"every sample needs the same number of masked patches, got {counts}")
    order = torch.arange(L, device=mask.device) / L  # [L] in [0, 1): keeps patch order
    return masking_from_noise(mask.float() * 2 + order, L - int(counts[0]))


class MaskUnitMasking(MaskingStrategy):
    """SimMIM's mask generator: random masking of *mask units*, squares of ``unit`` × ``unit``
    patches (SatVision-TOA: 8-px units over 4-px patches, ``unit=2``).

    Exactly ``ceil(units × mask_ratio)`` units are masked per sample (the reference rounds up,
    MAE's count rounds the visible ones down); ``noise`` [B, units] fixes them outright (the
    ``ceil(...)`` smallest are masked) and ``sample_seeds`` draw it per sample, as elsewhere.
    """

    def __init__(self, mask_ratio: float = 0.6, unit: int = 2) -> None:
        super().__init__(mask_ratio)
        if unit < 1:
            raise ValueError(f"unit must be >= 1 patch, got {unit}")
        self.unit = int(unit)

    def unit_grid(self, grid_size: Sequence[int]) -> tuple[int, ...]:
        if any(g % self.unit for g in grid_size):
            raise ValueError(f"the patch grid {list(grid_size)} is not a multiple of {self.unit}")
        return tuple(g // self.unit for g in grid_size)

    def num_masked_units(self, grid_size: Sequence[int]) -> int:
        return math.ceil(math.prod(self.unit_grid(grid_size)) * self.mask_ratio)

    def noise(self, batch_size, grid_size, device, sample_seeds=None, images=None):
        return uniform_noise(batch_size, self.noise_width(grid_size), device, sample_seeds)

    def unit_mask(self, noise: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
        """noise [B, units] → mask [B, L] over the patch grid (1 = masked)."""
        coarse = self.unit_grid(grid_size)
        B = noise.shape[0]
        masked = torch.argsort(noise, dim=1)[:, : self.num_masked_units(grid_size)]  # [B, M]
        mask = torch.zeros_like(noise).scatter_(1, masked, 1.0)  # [B, units]
        mask = mask.reshape(B, *coarse)
        for axis in range(1, len(coarse) + 1):  # each unit → unit^d patches
            mask = mask.repeat_interleave(self.unit, dim=axis)
        return mask.reshape(B, -1)  # [B, L]

    def noise_width(self, grid_size: Sequence[int]) -> int:
        return math.prod(self.unit_grid(grid_size))

    def masking(self, noise: torch.Tensor, grid_size: Sequence[int]) -> MaskingResult:
        return masking_from_mask(self.unit_mask(noise, grid_size))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mask_ratio={self.mask_ratio}, unit={self.unit})"


MASKING_STRATEGIES: dict[str, type[MaskingStrategy]] = {
    "random": RandomMasking,
    "block": BlockMasking,
    "mask_unit": MaskUnitMasking,
}


def build_masking(name_or_strategy: str | MaskingStrategy, mask_ratio: float) -> MaskingStrategy:
    """A strategy instance from a name in :data:`MASKING_STRATEGIES` (or pass one through)."""
    if isinstance(name_or_strategy, MaskingStrategy):
        return name_or_strategy
    try:
        return MASKING_STRATEGIES[name_or_strategy](mask_ratio=mask_ratio)
    except KeyError:
        raise ValueError(
            f"unknown masking {name_or_strategy!r}; choose from {sorted(MASKING_STRATEGIES)}"
        ) from None
