"""ViT encoder built from timm ``Block``s, 2-D or 3-D, any channel count, fixed sin-cos positions.

The parameter names are timm's ``VisionTransformer`` names (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N``, ``norm``), so a 2-D encoder's ``state_dict`` loads with strict
keys into ``timm.create_model("vit_*_patch16_224", num_classes=0, ...)``; :data:`ENCODER_ARCHS`
names the timm architecture of each size.

Two ways to run it:

* timm's interface: ``forward_features(x)``, and ``forward_intermediates(x, indices)`` with timm's
  contract (0-indexed block indices, feature maps ``[B, C, *grid]`` without the class token, the
  final normed tokens), so code written for timm's ViT works on ours in 2-D and 3-D;
* the MIM interface: ``forward_with_block_outputs(x, keep_idx, block_numbers)`` encodes only the
  patches ``keep_idx`` [B, K] (MAE's visible set, SelectiveMAE's selection) and returns the normed
  tokens ``[B, 1+K, D]`` with the outputs of chosen blocks — numbered from 1 (block 1 is
  ``blocks[0]``), taken *before* the final norm, class token included — which Hi-End-MAE's
  decoder and the UNETR-style segmentation decoder read.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from geomed_mim.models.patch_embed import PatchEmbed
from geomed_mim.models.patches import gather_tokens
from geomed_mim.models.pos_embed import get_sincos_pos_embed

# size → encoder hyperparameters, as timm's vit_<size>_patch16_224 (and MAE's reference sizes)
ENCODER_ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "mlp_ratio": 4.0},
}


def timm_encoder_name(size: str, patch_size: int) -> str:
    """The timm architecture whose ``state_dict`` keys and shapes match our 2-D encoder."""
    return f"vit_{size}_patch{patch_size}_224"


def take_indices(depth: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's block selection: None → all, int n → the last n, a sequence → those (0-indexed,
    negative from the end). Sorted and distinct: blocks are returned in the order they run."""
    if indices is None:
        indices = depth
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"last-n indices={indices} out of range 1..{depth}")
        return list(range(depth - indices, depth))
    taken = set()
    for i in indices:
        idx = depth + i if i < 0 else i
        if not 0 <= idx < depth:
            raise ValueError(f"block index {i} out of range 0..{depth - 1} (0-indexed)")
        taken.add(idx)
    return sorted(taken)


def tokens_to_map(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Patch tokens [B, L, D] (no class token) → feature map [B, D, *grid]."""
    b, _, d = tokens.shape
    return tokens.transpose(1, 2).reshape(b, d, *grid)


class VisionTransformerEncoder(nn.Module):
    """MAE-style ViT encoder: patch embed + fixed sin-cos pos + class token + blocks + norm."""

    num_prefix_tokens = 1  # the class token, as timm counts it

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
        pos_embed_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.pos_embed_scale = float(pos_embed_scale)  # 1: MAE's positions; decoders read it
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
        pos = get_sincos_pos_embed(
            self.embed_dim, self.grid_size, cls_token=True, scale=self.pos_embed_scale
        )
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # like nn.Linear, not like a conv
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_norm)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (tokens and position embedding)."""
        return {"cls_token", "pos_embed"}

    # -- the MIM interface ----------------------------------------------------------------------
    def prepend_cls(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.cls_token + self.pos_embed[:, :1, :]  # [1, 1, D]
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1+K, D]

    def forward_from_patches(
        self,
        patches: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        block_numbers: Sequence[int] = (),
        num_blocks: int | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder after its patch embedding (which token choice may have read already).

        patches [B, L, D] (``patch_embed``'s output, positions not added yet); ``keep_idx``
        [B, K] the patches to encode (all L when None); ``block_numbers``: blocks whose outputs
        to return, numbered from 1, in that order; ``num_blocks``: run only the first blocks.
        Returns the normed output [B, 1+K, D] and one [B, 1+K, D] (pre-norm) per block number.
        """
        num_blocks = self.depth if num_blocks is None else num_blocks
        for n in block_numbers:
            if not 1 <= n <= num_blocks:
                raise ValueError(f"block number {n} outside 1..{num_blocks} (1-indexed)")
        tokens = patches + self.pos_embed[:, 1:, :]  # [B, L, D]
        if keep_idx is not None:
            tokens = gather_tokens(tokens, keep_idx)  # [B, K, D]
        tokens = self.prepend_cls(tokens)  # [B, 1+K, D]
        wanted = set(block_numbers)
        captured: dict[int, torch.Tensor] = {}
        for number, block in enumerate(self.blocks[:num_blocks], start=1):
            tokens = block(tokens)
            if number in wanted:
                captured[number] = tokens
        return self.norm(tokens), [captured[n] for n in block_numbers]

    def forward_with_block_outputs(
        self,
        x: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        block_numbers: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, C, *spatial] → normed [B, 1+K, D] and the pre-norm outputs [B, 1+K, D] of
        ``block_numbers`` (numbered from 1), see :meth:`forward_from_patches`."""
        return self.forward_from_patches(self.patch_embed(x), keep_idx, block_numbers)

    # -- timm's interface -----------------------------------------------------------------------
    def forward_features(
        self, x: torch.Tensor, keep_idx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normed tokens [B, 1+K, D] (class token first), as timm's ``forward_features``."""
        return self.forward_with_block_outputs(x, keep_idx)[0]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """timm's ``VisionTransformer.forward_intermediates``, in 2-D and 3-D.

        ``indices``: 0-indexed blocks (negative from the end), an int n for the last n, None for
        all; outputs come in block order. ``output_fmt`` "NCHW" gives [B, D, *grid] maps
        ([B, D, d, h, w] in 3-D), "NLC" [B, L, D] tokens; the class token is dropped (returned
        alongside with ``return_prefix_tokens``). ``norm`` applies the final norm to each.
        Returns ``(normed final tokens [B, 1+L, D], intermediates)`` or, with
        ``intermediates_only``, the intermediates alone. ``stop_early`` runs only the blocks up to
        the deepest index (the "final" tokens are then that block's, normed).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        taken = take_indices(self.depth, indices)
        last, outputs = self.forward_from_patches(
            self.patch_embed(x),
            block_numbers=[i + 1 for i in taken],
            num_blocks=taken[-1] + 1 if stop_early else None,
        )
        intermediates = []
        for y in outputs:
            y = self.norm(y) if norm else y
            spatial = y[:, self.num_prefix_tokens :]  # [B, L, D]
            if output_fmt == "NCHW":
                spatial = tokens_to_map(spatial, self.grid_size).contiguous()  # [B, D, *grid]
            prefix = y[:, : self.num_prefix_tokens]  # [B, 1, D]
            intermediates.append((spatial, prefix) if return_prefix_tokens else spatial)
        if intermediates_only:
            return intermediates
        return last, intermediates

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
