"""Patch embedding for 2-D images and 3-D volumes with any number of channels.

A strided convolution, as in timm's ``PatchEmbed``: the attribute is called ``proj`` so a 2-D
encoder's keys (``patch_embed.proj.weight``) are exactly timm's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def to_tuple(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    """``16`` → ``(16, 16)`` (or ``(16, 16, 16)``); a sequence must have ``spatial_dims`` items."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    out = tuple(int(v) for v in value)
    if len(out) != spatial_dims:
        raise ValueError(f"{name}={value!r} must have {spatial_dims} values for {spatial_dims}-D")
    return out


class PatchEmbed(nn.Module):
    """[B, C, *spatial] → [B, L, D], patches in row-major (d,) h, w order."""

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.img_size = to_tuple(img_size, spatial_dims, "img_size")
        self.patch_size = to_tuple(patch_size, spatial_dims, "patch_size")
        for s, p in zip(self.img_size, self.patch_size, strict=True):
            if s % p:
                raise ValueError(f"img_size {self.img_size} is not a multiple of {self.patch_size}")
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size, strict=True))
        self.num_patches = int(torch.tensor(self.grid_size).prod())
        self.in_chans = in_chans
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.proj = conv(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.img_size or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected input [B, {self.in_chans}, {', '.join(map(str, self.img_size))}], "
                f"got {list(x.shape)}"
            )
        x = self.proj(x)  # [B, D, *grid]
        return x.flatten(2).transpose(1, 2)  # [B, L, D]
