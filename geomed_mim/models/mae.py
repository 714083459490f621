"""Masked autoencoder (He et al., 2022) for 2-D images and 3-D volumes with any channel count.

Follows the MAE reference (facebookresearch/mae, ``models_mae.py``) step for step:
per-sample random masking by argsort of noise, encoder over visible patches + class token,
a lighter decoder over [visible, mask tokens] with its own fixed sin-cos positions, and an MSE
loss on masked patches only, against per-patch normalized pixels when ``norm_pix_loss``
(unbiased variance, eps 1e-6). Patch values are ordered (p, p, C) in 2-D ('nchpwq->nhwpqc') and
(p, p, p, C) in 3-D.

The pieces are separate modules so the other methods reuse them: the encoder
(:class:`~geomed_mim.models.vit.VisionTransformerEncoder`), the decoder (:class:`MAEDecoder`) and
the masking strategy (:mod:`geomed_mim.masking`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from geomed_mim.masking import MaskingResult, MaskingStrategy, build_masking
from geomed_mim.models.pos_embed import get_sincos_pos_embed
from geomed_mim.models.vit import VisionTransformerEncoder, init_linear_and_norm


# -- patchify ------------------------------------------------------------------------------------
def patchify(imgs: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """[B, C, H, W] → [B, L, p*p*C]; [B, C, D, H, W] → [B, L, p*p*p*C] (channels last)."""
    B, C = imgs.shape[:2]
    if imgs.dim() == 4:
        ph, pw = patch_size
        h, w = imgs.shape[2] // ph, imgs.shape[3] // pw
        x = imgs.reshape(B, C, h, ph, w, pw)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(B, h * w, ph * pw * C)  # [B, L, p*p*C]
    if imgs.dim() == 5:
        pd, ph, pw = patch_size
        d, h, w = imgs.shape[2] // pd, imgs.shape[3] // ph, imgs.shape[4] // pw
        x = imgs.reshape(B, C, d, pd, h, ph, w, pw)
        x = torch.einsum("ncdohpwq->ndhwopqc", x)
        return x.reshape(B, d * h * w, pd * ph * pw * C)  # [B, L, p*p*p*C]
    raise ValueError(f"expected a 4-D or 5-D batch, got {list(imgs.shape)}")


def unpatchify(
    x: torch.Tensor, patch_size: Sequence[int], grid_size: Sequence[int], in_chans: int
) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, L, prod(p)*C] → [B, C, *spatial]."""
    B = x.shape[0]
    if len(grid_size) == 2:
        (h, w), (ph, pw) = grid_size, patch_size
        x = x.reshape(B, h, w, ph, pw, in_chans)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(B, in_chans, h * ph, w * pw)  # [B, C, H, W]
    (d, h, w), (pd, ph, pw) = grid_size, patch_size
    x = x.reshape(B, d, h, w, pd, ph, pw, in_chans)
    x = torch.einsum("ndhwopqc->ncdohpwq", x)
    return x.reshape(B, in_chans, d * pd, h * ph, w * pw)  # [B, C, D, H, W]


def normalized_patch_targets(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardization of [B, L, P] targets, as the reference (unbiased var, eps 1e-6)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as in the reference
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked patches of the per-patch MSE. pred/target [B, L, P], mask [B, L]."""
    loss = ((pred - target) ** 2).mean(dim=-1)  # [B, L], mean loss per patch
    return (loss * mask).sum() / mask.sum()


# -- decoder -------------------------------------------------------------------------------------
class MAEDecoder(nn.Module):
    """Embeds encoder tokens, fills masked slots with a mask token, unshuffles, predicts patches."""

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
        self.num_patches = num_patches
        self.grid_size = tuple(grid_size)
        self.embed_dim = embed_dim
        self.decoder_embed = nn.Linear(encoder_dim, embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False
        )
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        )
        self.decoder_norm = norm_layer(embed_dim)
        self.decoder_pred = nn.Linear(embed_dim, patch_dim, bias=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        pos = get_sincos_pos_embed(self.embed_dim, self.grid_size, cls_token=True)
        self.decoder_pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_linear_and_norm)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_pos_embed"}

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [B, 1+K, De] (class first), ids_restore [B, L] → prediction [B, L, P]."""
        x = self.decoder_embed(latent)  # [B, 1+K, Dd]
        B, L = ids_restore.shape
        mask_tokens = self.mask_token.repeat(B, L + 1 - x.shape[1], 1)  # [B, L-K, Dd]
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # [B, L, Dd], shuffle order
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1)  # [B, 1+L, Dd]
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)  # [B, 1+L, P]
        return x[:, 1:, :]  # [B, L, P], class token dropped


# -- the model -----------------------------------------------------------------------------------
@dataclass
class MIMOutput:
    """What every MIM model returns; methods may add fields in subclasses."""

    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # [B, L, P] predicted patches (normalized space when norm_pix_loss)
    mask: torch.Tensor  # [B, L], 1 = masked
    keep_idx: torch.Tensor | None = None  # [B, K] visible patch indices


class MIMModel(nn.Module):
    """What every MIM model here shares, given ``self.encoder`` (a VisionTransformerEncoder),
    ``self.decoder``, ``self.masking`` and ``self.norm_pix_loss``: patchify/unpatchify, the
    mask choice, weight-decay exclusions and the masked, optionally normalized pixel loss."""

    @property
    def mask_ratio(self) -> float:
        return self.masking.mask_ratio

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {
            f"decoder.{n}" for n in self.decoder.no_weight_decay()
        }

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.encoder.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.encoder.patch_size, self.encoder.grid_size, self.encoder.in_chans)

    def choose_mask(
        self,
        imgs: torch.Tensor,
        sample_seeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> MaskingResult:
        return self.masking(
            imgs.shape[0], self.encoder.grid_size, imgs.device, sample_seeds, imgs, noise
        )

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """imgs [B, C, *spatial], pred [B, L, P], mask [B, L] → scalar (masked patches only)."""
        target = self.patchify(imgs)  # [B, L, P]
        if self.norm_pix_loss:
            target = normalized_patch_targets(target)
        return masked_mse(pred, target, mask)


class MaskedAutoencoder(MIMModel):
    """MAE with a ViT encoder; 2-D or 3-D; any ``in_chans``."""

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        spatial_dims: int = 2,
        mask_ratio: float = 0.75,
        masking: str | MaskingStrategy = "random",
        norm_pix_loss: bool = False,
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
        patch_dim = math.prod(self.encoder.patch_size) * in_chans
        self.decoder = MAEDecoder(
            num_patches=self.encoder.num_patches,
            grid_size=self.encoder.grid_size,
            encoder_dim=embed_dim,
            patch_dim=patch_dim,
            embed_dim=decoder_embed_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
        )
        self.masking = build_masking(masking, mask_ratio)
        self.norm_pix_loss = norm_pix_loss

    def forward(
        self,
        imgs: torch.Tensor,
        sample_seeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> MIMOutput:
        """imgs [B, C, *spatial]; ``noise`` [B, L] or ``sample_seeds`` [B] fix the masks."""
        masking = self.choose_mask(imgs, sample_seeds, noise)
        latent = self.encoder.forward_features(imgs, masking.keep_idx)  # [B, 1+K, D]
        pred = self.decoder(latent, masking.ids_restore)  # [B, L, P]
        loss = self.forward_loss(imgs, pred.float(), masking.mask)
        return MIMOutput(loss=loss, pred=pred, mask=masking.mask, keep_idx=masking.keep_idx)
