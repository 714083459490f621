"""ViT encoder built from timm ``Block``s, 2-D or 3-D, any channel count, fixed sin-cos positions.

The parameter names are timm's ``VisionTransformer`` names (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N``, ``norm``), so a 2-D encoder's ``state_dict`` loads with strict
keys into ``timm.create_model("vit_*_patch16_224", num_classes=0, ...)``.

Two things the MIM methods need beyond a plain ViT:

* ``keep_idx`` [B, K]: encode only these patches (MAE's visible set, SelectiveMAE's selection);
* intermediate block outputs by 1-indexed block number, taken *before* the final norm
  (Hi-End-MAE's decoder and the UNETR-style segmentation decoder read them).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from geomed_mim.models.patch_embed import PatchEmbed
from geomed_mim.models.pos_embed import get_sincos_pos_embed


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-sample token gather: x [B, L, D], idx [B, K] → [B, K, D]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class VisionTransformerEncoder(nn.Module):
    """MAE-style ViT encoder: patch embed + fixed sin-cos pos + class token + blocks + norm."""

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        spatial_dims: int = 2,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, spatial_dims)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # fixed (not learned) but a parameter, so the key is in the state dict as timm expects
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches + 1, embed_dim), requires_grad=False
        )
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=dpr[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.initialize_weights()

    # -- properties used by decoders, maskers and export ------------------------------------
    @property
    def grid_size(self) -> tuple[int, ...]:
        return self.patch_embed.grid_size

    @property
    def patch_size(self) -> tuple[int, ...]:
        return self.patch_embed.patch_size

    @property
    def img_size(self) -> tuple[int, ...]:
        return self.patch_embed.img_size

    @property
    def in_chans(self) -> int:
        return self.patch_embed.in_chans

    def initialize_weights(self) -> None:
        """The MAE reference initialization (sin-cos pos, xavier on patch proj and linears)."""
        pos = get_sincos_pos_embed(self.embed_dim, self.grid_size, cls_token=True)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # like nn.Linear, not like a conv
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_norm)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (tokens and position embedding)."""
        return {"cls_token", "pos_embed"}

    # -- forward ------------------------------------------------------------------------------
    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with their position embedding, no class token: [B, L, D]."""
        return self.patch_embed(x) + self.pos_embed[:, 1:, :]  # [B, L, D]

    def prepend_cls(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token + self.pos_embed[:, :1, :]  # [1, 1, D]
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1+K, D]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        block_numbers: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normed output [B, 1+K, D] and the outputs of ``block_numbers`` (1-indexed, pre-norm).

        ``keep_idx`` [B, K] selects the patches to encode (all L when None). Intermediates are
        returned in the order of ``block_numbers``, each [B, 1+K, D].
        """
        for n in block_numbers:
            if not 1 <= n <= self.depth:
                raise ValueError(f"block number {n} outside 1..{self.depth} (1-indexed)")
        tokens = self.embed_patches(x)  # [B, L, D]
        if keep_idx is not None:
            tokens = gather_tokens(tokens, keep_idx)  # [B, K, D]
        tokens = self.prepend_cls(tokens)  # [B, 1+K, D]
        wanted = set(block_numbers)
        captured: dict[int, torch.Tensor] = {}
        for number, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if number in wanted:
                captured[number] = tokens
        return self.norm(tokens), [captured[n] for n in block_numbers]

    def forward_features(
        self, x: torch.Tensor, keep_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normed tokens [B, 1+K, D] (class token first), as timm's ``forward_features``."""
        return self.forward_intermediates(x, keep_idx)[0]

    def forward(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_features(x, keep_idx)


def init_linear_and_norm(m: nn.Module) -> None:
    """MAE reference ``_init_weights``: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)
