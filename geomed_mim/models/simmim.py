"""SimMIM (Xie et al., 2022) on a Swin Transformer V2 encoder: SatVision-TOA's recipe.

Follows the SimMIM reference (and SatVision-TOA's copy of it) step for step:

* masking in *mask units* larger than the model patch (8-px units over 4-px patches, ratio 0.6,
  ``ceil`` of the unit count masked; :class:`~geomed_mim.models.masking.MaskUnitMasking`);
* a learned mask token replaces the masked patch embeddings at the encoder input, and the encoder
  sees every position (a hierarchical encoder cannot drop tokens);
* a one-layer decoder: a 1×1 convolution of the last stage to stride² × in_chans channels and a
  PixelShuffle back to the input resolution;
* an L1 loss on the masked pixels, normalized as the reference:
  ``sum(|x − x̂| · mask) / (sum(mask) + 1e-5) / in_chans`` (mask at pixel resolution).

The template is :class:`~geomed_mim.models.base.MIMModel`'s; the prediction is returned as
patches [B, L, P] like every method's, so the task's previews and baselines read it unchanged.
``forward(..., mask=...)`` takes an explicit mask, so the model can be compared with another
implementation on the same batch and mask. Registered names: ``simmim_swinv2_{tiny,base,giant}
_window8`` (2-D) and ``simmim_swinvit3d_feat48`` (3-D: MONAI's SwinUNETR encoder, a 3-D pixel
shuffle).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from geomed_mim.models.base import MIMModel, MIMOutput
from geomed_mim.models.masking import MaskingResult, MaskUnitMasking, masking_from_mask
from geomed_mim.models.patches import patchify
from geomed_mim.models.registry import register_model
from geomed_mim.models.swin import SWINV2_ARCHS, SwinV2Encoder
from geomed_mim.models.swin3d import SWINVIT3D_ARCHS, SwinViT3DEncoder


class SimMIMDecoder(nn.Module):
    """SimMIM's decoder: 1×1 conv to stride² × in_chans channels, then PixelShuffle(stride)."""

    def __init__(self, num_features: int, encoder_stride: int, in_chans: int) -> None:
        super().__init__()
        self.encoder_stride = encoder_stride
        self.decoder = nn.Sequential(
            nn.Conv2d(num_features, encoder_stride**2 * in_chans, kernel_size=1),
            nn.PixelShuffle(encoder_stride),
        )

    def no_weight_decay(self) -> set[str]:
        return set()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, H', W', C'] → reconstruction [B, in_chans, H' × stride, W' × stride]."""
        return self.decoder(features.permute(0, 3, 1, 2))  # NHWC → NCHW → [B, C, H, W]


class SimMIMDecoder3D(nn.Module):
    """The 3-D twin: 1×1×1 conv to stride³ × in_chans channels, then a 3-D pixel shuffle."""

    def __init__(self, num_features: int, encoder_stride: int, in_chans: int) -> None:
        super().__init__()
        self.encoder_stride = encoder_stride
        self.in_chans = in_chans
        self.conv = nn.Conv3d(num_features, encoder_stride**3 * in_chans, kernel_size=1)

    def no_weight_decay(self) -> set[str]:
        return set()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, C', d, h, w] → reconstruction [B, in_chans, d·s, h·s, w·s]."""
        x = self.conv(features)  # [B, C·s³, d, h, w]
        B, _, d, h, w = x.shape
        s, C = self.encoder_stride, self.in_chans
        x = x.reshape(B, C, s, s, s, d, h, w)  # PixelShuffle's channel order, one more axis
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # [B, C, d, s, h, s, w, s]
        return x.reshape(B, C, d * s, h * s, w * s)


