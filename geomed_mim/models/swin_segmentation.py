"""Segmentation networks on the hierarchical (Swin) encoders, 2-D and 3-D.

* **2-D** :class:`SwinV2FPN`: this project's Swin V2 encoder (timm's ``SwinTransformerV2``,
  :class:`~geomed_mim.models.swin.SwinV2Encoder`) under an FPN head, UPerNet's feature-pyramid
  path without its pyramid pooling module: each stage's map gets a 1×1 lateral convolution to
  ``channels``, a top-down pass adds each coarser level (upsampled) to the next finer one, a 3×3
  convolution smooths each level, all levels are upsampled to the finest (stride = patch size),
  concatenated and fused by a 3×3 convolution; a 1×1 convolution gives the class logits, upsampled
  bilinearly to the input size. It reads every stage there is (four for the standard sizes, two
  for the demo's encoder).
* **2-D probe** :class:`SwinV2LinearHead`: one linear layer on the last stage's normed features,
  upsampled (what the frozen features alone separate).
* **3-D** :class:`SwinUNETRSegmenter`: MONAI's ``SwinUNETR`` itself (its encoder ``swinViT`` is
  MONAI's ``SwinTransformer``, the weights ``--from swinunetr`` converts and SimMIM 3-D trains;
  its decoder is SwinUNETR's), with the interface the segmentation task uses (``encoder``,
  ``skip_blocks``, ``group_matcher``).

Both report their architecture as ``{"family": ..., **size arguments}`` (:meth:`encoder_record`),
which is what the task's checkpoint stores and rebuilds from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets import SwinUNETR
from torch import nn
from torch.nn import functional as F

from geomed_mim.models.swin import SwinV2Encoder
from geomed_mim.models.swin3d import swin3d_size_kwargs


def conv_norm_act(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    """Conv → GroupNorm → ReLU (GroupNorm: the coarsest maps are 1×1, where batch statistics of
    a small batch say nothing)."""
    groups = 8 if out_ch % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(groups, out_ch),
        nn.ReLU(inplace=True),
    )


class SwinV2FPN(nn.Module):
    """Swin V2 encoder + FPN head (see the module docstring).

    Args:
        encoder: a :class:`SwinV2Encoder` (pretrained or fresh).
        num_classes: output channels (class ids are the channel indices).
        channels: width of every pyramid level and of the fused map.
    """

    encoder_prefix = "encoder."  # the encoder's parameter names in this module

    def __init__(self, encoder: SwinV2Encoder, num_classes: int, channels: int = 32) -> None:
        super().__init__()
        self.encoder = encoder
        self.skip_blocks: list[int] = []  # the head reads whole stages, not blocks
        # each stage doubles the width: C, 2C, 4C, ...
        widths = [encoder.embed_dim * 2**s for s in range(len(encoder.layers))]
        self.lateral = nn.ModuleList(nn.Conv2d(w, channels, 1) for w in widths)
        self.smooth = nn.ModuleList(conv_norm_act(channels, channels, 3) for _ in widths)
        self.fuse = conv_norm_act(channels * len(widths), channels, 3)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        # the mask token is SimMIM's: fine-tuning never masks, so it stays as loaded
        encoder.mask_token.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] → logits [B, num_classes, H, W]."""
        maps = self.encoder.forward_stage_maps(x)  # stage s: [B, C·2^s, H/(p·2^s), W/(p·2^s)]
        levels = [lat(m) for lat, m in zip(self.lateral, maps, strict=True)]  # [B, ch, ...]
        for i in range(len(levels) - 2, -1, -1):  # top-down: coarse into fine
            up = F.interpolate(levels[i + 1], size=levels[i].shape[2:], mode="nearest")
            levels[i] = levels[i] + up
        finest = levels[0].shape[2:]  # stride p
        outs = [
            F.interpolate(sm(lv), size=finest, mode="bilinear", align_corners=False)
            for sm, lv in zip(self.smooth, levels, strict=True)
        ]  # each [B, ch, H/p, W/p]
        logits = self.classifier(self.fuse(torch.cat(outs, dim=1)))  # [B, K, H/p, W/p]
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's Swin V2 grouping under ``encoder.``: the embedding, then one layer per block
        (a stage's patch merge with its first block, an extra norm with its block); the final
        norm and the head form the last layer (full lr)."""
        return {
            "stem": r"^encoder\.(?:absolute_pos_embed|patch_embed|mask_token)",
            "blocks": [
                (r"^encoder\.layers\.(\d+)\.downsample", (0,)),
                (r"^encoder\.layers\.(\d+)\.\w+\.(\d+)", None),
                (r"^encoder\.extra_norms\.(\d+)_(\d+)", None),
            ],
        }

    def encoder_record(self) -> dict[str, Any]:
        return {"family": "swinv2", **self.encoder.size_kwargs}


class SwinV2LinearHead(nn.Module):
    """Linear probe on a Swin V2 encoder: a linear layer on the normed last-stage features
    (timm's ``forward_features``) gives each position's class logits, upsampled bilinearly to
    the input size; the Swin counterpart of the ViT's ``LinearPatchHead``, with
    :class:`SwinV2FPN`'s interface."""

    encoder_prefix = "encoder."
    group_matcher = SwinV2FPN.group_matcher
    encoder_record = SwinV2FPN.encoder_record

    def __init__(self, encoder: SwinV2Encoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.skip_blocks: list[int] = []
        self.head = nn.Linear(encoder.num_features, num_classes)
        encoder.mask_token.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] → logits [B, num_classes, H, W]."""
        feats = self.encoder.forward_features(x)  # [B, H', W', C'], stride p·2^(stages-1)
        logits = self.head(feats).permute(0, 3, 1, 2)  # [B, K, H', W']
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


class SwinUNETRSegmenter(SwinUNETR):
    """MONAI's ``SwinUNETR`` (3-D) with the segmentation task's interface.

    Args:
        in_chans: input channels (bands).
        num_classes: output channels.
        embed_dim: the Swin encoder's width, SwinUNETR's ``feature_size`` (a multiple of 12).
        depths, num_heads, window_size, patch_size, mlp_ratio: the encoder's sizes.
    """

    encoder_prefix = "swinViT."

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        patch_size: int = 2,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__(
            in_channels=in_chans,
            out_channels=num_classes,
            feature_size=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            patch_size=patch_size,
            mlp_ratio=mlp_ratio,
            spatial_dims=3,
        )
        self.skip_blocks: list[int] = []
        self.size_kwargs = swin3d_size_kwargs(
            embed_dim, depths, num_heads, window_size, patch_size, mlp_ratio
        )

    @property
    def encoder(self) -> nn.Module:
        """SwinUNETR's Swin encoder (MONAI's ``SwinTransformer``)."""
        return self.swinViT

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """The patch embedding, then one layer per block (a stage's closing patch merge with its
        last block); the whole decoder forms the last layer (full lr)."""
        return {
            "stem": r"^swinViT\.patch_embed",
            "blocks": [
                (r"^swinViT\.layers(\d)\.0\.blocks\.(\d+)", None),
                (r"^swinViT\.layers(\d)\.0\.downsample", (99999,)),
            ],
        }

    def encoder_record(self) -> dict[str, Any]:
        return {"family": "swin3d", **self.size_kwargs}
