"""Swin Transformer V2 encoder (Liu et al., 2022) for SimMIM: timm's model, any band count.

:class:`SwinV2Encoder` *is* timm's ``SwinTransformerV2`` (headless), so its parameters carry
timm's names and a state dict moves between the two; it adds what masked image modeling needs:

* a learned mask token that replaces the embeddings of masked patches at the encoder input (the
  encoder sees every position: a hierarchical encoder cannot skip tokens, its windows and patch
  merges need the full grid);
* the extra LayerNorms on the main branch that Swin V2 adds at giant scale to keep activations
  bounded (``extra_norm_period``: after every N-th block of a stage; ``extra_norm_stage``: after
  the last block of each stage). timm's ``SwinTransformerV2`` has no such option, so they live
  here, in ``extra_norms``; an encoder with them has no timm twin;
* activation checkpointing per block (``grad_checkpointing``), for giant models.

2-D only; timm's layout is channels last: features are [B, H', W', C'].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from timm.layers import trunc_normal_
from timm.models.swin_transformer_v2 import SwinTransformerV2
from torch import nn

from data_pipelines.errors import UserError

# sizes: (embed_dim, depths, num_heads) and, at giant scale, the extra norms
SWINV2_ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "small": {"embed_dim": 96, "depths": (2, 2, 18, 2), "num_heads": (3, 6, 12, 24)},
    "base": {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)},
    "large": {"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48)},
    # SatVision-TOA's giant: about 3 B parameters, a LayerNorm after every 6th block
    "giant": {
        "embed_dim": 512,
        "depths": (2, 2, 42, 2),
        "num_heads": (16, 32, 64, 128),
        "extra_norm_period": 6,
    },
}


class NoTimmTwinError(UserError, ValueError):
    """The encoder has parts timm's ``SwinTransformerV2`` lacks (the extra norms)."""


class SwinV2Encoder(SwinTransformerV2):
    """timm's Swin V2 without a head, with a mask token, optional extra norms and checkpointing.

    Args:
        img_size, patch_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio,
            drop_path_rate: timm's ``SwinTransformerV2`` arguments.
        spatial_dims: 2 (the argument every encoder here takes; 3-D is not implemented).
        extra_norm_period: a LayerNorm on the main branch after every N-th block of a stage
            (0 = none).
        extra_norm_stage: a LayerNorm after the last block of each stage but the last (whose
            output the final norm already normalizes).
        grad_checkpointing: recompute each block's activations in the backward pass.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 192,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 8,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        spatial_dims: int = 2,
        extra_norm_period: int = 0,
        extra_norm_stage: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        if spatial_dims != 2:
            raise ValueError(f"the Swin V2 encoder is 2-D only, got spatial_dims={spatial_dims}")
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        super().__init__(
            img_size=img,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
        )
        self.spatial_dims = 2
        self.img_size = tuple(int(s) for s in img)
        self.patch_size = (int(patch_size), int(patch_size))
        self.grid_size = tuple(int(g) for g in self.patch_embed.grid_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.depths = tuple(int(d) for d in depths)
        self.depth = sum(self.depths)  # blocks in all stages
        self.mlp_ratio = mlp_ratio
        # the last stage's output is patch × 2^(stages - 1) pixels apart: SimMIM's decoder stride
        self.encoder_stride = int(patch_size) * 2 ** (len(self.depths) - 1)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        trunc_normal_(self.mask_token, mean=0.0, std=0.02)
        self.extra_norms = nn.ModuleDict()
        for s, stage in enumerate(self.layers):
            dim = stage.blocks[0].norm1.normalized_shape[0]
            for b in range(self.depths[s]):
                period = extra_norm_period and (b + 1) % extra_norm_period == 0
                stage_end = extra_norm_stage and b + 1 == self.depths[s] and s + 1 < len(depths)
                if period or stage_end:
                    self.extra_norms[f"{s}_{b}"] = nn.LayerNorm(dim)
        self.grad_checkpointing = grad_checkpointing
        # what rebuilds this encoder as timm's SwinTransformerV2 (the export's timm_kwargs)
        self.timm_kwargs = {
            "img_size": list(self.img_size),
            "patch_size": int(patch_size),
            "in_chans": int(in_chans),
            "embed_dim": int(embed_dim),
            "depths": list(self.depths),
            "num_heads": [int(h) for h in num_heads],
            "window_size": int(window_size),
            "mlp_ratio": float(mlp_ratio),
            "num_classes": 0,
        }
        # every size argument (no img_size / in_chans): what rebuilds it at another size
        self.size_kwargs: dict[str, Any] = {
            **{k: v for k, v in self.timm_kwargs.items()
               if k not in ("img_size", "in_chans", "num_classes")},
            "extra_norm_period": int(extra_norm_period),
            "extra_norm_stage": bool(extra_norm_stage),
        }  # fmt: skip

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_from_patches(
        self, patches: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """patches [B, H, W, D] (``patch_embed``'s output), mask [B, L] (1 = masked) or None →
        normed last-stage features [B, H', W', C']."""
        x = patches
        if mask is not None:
            B, H, W, _ = x.shape
            w = mask.reshape(B, H, W, 1).type_as(x)  # [B, H, W, 1]
            x = x * (1.0 - w) + self.mask_token.type_as(x) * w  # masked → mask token
        for s in range(len(self.layers)):
            x = self.run_stage(s, x)
        return self.norm(x)  # [B, H', W', C']

    def run_stage(self, s: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``s`` (its patch merge, its blocks and their extra norms): [B, H, W, C] →
        [B, H/2, W/2, 2C] (stage 0 keeps the size)."""
        stage = self.layers[s]
        x = stage.downsample(x)  # [B, H/2^s, W/2^s, C_s]
        for b, blk in enumerate(stage.blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if f"{s}_{b}" in self.extra_norms:
                x = self.extra_norms[f"{s}_{b}"](x)
        return x

    def forward_stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """imgs [B, C, H, W] → every stage's output as a map [B, C_s, H/(p·2^s), W/(p·2^s)],
        the last one normed: timm's ``forward_intermediates(x, norm=True)`` (a segmentation
        head's input)."""
        x = self.patch_embed(x)  # [B, H/p, W/p, D]
        maps = []
        for s in range(len(self.layers)):
            x = self.run_stage(s, x)
            out = self.norm(x) if s == len(self.layers) - 1 else x  # the norm is the last's
            maps.append(out.permute(0, 3, 1, 2).contiguous())  # NHWC → NCHW
        return maps

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """imgs [B, C, H, W] → normed features [B, H', W', C'] (timm's layout)."""
        return self.forward_from_patches(self.patch_embed(x), mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(x, mask)

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights timm's ``SwinTransformerV2`` loads: without the mask token."""
        if len(self.extra_norms):
            raise NoTimmTwinError(
                "timm's SwinTransformerV2 has no extra norms (extra_norm_period/_stage); this "
                "encoder has some, so it has no timm export"
            )
        return {k: v for k, v in self.state_dict().items() if not k.startswith("mask_token")}
