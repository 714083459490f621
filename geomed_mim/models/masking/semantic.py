"""SelectiveMAE's token selection: semantic seeds, progressive semantic token selection (PSTS)
and score-drawn reconstruction targets.

Per sample, the L patches are split into three disjoint sets of fixed size:

* **selected** ``K = int(L·(1 - mask_ratio))`` — what the encoder sees:
  ``K0 = max(1, round(K·seed_fraction))`` *seeds* drawn without replacement from
  ``softmax(score / temperature)`` (Gumbel-top-k), then ``K - K0`` tokens added by PSTS from the
  cosine similarity of patch embeddings to the seeds (max over seeds): the most similar ("near"),
  the least similar ("far") or uniformly at random, mixed by the training-progress schedule
  :class:`PSTSSchedule`;
* **targets** ``T = int(L·reconstruction_ratio)`` — drawn among the rest from the same softmax;
* **ignored** — everything else (neither encoded nor reconstructed).

Every draw uses per-sample randomness (a generator per ``sample_seeds[i]`` when given, as the
masking strategies do), so no sample's selection depends on another row of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from geomed_mim.models.masking.semantic_score import semantic_richness
from geomed_mim.models.masking.strategies import (
    MaskingStrategy,
    num_visible_patches,
    uniform_noise,
)
from geomed_mim.models.patches import gather_tokens, patchify


# -- PSTS schedule -------------------------------------------------------------------------------
def _ramp(progress: float, centre: float, width: float) -> float:
    """0 before ``centre - width/2``, 1 after ``centre + width/2``, linear in between."""
    if width <= 0:
        return float(progress >= centre)
    return min(max((progress - (centre - width / 2)) / width, 0.0), 1.0)


@dataclass(frozen=True)
class PSTSSchedule:
    """Stage weights over training: near → far at ``boundaries[0]``, far → random at
    ``boundaries[1]`` (fractions of training), each a linear blend ``blend`` wide."""

    boundaries: tuple[float, float] = (0.3, 0.7)
    blend: float = 0.1

    def __post_init__(self) -> None:
        a, b = self.boundaries
        if not 0.0 <= a <= b <= 1.0:
            raise ValueError(f"PSTS stage boundaries must satisfy 0 <= a <= b <= 1, got {a}, {b}")
        if self.blend < 0:
            raise ValueError(f"PSTS blend width must be >= 0, got {self.blend}")

    def weights(self, progress: float) -> tuple[float, float, float]:
        """(near, far, random) shares of the PSTS tokens at ``progress`` ∈ [0, 1]; sum 1."""
        to_random = _ramp(progress, self.boundaries[1], self.blend)
        left_near = max(_ramp(progress, self.boundaries[0], self.blend), to_random)
        return 1.0 - left_near, left_near - to_random, to_random

    def counts(self, n: int, progress: float) -> tuple[int, int, int]:
        """Split ``n`` PSTS tokens into (near, far, random) counts that sum to ``n``."""
        near_w, far_w, _ = self.weights(progress)
        near = round(near_w * n)
        far = min(round(far_w * n), n - near)
        return near, far, n - near - far


# -- the selection -------------------------------------------------------------------------------
@dataclass
class SelectionResult:
    """Indices into the patch sequence (0..L-1); every row is its own sample's selection."""

    selected_idx: torch.Tensor  # [B, K] encoder tokens: K0 seeds first, then PSTS tokens
    target_idx: torch.Tensor  # [B, T] patches to reconstruct
    ignored_idx: torch.Tensor  # [B, L-K-T] neither
    ids_shuffle: torch.Tensor  # [B, L] selected, targets, ignored
    num_seeds: int
    seed_probs: torch.Tensor | None = None  # [B, L] softmax(score / temperature)

    @property
    def keep_idx(self) -> torch.Tensor:
        """[B, K] the encoder's tokens (the name :class:`MaskingResult` gives them)."""
        return self.selected_idx

    @property
    def mask(self) -> torch.Tensor:
        """[B, L] float, 1 = not encoded (MAE's meaning of "masked")."""
        B, L = self.ids_shuffle.shape
        m = torch.ones(B, L, device=self.ids_shuffle.device)
        return m.scatter_(1, self.selected_idx, 0.0)

    @property
    def target_mask(self) -> torch.Tensor:
        """[B, L] float, 1 = reconstruction target."""
        B, L = self.ids_shuffle.shape
        m = torch.zeros(B, L, device=self.ids_shuffle.device)
        return m.scatter_(1, self.target_idx, 1.0)


