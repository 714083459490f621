"""Masked autoencoder (He et al., 2022) for 2-D images and 3-D volumes with any channel count.

Follows the MAE reference (facebookresearch/mae, ``models_mae.py``) step for step:
per-sample random masking by argsort of noise, encoder over visible patches + class token,
a lighter decoder over [visible, mask tokens] with its own fixed sin-cos positions, and an MSE
loss on masked patches only, against per-patch normalized pixels when ``norm_pix_loss``
(unbiased variance, eps 1e-6). The template, the encoder and the loss are
:class:`~geomed_mim.models.base.MIMModel`'s; MAE only adds its decoder and a masking strategy
(:mod:`geomed_mim.models.masking`). Registered names: ``mae_vit_{tiny,small,base,large}_patch16``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from geomed_mim.models.base import MIMDecoder, MIMModel
from geomed_mim.models.masking import MaskingStrategy, build_masking
from geomed_mim.models.registry import register_sizes
from geomed_mim.models.vit import ENCODER_ARCHS

# the MAE reference decoder, the same for every encoder size
MAE_DECODER_DEFAULTS: dict[str, Any] = {
    "decoder_embed_dim": 512,
    "decoder_depth": 8,
    "decoder_num_heads": 16,
}


class MAEDecoder(MIMDecoder):
    """Embeds encoder tokens, fills masked slots with a mask token, unshuffles, predicts patches."""

    # timm's ViT block, as the reference decoder stacks it (qkv bias, LayerNorm eps 1e-6)
    make_block = partial(Block, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [B, 1+K, De] (class first), ids_restore [B, L] → prediction [B, L, P]."""
        x = self.unshuffle_with_mask_tokens(latent, ids_restore)  # [B, 1+L, Dd]
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))  # [B, 1+L, P]
        return x[:, 1:, :]  # [B, L, P], class token dropped


class MaskedAutoencoder(MIMModel):
    """MAE with a ViT encoder; 2-D or 3-D; any ``in_chans``.

    Args:
        decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder's size.
        mask_ratio: share of patches hidden from the encoder.
        masking: ``"random"`` (MAE), ``"block"`` or a :class:`MaskingStrategy`.
        **encoder_kwargs: the encoder's (:class:`~geomed_mim.models.base.MIMModel`); the encoder
            defaults to ViT-L, as the reference's.
    """

    def __init__(
        self,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        masking: str | MaskingStrategy = "random",
        norm_pix_loss: bool = False,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__(norm_pix_loss, **{**ENCODER_ARCHS["large"], **encoder_kwargs})
        self.decoder = MAEDecoder(self.encoder, decoder_embed_dim, decoder_depth, decoder_num_heads)
        self.masking = build_masking(masking, mask_ratio)


# -- registry ------------------------------------------------------------------------------------
def _mae(size: str, patch_size: int, /, **kwargs: Any) -> MaskedAutoencoder:
    return MaskedAutoencoder.from_size(size, patch_size, MAE_DECODER_DEFAULTS, **kwargs)


register_sizes("mae_vit", _mae, tuple(ENCODER_ARCHS))
