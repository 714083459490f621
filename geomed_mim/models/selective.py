"""SelectiveMAE (OpticalRS-13M): encode a few well-chosen patches, reconstruct a few others.

Per sample (see :mod:`geomed_mim.models.masking.semantic`): ``K = int(L·(1 - mask_ratio))``
patches are *selected* for the encoder — semantic seeds drawn from ``softmax(score / T)`` plus
progressive semantic token selection (PSTS) — and ``T = int(L·reconstruction_ratio)`` of the
others are reconstruction *targets*, drawn by the same score; the rest are ignored. The decoder is
CrossMAE-style: its queries are the targets only (mask token + position embedding), and each block
cross-attends from the queries to the encoder output (no self-attention over all L tokens), so the
decoder's cost scales with T·(1+K), not L². The loss is the per-patch-normalized pixel MSE on the
targets only.

With the paper's ViT-B defaults (mask 0.85, reconstruction 0.25, 14×14 patches) the encoder sees
29 of 196 tokens and the decoder predicts 49 — against MAE's 49 encoded and 196 decoded tokens.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import Mlp
from torch import nn

from geomed_mim.models.base import MIMDecoder, MIMModel, MIMOutput
from geomed_mim.models.cross_attention import CrossAttention
from geomed_mim.models.mae import MAE_DECODER_DEFAULTS
from geomed_mim.models.masking import SelectionResult, SemanticTokenSelection
from geomed_mim.models.patches import gather_tokens
from geomed_mim.models.registry import register_sizes
from geomed_mim.models.vit import ENCODER_ARCHS


# -- CrossMAE decoder ----------------------------------------------------------------------------
class CrossAttentionBlock(nn.Module):
    """Pre-norm block: queries cross-attend to the memory, then an MLP (CrossMAE decoder)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.norm_q = norm_layer(dim)
        self.norm_kv = norm_layer(dim)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(memory))  # [B, T, D]
        return x + self.mlp(self.norm2(x))


class CrossMAEDecoder(MIMDecoder):
    """Predicts the target patches from queries (mask token + position) over the encoder output."""

    make_block = CrossAttentionBlock

    def forward(
        self, latent: torch.Tensor, selected_idx: torch.Tensor, target_idx: torch.Tensor
    ) -> torch.Tensor:
        """latent [B, 1+K, De] (class first), selected_idx [B, K], target_idx [B, T] → [B, T, P]."""
        B = latent.shape[0]
        pos = self.decoder_pos_embed.expand(B, -1, -1)  # [B, 1+L, Dd]
        memory = self.decoder_embed(latent)  # [B, 1+K, Dd]
        memory = memory + torch.cat([pos[:, :1], gather_tokens(pos[:, 1:], selected_idx)], dim=1)
        x = self.mask_token + gather_tokens(pos[:, 1:], target_idx)  # [B, T, Dd] queries
        for blk in self.decoder_blocks:
            x = blk(x, memory)
        return self.decoder_pred(self.decoder_norm(x))  # [B, T, P]


# -- the model -----------------------------------------------------------------------------------
SELECTION_ARGS = tuple(inspect.signature(SemanticTokenSelection).parameters)


@dataclass
class SelectiveMIMOutput(MIMOutput):
    """``pred`` is [B, L, P] with the predictions at the targets and zeros elsewhere;
    ``mask`` is 1 on every patch the encoder did not see."""

    target_idx: torch.Tensor | None = None  # [B, T]
    target_mask: torch.Tensor | None = None  # [B, L], 1 = target
    selection: SelectionResult | None = None


class SelectiveMAE(MIMModel):
    """SelectiveMAE with a ViT encoder; 2-D or 3-D; any ``in_chans``.

    Overrides the token choice (:class:`SemanticTokenSelection`, on the patch embeddings the
    encoder then reuses), the decoder step (CrossMAE over the targets only) and the loss targets
    (the reconstruction targets, each counting equally). ``lr_scale`` (reconstruction_ratio /
    mask_ratio) is applied by the training task.

    Args:
        decoder_embed_dim, decoder_depth, decoder_num_heads: the CrossMAE decoder's size.
        norm_pix_loss: per-patch normalized targets (on by default, as the paper).
        **kwargs: the selection's arguments (:class:`SemanticTokenSelection`: ``mask_ratio``
            0.85, ``reconstruction_ratio`` 0.25, ``seed_fraction``, ``temperature``,
            ``stage_boundaries``, ``stage_blend``, ``num_bins``, ``orientation_weight``,
            ``score_floor``), the others the encoder's (:class:`~geomed_mim.models.base.MIMModel`).
    """

    def __init__(
        self,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
        **kwargs: Any,
    ) -> None:
        selection = {k: kwargs.pop(k) for k in SELECTION_ARGS if k in kwargs}
        super().__init__(norm_pix_loss, **kwargs)
        self.decoder = CrossMAEDecoder(
            self.encoder, decoder_embed_dim, decoder_depth, decoder_num_heads
        )
        self.masking = SemanticTokenSelection(**selection)
        self.masking.set_sizes(self.encoder.num_patches)  # fail at build time, not at step 1

    @property
    def lr_scale(self) -> float:
        """Learning-rate factor reconstruction_ratio / mask_ratio (fewer targets, smaller lr)."""
        return self.masking.reconstruction_ratio / self.masking.mask_ratio

    def choose_tokens(
        self,
        imgs: torch.Tensor,
        patches: torch.Tensor,
        sample_seeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> SelectionResult:
        """Semantic seeds + PSTS on the patch embeddings; ``noise`` [B, L] fixes the order
        outright (ascending: selected, then targets)."""
        return self.masking.select(imgs, self.encoder.patch_size, patches, sample_seeds, noise)

    def forward_decoder(self, encoded: torch.Tensor, choice: SelectionResult) -> torch.Tensor:
        """Predictions at the targets only: [B, T, P]."""
        return self.decoder(encoded, choice.selected_idx, choice.target_idx)

    def loss_targets(self, choice: SelectionResult) -> tuple[torch.Tensor, None]:
        return choice.target_idx, None  # pred holds the targets; each counts

    def make_output(
        self,
        loss: torch.Tensor,
        per_sample: torch.Tensor,
        pred: torch.Tensor,
        choice: SelectionResult,
    ) -> SelectiveMIMOutput:
        B, L = choice.ids_shuffle.shape
        full = pred.new_zeros(B, L, pred.shape[-1])  # [B, L, P]
        full = full.scatter(1, choice.target_idx.unsqueeze(-1).expand_as(pred), pred)
        return SelectiveMIMOutput(
            loss=loss,  # equal target counts: the mean over all target patches
            pred=full,
            mask=choice.mask,
            keep_idx=choice.selected_idx,
            per_sample_loss=per_sample,
            target_idx=choice.target_idx,
            target_mask=choice.target_mask,
            selection=choice,
        )


# -- registry ------------------------------------------------------------------------------------
# same decoder width/depth as MAE: a like-for-like baseline
def _selective_mae(size: str, patch_size: int, /, **kwargs: Any) -> SelectiveMAE:
    return SelectiveMAE.from_size(size, patch_size, MAE_DECODER_DEFAULTS, **kwargs)


register_sizes("selective_mae_vit", _selective_mae, tuple(ENCODER_ARCHS))
