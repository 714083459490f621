"""SelectiveMAE (OpticalRS-13M): encode a few well-chosen patches, reconstruct a few others.

Per sample (see :mod:`geomed_mim.selection`): ``K = int(L·(1 - mask_ratio))`` patches are
*selected* for the encoder — semantic seeds drawn from ``softmax(score / T)`` plus progressive
semantic token selection (PSTS) — and ``T = int(L·reconstruction_ratio)`` of the others are
reconstruction *targets*, drawn by the same score; the rest are ignored. The decoder is
CrossMAE-style: its queries are the targets only (mask token + position embedding), and each block
cross-attends from the queries to the encoder output (no self-attention over all L tokens), so the
decoder's cost scales with T·(1+K), not L². The loss is the per-patch-normalized pixel MSE on the
targets only.

With the paper's ViT-B defaults (mask 0.85, reconstruction 0.25, 14×14 patches) the encoder sees
29 of 196 tokens and the decoder predicts 49 — against MAE's 49 encoded and 196 decoded tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import Mlp
from torch import nn

from geomed_mim.models.cross_attention import CrossAttention
from geomed_mim.models.mae import MIMModel, MIMOutput, normalized_patch_targets
from geomed_mim.models.pos_embed import get_sincos_pos_embed
from geomed_mim.models.registry import ENCODER_ARCHS, MAE_DECODER_DEFAULTS, register_model
from geomed_mim.models.vit import VisionTransformerEncoder, gather_tokens, init_linear_and_norm
from geomed_mim.selection import SelectionResult, SemanticTokenSelection


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


class CrossMAEDecoder(nn.Module):
    """Predicts the target patches from queries (mask token + position) over the encoder output."""

    def __init__(
        self,
        num_patches: int,
        grid_size: Sequence[int],
        encoder_dim: int,
        patch_dim: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.embed_dim = embed_dim
        self.decoder_embed = nn.Linear(encoder_dim, embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            CrossAttentionBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.decoder_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(embed_dim, patch_dim, bias=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        pos = get_sincos_pos_embed(self.embed_dim, self.grid_size, cls_token=True)
        self.decoder_pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_linear_and_norm)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_pos_embed"}

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
@dataclass
class SelectiveMIMOutput(MIMOutput):
    """``pred`` is [B, L, P] with the predictions at the targets and zeros elsewhere;
    ``mask`` is 1 on every patch the encoder did not see."""

    target_idx: torch.Tensor | None = None  # [B, T]
    target_mask: torch.Tensor | None = None  # [B, L], 1 = target
    per_sample_loss: torch.Tensor | None = None  # [B], mean over each sample's targets
    selection: SelectionResult | None = None


class SelectiveMAE(MIMModel):
    """SelectiveMAE with a ViT encoder; 2-D or 3-D; any ``in_chans``.

    Selection arguments are :class:`~geomed_mim.selection.SemanticTokenSelection`'s.
    ``lr_scale`` (reconstruction_ratio / mask_ratio) is applied by the training task.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        spatial_dims: int = 2,
        mask_ratio: float = 0.85,
        reconstruction_ratio: float = 0.25,
        seed_fraction: float = 0.5,
        temperature: float = 1.0,
        stage_boundaries: Sequence[float] = (0.3, 0.7),
        stage_blend: float = 0.1,
        num_bins: int = 9,
        orientation_weight: float = 0.5,
        score_floor: float = 0.02,
        norm_pix_loss: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = VisionTransformerEncoder(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            spatial_dims=spatial_dims,
            drop_path_rate=drop_path_rate,
        )
        self.decoder = CrossMAEDecoder(
            num_patches=self.encoder.num_patches,
            grid_size=self.encoder.grid_size,
            encoder_dim=embed_dim,
            patch_dim=math.prod(self.encoder.patch_size) * in_chans,
            embed_dim=decoder_embed_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
        )
        self.masking = SemanticTokenSelection(
            mask_ratio=mask_ratio,
            reconstruction_ratio=reconstruction_ratio,
            seed_fraction=seed_fraction,
            temperature=temperature,
            stage_boundaries=stage_boundaries,
            stage_blend=stage_blend,
            num_bins=num_bins,
            orientation_weight=orientation_weight,
            score_floor=score_floor,
        )
        self.masking.set_sizes(self.encoder.num_patches)  # fail at build time, not at step 1
        self.norm_pix_loss = norm_pix_loss

    @property
    def lr_scale(self) -> float:
        """Learning-rate factor reconstruction_ratio / mask_ratio (fewer targets, smaller lr)."""
        return self.masking.reconstruction_ratio / self.masking.mask_ratio

    def encode(self, tokens: torch.Tensor, selected_idx: torch.Tensor) -> torch.Tensor:
        """tokens [B, L, D] (patch + position) → normed encoder output [B, 1+K, D]."""
        enc = self.encoder
        x = enc.prepend_cls(gather_tokens(tokens, selected_idx))  # [B, 1+K, D]
        for block in enc.blocks:
            x = block(x)
        return enc.norm(x)

    def forward(
        self,
        imgs: torch.Tensor,
        sample_seeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> SelectiveMIMOutput:
        """imgs [B, C, *spatial]; ``sample_seeds`` [B] fix the draws, ``noise`` [B, L] fixes the
        order outright (ascending: selected, then targets)."""
        enc = self.encoder
        patches = enc.patch_embed(imgs)  # [B, L, D], computed once: PSTS and the encoder
        sel = self.masking.select(imgs, enc.patch_size, patches, sample_seeds, order=noise)
        latent = self.encode(patches + enc.pos_embed[:, 1:, :], sel.selected_idx)  # [B, 1+K, D]
        pred = self.decoder(latent, sel.selected_idx, sel.target_idx)  # [B, T, P]
        target = gather_tokens(self.patchify(imgs), sel.target_idx)  # [B, T, P]
        if self.norm_pix_loss:
            target = normalized_patch_targets(target)
        per_sample = ((pred.float() - target) ** 2).mean(dim=-1).mean(dim=-1)  # [B]
        full = pred.new_zeros(imgs.shape[0], enc.num_patches, pred.shape[-1])  # [B, L, P]
        full = full.scatter(1, sel.target_idx.unsqueeze(-1).expand_as(pred), pred)
        return SelectiveMIMOutput(
            loss=per_sample.mean(),  # equal target counts: the mean over all target patches
            pred=full,
            mask=sel.mask,
            keep_idx=sel.selected_idx,
            target_idx=sel.target_idx,
            target_mask=sel.target_mask,
            per_sample_loss=per_sample,
            selection=sel,
        )


# -- registry ------------------------------------------------------------------------------------
def _selective(size: str, default_patch_size: int, **kwargs: Any) -> SelectiveMAE:
    cfg: dict[str, Any] = {"patch_size": default_patch_size, **ENCODER_ARCHS[size]}
    cfg.update(MAE_DECODER_DEFAULTS)  # same decoder width/depth as MAE: a like-for-like baseline
    cfg.update(kwargs)
    model = SelectiveMAE(**cfg)
    model.encoder_arch = {"size": size, "patch_size": default_patch_size}
    return model


@register_model
def selective_mae_vit_tiny_patch16(**kwargs: Any) -> SelectiveMAE:
    return _selective("tiny", 16, **kwargs)


@register_model
def selective_mae_vit_small_patch16(**kwargs: Any) -> SelectiveMAE:
    return _selective("small", 16, **kwargs)


@register_model
def selective_mae_vit_base_patch16(**kwargs: Any) -> SelectiveMAE:
    return _selective("base", 16, **kwargs)


@register_model
def selective_mae_vit_large_patch16(**kwargs: Any) -> SelectiveMAE:
    return _selective("large", 16, **kwargs)
