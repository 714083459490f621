"""What every masked-image model here shares: the forward template and the masked pixel loss.

The template is MAE's (facebookresearch/mae, ``models_mae.py``)::

    forward(imgs) → choose_tokens → forward_encoder → forward_decoder → forward_loss

:class:`MIMModel` owns the template, the encoder (built in one place from the shared arguments),
patchify/unpatchify, per-patch target normalization (unbiased variance, eps 1e-6) and the loss.
A method overrides only the step that differs: MAE none, Hi-End-MAE the encoder and decoder steps
(the decoder also reads intermediate blocks), SelectiveMAE the token choice, the decoder step and
which patches the loss is taken on (:meth:`MIMModel.loss_targets`).

:class:`MIMDecoder` is the decoder skeleton MAE's and CrossMAE's decoders share: the projection of
the encoder output, the mask token, fixed sin-cos decoder positions, the blocks, norm and head,
initialized as the reference does; it also holds MAE's unshuffle step (visible tokens and mask
tokens back into patch order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from geomed_mim.models.masking import MaskingResult, MaskingStrategy
from geomed_mim.models.patches import gather_tokens, patchify, unpatchify
from geomed_mim.models.pos_embed import get_sincos_pos_embed
from geomed_mim.models.vit import ENCODER_ARCHS, VisionTransformerEncoder, init_linear_and_norm


def normalized_patch_targets(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardization of [B, N, P] targets, as the reference (unbiased var, eps 1e-6)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as in the reference
    return (target - mean) / (var + eps) ** 0.5


@dataclass
class MIMOutput:
    """What every MIM model returns; methods may add fields in subclasses."""

    loss: torch.Tensor  # scalar
    pred: torch.Tensor  # [B, L, P] predicted patches (normalized space when norm_pix_loss)
    mask: torch.Tensor  # [B, L], 1 = masked (not encoded)
    keep_idx: torch.Tensor | None = None  # [B, K] encoded patch indices
    per_sample_loss: torch.Tensor | None = None  # [B], each sample's mean over its loss patches


# -- decoder skeleton ----------------------------------------------------------------------------
class MIMDecoder(nn.Module):
    """For ``encoder``'s patch grid: projection of its tokens, mask token, fixed sin-cos positions
    (class slot first), ``depth`` blocks, norm and a linear head to the patch's values
    (prod(patch_size) × in_chans). The encoder is read, not kept. A decoder class names its block
    in ``make_block(dim, num_heads, mlp_ratio)``."""

    make_block: Callable[[int, int, float], nn.Module]

    def __init__(
        self,
        encoder: VisionTransformerEncoder,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
    ) -> None:
        super().__init__()
        num_patches = encoder.num_patches
        patch_dim = math.prod(encoder.patch_size) * encoder.in_chans
        self.num_patches = num_patches
        self.grid_size = tuple(encoder.grid_size)
        self.pos_embed_scale = float(getattr(encoder, "pos_embed_scale", 1.0))  # the encoder's
        self.embed_dim = embed_dim
        self.decoder_embed = nn.Linear(encoder.embed_dim, embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            self.make_block(embed_dim, num_heads, encoder.mlp_ratio) for _ in range(depth)
        )
        self.decoder_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(embed_dim, patch_dim, bias=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        pos = get_sincos_pos_embed(
            self.embed_dim, self.grid_size, cls_token=True, scale=self.pos_embed_scale
        )
        self.decoder_pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_linear_and_norm)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token", "decoder_pos_embed"}

    def unshuffle_with_mask_tokens(
        self, latent: torch.Tensor, ids_restore: torch.Tensor
    ) -> torch.Tensor:
        """MAE's decoder input: latent [B, 1+K, De] (class first, visible in shuffle order),
        ids_restore [B, L] → [cls, all L patches in patch order] + positions, [B, 1+L, Dd]."""
        x = self.decoder_embed(latent)  # [B, 1+K, Dd]
        B, L = ids_restore.shape
        mask_tokens = self.mask_token.expand(B, L + 1 - x.shape[1], -1)  # [B, L-K, Dd]
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # [B, L, Dd], shuffle order
        x_ = gather_tokens(x_, ids_restore)  # [B, L, Dd], patch order
        return torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed  # [B, 1+L, Dd]


# -- the model -----------------------------------------------------------------------------------
class MIMModel(nn.Module):
    """Base of the MIM models: the encoder, the forward template and the loss.

    Subclasses set ``self.decoder`` and ``self.masking`` after ``super().__init__(...)`` and
    override the steps that differ.

    Args:
        norm_pix_loss: targets are per-patch normalized pixels (MAE's ``norm_pix_loss``).
        norm_pix_eps: (a keyword of every model) added to each patch's variance before the
            normalization: MAE's 1e-6 by default. Patches flat up to noise (CT tissue and fat
            after windowing) have their noise blown up to unit-variance targets no model can
            predict; an eps near the noise variance (1e-3 for CT windowed to [0, 1], about
            13 HU of noise in a 425 HU window) keeps their targets near zero.
        **encoder_kwargs: the encoder's arguments, the one place it is built
            (:meth:`build_encoder`; ``encoder="vit"``, the only family MAE-style methods take:
            :class:`~geomed_mim.models.vit.VisionTransformerEncoder`: ``img_size``,
            ``patch_size``, ``in_chans``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``,
            ``spatial_dims``, ``drop_path_rate``, ``pos_embed_scale``: spacing of the patch
            positions in the sin-cos embedding, the decoder's too).
    """

    decoder: nn.Module
    masking: MaskingStrategy

    def __init__(self, norm_pix_loss: bool = False, **encoder_kwargs: Any) -> None:
        super().__init__()
        self.norm_pix_eps = float(encoder_kwargs.pop("norm_pix_eps", 1e-6))
        self.encoder = self.build_encoder(**encoder_kwargs)
        self.norm_pix_loss = norm_pix_loss

    def build_encoder(self, encoder: str = "vit", **encoder_kwargs: Any) -> nn.Module:
        """The encoder; ``encoder`` names its family. The methods here drop masked tokens before
        the encoder, which only a plain ViT can do (SimMIM overrides this)."""
        if encoder != "vit":
            raise ValueError(
                f"{type(self).__name__} drops masked tokens, which needs a plain ViT; "
                f"{encoder!r} is hierarchical (windows and patch merges need every position): "
                "use SimMIM (simmim_swinv2_*) for it"
            )
        return VisionTransformerEncoder(**encoder_kwargs)

    @classmethod
    def from_size(
        cls,
        size: str,
        default_patch_size: int,
        decoder_defaults: dict[str, Any],
        timm_patch_size: int | None = None,
        /,
        **kwargs: Any,
    ) -> MIMModel:
        """A registry builder's body: the encoder of ``size`` (:data:`ENCODER_ARCHS`) with
        ``default_patch_size``, the decoder defaults, then ``kwargs`` on top of both. The model's
        ``encoder_arch`` names the timm architecture exports point to (its patch size is
        ``timm_patch_size``, default ``default_patch_size``; an override travels as a kwarg)."""
        config = {"patch_size": default_patch_size, **ENCODER_ARCHS[size], **decoder_defaults}
        model = cls(**{**config, **kwargs})
        model.encoder_arch = {"size": size, "patch_size": timm_patch_size or default_patch_size}
        return model

    # -- shapes and parameter groups -----------------------------------------------------------
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

    # -- the template --------------------------------------------------------------------------
    def forward(
        self,
        imgs: torch.Tensor,
        sample_seeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> MIMOutput:
        """imgs [B, C, *spatial]; ``sample_seeds`` [B] make each sample's token choice its own
        and reproducible, ``noise`` [B, L] fixes it outright (ascending argsort: encoded first)."""
        patches = self.encoder.patch_embed(imgs)  # [B, L, D], once: token choice may read it
        choice = self.choose_tokens(imgs, patches, sample_seeds, noise)
        encoded = self.forward_encoder(patches, choice)
        pred = self.forward_decoder(encoded, choice)  # [B, L, P] (or [B, T, P] at targets)
        loss, per_sample = self.forward_loss(imgs, pred.float(), choice)
        return self.make_output(loss, per_sample, pred, choice)

    def choose_tokens(
        self,
        imgs: torch.Tensor,
        patches: torch.Tensor,
        sample_seeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> Any:
        """Which patches the encoder sees (and the decoder reconstructs); MAE: the masking."""
        return self.masking(
            imgs.shape[0], self.encoder.grid_size, imgs.device, sample_seeds, imgs, noise
        )

    def forward_encoder(self, patches: torch.Tensor, choice: Any) -> Any:
        """Normed encoder output [B, 1+K, D] over the chosen patches."""
        return self.encoder.forward_from_patches(patches, choice.keep_idx)[0]

    def forward_decoder(self, encoded: Any, choice: MaskingResult) -> torch.Tensor:
        """Prediction [B, L, P] for every patch (MAE's decoder, in patch order)."""
        return self.decoder(encoded, choice.ids_restore)

    def loss_targets(self, choice: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(target_idx [B, T] or None, loss_mask or None): the patches ``pred`` holds (None: all
        L, in patch order) and which of them count (None: all, equally). MAE: every patch is
        predicted, the masked ones count."""
        return None, choice.mask

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, choice: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE against (per-patch normalized) pixels on the loss patches: (scalar, [B])."""
        target_idx, loss_mask = self.loss_targets(choice)
        target = self.patchify(imgs)  # [B, L, P]
        if target_idx is not None:
            target = gather_tokens(target, target_idx)  # [B, T, P]
        if self.norm_pix_loss:
            target = normalized_patch_targets(target, self.norm_pix_eps)
        loss = ((pred - target) ** 2).mean(dim=-1)  # [B, N], mean loss per patch
        if loss_mask is None:  # equal counts per sample: the mean over all is the mean of means
            per_sample = loss.mean(dim=-1)  # [B]
            return per_sample.mean(), per_sample
        per_sample = (loss * loss_mask).sum(dim=-1) / loss_mask.sum(dim=-1)  # [B]
        return (loss * loss_mask).sum() / loss_mask.sum(), per_sample

    def make_output(
        self, loss: torch.Tensor, per_sample: torch.Tensor, pred: torch.Tensor, choice: Any
    ) -> MIMOutput:
        return MIMOutput(
            loss=loss,
            pred=pred,
            mask=choice.mask,
            keep_idx=choice.keep_idx,
            per_sample_loss=per_sample,
        )