class SimMIM(MIMModel):
    """SimMIM with a Swin V2 encoder (2-D) or MONAI's 3-D Swin; any ``in_chans``.

    Args:
        mask_patch_size: side of a mask unit in pixels (a multiple of the model patch).
        mask_ratio: share of mask units masked (``ceil``).
        norm_pix_loss: not part of SimMIM (targets are the pixels); must be False.
        encoder: ``"swinv2"`` (timm's, 2-D) or ``"swinvit3d"`` (MONAI's, 3-D).
        **encoder_kwargs: :class:`~geomed_mim.models.swin.SwinV2Encoder`'s (``img_size``,
            ``patch_size``, ``in_chans``, ``embed_dim``, ``depths``, ``num_heads``,
            ``window_size``, ``extra_norm_period``, ``grad_checkpointing``, ...) or
            :class:`~geomed_mim.models.swin3d.SwinViT3DEncoder`'s.
    """

    def __init__(
        self,
        mask_patch_size: int = 32,
        mask_ratio: float = 0.6,
        norm_pix_loss: bool = False,
        **encoder_kwargs: Any,
    ) -> None:
        if norm_pix_loss:
            raise ValueError("SimMIM reconstructs the pixels themselves: norm_pix_loss=False")
        super().__init__(norm_pix_loss, **encoder_kwargs)
        enc = self.encoder
        if mask_patch_size % enc.patch_size[0]:
            raise ValueError(
                f"mask_patch_size {mask_patch_size} is not a multiple of the patch "
                f"{enc.patch_size[0]}"
            )
        if enc.spatial_dims == 3:
            self.decoder = SimMIMDecoder3D(enc.out_channels, enc.encoder_stride, enc.in_chans)
        else:
            self.decoder = SimMIMDecoder(enc.num_features, enc.encoder_stride, enc.in_chans)
        self.masking = MaskUnitMasking(mask_ratio, mask_patch_size // enc.patch_size[0])
        self.mask_patch_size = mask_patch_size

    def build_encoder(self, encoder: str = "swinv2", **encoder_kwargs: Any) -> nn.Module:
        if encoder == "swinvit3d" or encoder_kwargs.get("spatial_dims") == 3:
            return SwinViT3DEncoder(**encoder_kwargs)
        if encoder != "swinv2":
            raise ValueError(f"SimMIM runs on 'swinv2' (2-D) or 'swinvit3d', not {encoder!r}")
        return SwinV2Encoder(**encoder_kwargs)

    @classmethod
    def from_swin_size(cls, size: str, window_size: int, /, **kwargs: Any) -> SimMIM:
        """A registry builder's body: the encoder of ``size`` (:data:`SWINV2_ARCHS`), the
        patch 4 and masking (8-px units, 0.6) of SatVision-TOA, then ``kwargs`` on top."""
        config = {
            "patch_size": 4,
            "mask_patch_size": 8,
            "mask_ratio": 0.6,
            "window_size": window_size,
            **SWINV2_ARCHS[size],
        }
        model = cls(**{**config, **kwargs})
        model.encoder_arch = {"family": "swinv2", "size": size, "window_size": window_size}
        return model

    # -- the template --------------------------------------------------------------------------
    def forward(
        self,
        imgs: torch.Tensor,
        sample_seeds: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> MIMOutput:
        """imgs [B, C, *spatial]; ``mask`` [B, *grid] or [B, L] over the patch grid (1 = masked)
        fixes the mask outright, else ``noise`` [B, units] or ``sample_seeds`` [B] draw it."""
        patches = self.encoder.patch_embed(imgs)  # [B, h, w, D] (2-D), [B, D, d, h, w] (3-D)
        if mask is not None:
            choice = masking_from_mask(mask.reshape(imgs.shape[0], -1).float())
        else:
            choice = self.choose_tokens(imgs, patches, sample_seeds, noise)
        encoded = self.forward_encoder(patches, choice)
        pred = self.forward_decoder(encoded, choice)  # [B, L, P]
        loss, per_sample = self.forward_loss(imgs, pred.float(), choice)
        return self.make_output(loss, per_sample, pred, choice)

    def forward_encoder(self, patches: torch.Tensor, choice: MaskingResult) -> torch.Tensor:
        """Every position, masked ones as the mask token → the last stage's features."""
        return self.encoder.forward_from_patches(patches, choice.mask)

    def forward_decoder(self, encoded: torch.Tensor, choice: MaskingResult) -> torch.Tensor:
        """Reconstruction as patches [B, L, P] (P = p × p (× p) × in_chans)."""
        return self.patchify(self.decoder(encoded))  # [B, C, *spatial] → [B, L, P]

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, choice: MaskingResult
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's L1: |x − x̂| summed over masked pixels and bands, over (masked pixels
        + 1e-5), over in_chans: (scalar, [B] each sample's own)."""
        target = patchify(imgs, self.encoder.patch_size)  # [B, L, P]
        pixels = math.prod(self.encoder.patch_size)  # pixels per patch
        l1 = (pred - target).abs().sum(dim=-1) * choice.mask  # [B, L], masked patches only
        C = self.encoder.in_chans
        per_sample = l1.sum(dim=1) / (choice.mask.sum(dim=1) * pixels + 1e-5) / C  # [B]
        return l1.sum() / (choice.mask.sum() * pixels + 1e-5) / C, per_sample

    # -- what the task prints beside the loss ----------------------------------------------------
    baseline_name = "patch-mean"

    def trivial_baseline_loss(self, imgs: torch.Tensor, out: MIMOutput) -> torch.Tensor:
        """The same L1 on the same masked pixels for predicting each masked patch's own mean
        (over its pixels and bands): a model must beat it to have learned anything."""
        target = patchify(imgs.float(), self.encoder.patch_size)  # [B, L, P]
        means = target.mean(dim=-1, keepdim=True).expand_as(target)  # [B, L, P]
        choice = masking_from_mask(out.mask.float())
        return self.forward_loss(imgs.float(), means, choice)[0]


# -- registry ------------------------------------------------------------------------------------
@register_model
def simmim_swinv2_tiny_window8(**kwargs: Any) -> SimMIM:
    return SimMIM.from_swin_size("tiny", 8, **kwargs)


@register_model
def simmim_swinv2_base_window8(**kwargs: Any) -> SimMIM:
    return SimMIM.from_swin_size("base", 8, **kwargs)


@register_model
def simmim_swinv2_giant_window8(**kwargs: Any) -> SimMIM:
    return SimMIM.from_swin_size("giant", 8, **kwargs)


@register_model
def simmim_swinvit3d_feat48(**kwargs: Any) -> SimMIM:
    """SwinUNETR's encoder (MONAI, feature size 48, patch 2, window 7) for CT: 96³ crops,
    mask units of 16 voxels (8³ patches) at ratio 0.6."""
    config = {
        "encoder": "swinvit3d",
        "spatial_dims": 3,
        "img_size": 96,
        "in_chans": 1,
        "patch_size": 2,
        "window_size": 7,
        "mask_patch_size": 16,
        "mask_ratio": 0.6,
        **SWINVIT3D_ARCHS["feat48"],
    }
    model = SimMIM(**{**config, **kwargs})
    model.encoder_arch = {"family": "swinvit3d", "size": "feat48"}
    return model
