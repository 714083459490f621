"""3-D Swin encoder for SimMIM on volumes: MONAI's ``SwinTransformer`` (SwinUNETR's SwinViT).

:class:`SwinViT3DEncoder` *is* MONAI's ``SwinTransformer`` (its parameter names, so SwinUNETR
can load the encoder), with a learned mask token that replaces the masked patch embeddings at
the input. MONAI's stages merge patches at their *end*, the last one included, so the last
output is ``patch × 2^stages`` voxels apart with ``embed_dim × 2^stages`` channels; it is
layer-normed without affine parameters, as SwinUNETR reads it (``proj_out(x, normalize=True)``).
Layout channels first: features are [B, C', D', H', W'].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from timm.layers import trunc_normal_
from torch import nn

# SwinUNETR's encoder (feature size 48)
SWINVIT3D_ARCHS: dict[str, dict] = {
    "feat48": {"embed_dim": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)},
}


def swin3d_size_kwargs(
    embed_dim: int,
    depths: Sequence[int],
    num_heads: Sequence[int],
    window_size: int,
    patch_size: int,
    mlp_ratio: float,
) -> dict[str, Any]:
    """A 3-D Swin's size arguments as plain JSON values (no img_size / in_chans): what rebuilds
    :class:`SwinViT3DEncoder` or SwinUNETR's swinViT."""
    return {
        "embed_dim": int(embed_dim),
        "depths": [int(d) for d in depths],
        "num_heads": [int(h) for h in num_heads],
        "window_size": int(window_size),
        "patch_size": int(patch_size),
        "mlp_ratio": float(mlp_ratio),
    }


class SwinViT3DEncoder(SwinTransformer):
    """MONAI's 3-D Swin Transformer with a mask token, for SimMIM.

    Args:
        img_size: crop side(s) in voxels (a multiple of ``patch_size × 2^stages``).
        patch_size, in_chans, embed_dim, depths, num_heads, window_size, mlp_ratio,
            drop_path_rate: MONAI's ``SwinTransformer`` arguments (one int per axis or all).
        spatial_dims: 3.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 96,
        patch_size: int = 2,
        in_chans: int = 1,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        spatial_dims: int = 3,
    ) -> None:
        if spatial_dims != 3 or len(depths) != 4:
            raise ValueError("the MONAI Swin encoder here is 3-D with 4 stages")
        super().__init__(
            in_chans=in_chans,
            embed_dim=embed_dim,
            window_size=(window_size,) * 3,
            patch_size=(patch_size,) * 3,
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            spatial_dims=3,
        )
        img = (img_size,) * 3 if isinstance(img_size, int) else tuple(img_size)
        stride = patch_size * 2 ** len(depths)
        if any(s % stride for s in img):
            raise ValueError(f"img_size {list(img)} is not a multiple of {stride} (patch x 2^4)")
        self.spatial_dims = 3
        self.img_size = tuple(int(s) for s in img)
        self.patch_size = (int(patch_size),) * 3
        self.grid_size = tuple(s // patch_size for s in self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.in_chans = int(in_chans)
        self.depth = sum(depths)
        self.mlp_ratio = mlp_ratio
        self.encoder_stride = stride  # every stage merges at its end, the last one too
        self.out_channels = embed_dim * 2 ** len(depths)
        # every size argument (no img_size / in_chans): what rebuilds it, or SwinUNETR's swinViT
        self.size_kwargs = swin3d_size_kwargs(
            embed_dim, depths, num_heads, window_size, patch_size, mlp_ratio
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim, 1, 1, 1))
        trunc_normal_(self.mask_token, mean=0.0, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def forward_from_patches(
        self, patches: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """patches [B, C, d, h, w] (``patch_embed``'s output), mask [B, L] (1 = masked) or None
        → the last stage's layer-normed output [B, C', D', H', W']."""
        x = patches
        if mask is not None:
            B, _, d, h, w = x.shape
            m = mask.reshape(B, 1, d, h, w).type_as(x)  # [B, 1, d, h, w]
            x = x * (1.0 - m) + self.mask_token.type_as(x) * m
        x = self.pos_drop(x)
        for n in range(1, 5):
            if self.use_v2:
                x = getattr(self, f"layers{n}c")[0](x.contiguous())
            x = getattr(self, f"layers{n}")[0](x.contiguous())  # ends with a patch merge
        return self.proj_out(x, normalize=True)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_from_patches(self.patch_embed(x), mask)