def seed_similarity(embeddings: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [B, L] of every patch to its most similar seed, on embeddings [B, L, D]
    centred per sample: uncentred patch embeddings share one large component, which would make
    every patch look alike."""
    e = embeddings.detach().float()
    e = F.normalize(e - e.mean(dim=1, keepdim=True), dim=-1)  # [B, L, D]
    e_seed = gather_tokens(e, seeds)  # [B, K0, D]
    return torch.bmm(e, e_seed.transpose(1, 2)).amax(dim=-1)  # [B, L]


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise from U(0, 1): ``argtopk(logits + g)`` samples without replacement."""
    return -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))


class SemanticTokenSelection(MaskingStrategy):
    """Seeds by semantic richness + PSTS; a :class:`MaskingStrategy`, so the
    training task's ``set_progress`` drives the stage schedule.

    Args:
        mask_ratio: share of patches *not* encoded (0.85: the encoder sees 15%).
        reconstruction_ratio: share of all patches that are reconstruction targets.
        seed_fraction: share of the encoder's tokens drawn as semantic seeds (the rest by PSTS).
        temperature: of ``softmax(score / T)`` for seeds and targets (1 = in proportion to
            richness, smaller = greedier).
        stage_boundaries: training fractions where PSTS moves near → far and far → random.
        stage_blend: width (training fraction) of the linear blend around each boundary.
        num_bins, orientation_weight, score_floor: the score's parameters
            (:func:`~geomed_mim.models.masking.semantic_score.semantic_score`).
        near_richness_floor: the near stage only takes tokens whose richness (mean 1 per
            image) is at least this; poorer ones come after every rich one. Without it, one
            seed on a flat patch pulls in every identical flat patch (similarity 1).
    """

    def __init__(
        self,
        mask_ratio: float = 0.85,
        reconstruction_ratio: float = 0.25,
        seed_fraction: float = 0.5,
        temperature: float = 1.0,
        stage_boundaries: Sequence[float] = (0.3, 0.7),
        stage_blend: float = 0.1,
        num_bins: int = 9,
        orientation_weight: float = 0.5,
        score_floor: float = 0.02,
        near_richness_floor: float = 0.5,
    ) -> None:
        super().__init__(mask_ratio)
        if not 0.0 < reconstruction_ratio <= mask_ratio:
            raise ValueError(
                f"reconstruction_ratio must be in (0, mask_ratio={mask_ratio}], "
                f"got {reconstruction_ratio}"
            )
        if not 0.0 < seed_fraction <= 1.0:
            raise ValueError(f"seed_fraction must be in (0, 1], got {seed_fraction}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if near_richness_floor < 0:
            raise ValueError(f"near_richness_floor must be >= 0, got {near_richness_floor}")
        self.reconstruction_ratio = reconstruction_ratio
        self.seed_fraction = seed_fraction
        self.temperature = temperature
        self.schedule = PSTSSchedule(tuple(stage_boundaries), stage_blend)
        self.num_bins = num_bins
        self.orientation_weight = orientation_weight
        self.score_floor = score_floor
        self.near_richness_floor = near_richness_floor

    def set_sizes(self, num_patches: int) -> tuple[int, int, int]:
        """(selected K, seeds K0, targets T) for L patches; checks that they fit."""
        K = num_visible_patches(num_patches, self.mask_ratio)
        T = int(num_patches * self.reconstruction_ratio)
        if K < 1 or T < 1 or num_patches < K + T:
            raise ValueError(
                f"{num_patches} patches give {K} selected and {T} targets: need both >= 1 and "
                f"K + T <= L (mask_ratio {self.mask_ratio}, reconstruction_ratio "
                f"{self.reconstruction_ratio})"
            )
        return K, max(1, round(K * self.seed_fraction)), T

    def richness(self, images: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
        """Semantic richness [B, L], mean 1 per image (see the score module)."""
        return semantic_richness(images, patch_size, self.num_bins, self.orientation_weight)

    def score(self, images: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
        """Semantic-richness score ``log(r + floor)`` [B, L]."""
        return torch.log(self.richness(images, patch_size) + self.score_floor)

    @torch.no_grad()
    def select(
        self,
        images: torch.Tensor,
        patch_size: Sequence[int],
        embeddings: torch.Tensor | None = None,
        sample_seeds: torch.Tensor | None = None,
        order: torch.Tensor | None = None,
    ) -> SelectionResult:
        """images [B, C, *spatial]; embeddings [B, L, D] for PSTS (raw patch pixels if None).

        ``order`` [B, L] bypasses the draw: its ascending argsort lists selected, then targets
        (fixed selections for tests and evaluation).
        """
        B = images.shape[0]
        L = math.prod(s // p for s, p in zip(images.shape[2:], patch_size, strict=True))
        K, K0, T = self.set_sizes(L)
        if order is not None:
            ids = torch.argsort(order, dim=1)
            return SelectionResult(ids[:, :K], ids[:, K : K + T], ids[:, K + T :], ids, K0)

        richness = self.richness(images, patch_size)  # [B, L]
        logits = torch.log(richness + self.score_floor) / self.temperature  # [B, L]
        u = uniform_noise(B, 3 * L, images.device, sample_seeds)  # [B, 3L], row i from seed i
        g_seed, u_rand, g_target = gumbel(u[:, :L]), u[:, L : 2 * L], gumbel(u[:, 2 * L :])
        available = torch.ones(B, L, dtype=torch.bool, device=images.device)

        def take(key: torch.Tensor, n: int) -> torch.Tensor:
            """Per row, the ``n`` available patches with the largest key; marks them taken."""
            if n == 0:
                return key.new_zeros(B, 0, dtype=torch.long)
            idx = key.masked_fill(~available, -math.inf).topk(n, dim=1).indices  # [B, n]
            available.scatter_(1, idx, False)
            return idx

        seeds = take(logits + g_seed, K0)  # [B, K0] without replacement ∝ softmax(logits)
        if embeddings is None:
            embeddings = patchify(images, patch_size)  # [B, L, P]
        sim = seed_similarity(embeddings, seeds)  # [B, L]
        n_near, n_far, n_rand = self.schedule.counts(K - K0, self.progress)
        # near: the most similar among rich tokens (sim in [-1, 1], so -3 ranks poor ones last)
        poor = richness < self.near_richness_floor  # [B, L]
        near = take(sim - 3.0 * poor, n_near)  # most similar rich first (early training)
        far = take(-sim, n_far)  # least similar (later)
        rand = take(u_rand, n_rand)  # uniform (last stage)
        selected = torch.cat([seeds, near, far, rand], dim=1)  # [B, K]
        targets = take(logits + g_target, T)  # [B, T], by score among the masked
        # the rest, in index order: a stable sort puts available (True) first
        ignored = torch.sort(available.to(torch.uint8), dim=1, descending=True, stable=True)
        ignored = ignored.indices[:, : L - K - T]  # [B, L-K-T]
        ids = torch.cat([selected, targets, ignored], dim=1)  # [B, L]
        return SelectionResult(selected, targets, ignored, ids, K0, torch.softmax(logits, dim=1))

    def noise(self, batch_size, grid_size, device, sample_seeds=None, images=None):
        """As a plain masking strategy (no encoder): ranks whose argsort is the selection order,
        PSTS on raw patch pixels."""
        if images is None:
            raise ValueError("semantic selection needs the images")
        patch_size = [s // g for s, g in zip(images.shape[2:], grid_size, strict=True)]
        ids = self.select(images, patch_size, sample_seeds=sample_seeds).ids_shuffle
        ranks = torch.arange(ids.shape[1], device=ids.device, dtype=torch.float).expand_as(ids)
        return torch.empty_like(ranks).scatter_(1, ids, ranks)  # [B, L]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mask_ratio={self.mask_ratio}, reconstruction_ratio="
            f"{self.reconstruction_ratio}, seed_fraction={self.seed_fraction}, temperature="
            f"{self.temperature}, near_richness_floor={self.near_richness_floor}, "
            f"schedule={self.schedule})"
        )
