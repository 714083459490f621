"""Segmentation networks on the MIM encoder: a UNETR-style decoder for 2-D and 3-D.

The encoder's token outputs of a few blocks (1-indexed, the ones recorded in the pretraining
checkpoint/export) are reshaped to feature maps at the patch grid (stride ``p``) and turned into a
pyramid by MONAI's ``UnetrPrUpBlock`` (transposed convolutions: the shallowest block goes to the
finest stride). A UNet-style path of ``UnetrUpBlock``s then climbs from the final (normed) encoder
output back to full resolution, fusing one pyramid level per step, plus a full-resolution
convolutional stem on the input image (UNETR's ``encoder1``). With patch 16 and blocks (4, 7, 10)
this is MONAI's ``UNETR`` layout; other power-of-two patch sizes use ``log2(p) - 1`` skips.

:class:`LinearPatchHead` is the probing head: one linear layer on the final patch tokens,
upsampled to full resolution — what a frozen encoder's features alone can separate.
The same module serves RS tiles (``spatial_dims=2``) and CT crops (``spatial_dims=3``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import UnetOutBlock
from timm.models.vision_transformer import Block
from torch import nn

from geomed_mim.models.vit import VisionTransformerEncoder, tokens_to_map


def skip_blocks_for(depth: int, patch_size: int, recorded: Sequence[int] | None) -> list[int]:
    """The ``log2(p) - 1`` encoder blocks (ascending, 1-indexed) feeding the pyramid.

    Recorded blocks (from the checkpoint/export) that exist in this encoder are used, deepest
    last; when too few are recorded, evenly spaced blocks are chosen instead.
    """
    n = int(math.log2(patch_size)) - 1
    if 2 ** (n + 1) != patch_size:
        raise ValueError(f"patch size {patch_size} must be a power of two for the UNETR decoder")
    usable = sorted({b for b in (recorded or []) if 1 <= b < depth})
    if len(usable) >= n:
        return usable[len(usable) - n :]
    step = depth / (n + 1)
    return [max(1, min(depth - 1, round(step * (k + 1)))) for k in range(n)]


class ViTUNETR(nn.Module):
    """UNETR-style segmenter: our ViT encoder + MONAI UNETR blocks, 2-D or 3-D.

    Args:
        encoder: a :class:`VisionTransformerEncoder` (pretrained or fresh).
        num_classes: output channels (class ids are the channel indices).
        skip_blocks: 1-indexed encoder blocks for the pyramid, ascending (see
            :func:`skip_blocks_for`); ``len == log2(patch) - 1``.
        feature_size: channels at full resolution (doubles per level, as in MONAI's UNETR).
    """

    def __init__(
        self,
        encoder: VisionTransformerEncoder,
        num_classes: int,
        skip_blocks: Sequence[int],
        feature_size: int = 16,
        norm_name: str = "instance",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.skip_blocks = list(skip_blocks)
        dims = encoder.spatial_dims
        patch = encoder.patch_size[0]
        if any(p != patch for p in encoder.patch_size):
            raise ValueError(f"UNETR decoder needs an isotropic patch, got {encoder.patch_size}")
        levels = int(math.log2(patch))  # x2 upsamplings from the patch grid to full resolution
        if len(self.skip_blocks) != levels - 1:
            raise ValueError(
                f"patch {patch} needs {levels - 1} skip blocks, got {self.skip_blocks}"
            )
        hidden = encoder.embed_dim
        f = feature_size
        self.stem = UnetrBasicBlock(dims, encoder.in_chans, f, 3, 1, norm_name, res_block=True)
        # pyramid: skip i (shallowest first) lands at stride 2^(i+1) → i-th finest level
        self.pyramid = nn.ModuleList(
            UnetrPrUpBlock(
                dims,
                hidden,
                f * 2 ** (i + 1),
                num_layer=levels - 2 - i,  # transposed convs after the first: stride p → 2^(i+1)
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm_name,
                conv_block=True,
                res_block=True,
            )
            for i in range(levels - 1)
        )
        # decoder: deepest (stride p, `hidden` channels) → ... → full resolution (f channels)
        self.up = nn.ModuleList()
        in_ch = hidden
        for level in reversed(range(levels)):  # target stride 2^level, channels f * 2^level
            out_ch = f * 2**level
            self.up.append(UnetrUpBlock(dims, in_ch, out_ch, 3, 2, norm_name, res_block=True))
            in_ch = out_ch
        self.head = UnetOutBlock(dims, f, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, *S] → logits [B, num_classes, *S] (S = the encoder's image size)."""
        grid = self.encoder.grid_size
        last, skips = self.encoder.forward_with_block_outputs(x, block_numbers=self.skip_blocks)
        maps = [tokens_to_map(t[:, 1:], grid) for t in skips]  # each [B, D, *grid]
        levels = [self.stem(x)] + [blk(m) for blk, m in zip(self.pyramid, maps, strict=True)]
        out = tokens_to_map(last[:, 1:], grid)  # [B, D, *grid], stride p
        for up, skip in zip(self.up, reversed(levels), strict=True):
            out = up(out, skip)  # stride halves, fused with the matching pyramid level
        return self.head(out)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter grouping for layer-wise lr decay (``param_groups_layer_decay``):
        the encoder's embeddings, then one layer per block; its final norm and the whole
        decoder form the last layer (full lr)."""
        return {
            "stem": r"^encoder\.(?:cls_token|pos_embed|patch_embed)",
            "blocks": [(r"^encoder\.blocks\.(\d+)", None)],
        }


class LinearPatchHead(nn.Module):
    """Linear probe: a 1×1 projection of the final (normed) patch tokens to class logits at the
    patch grid, upsampled (bi/trilinear) to the image size. Same interface as :class:`ViTUNETR`
    (``encoder``, ``skip_blocks`` — empty here — and ``forward``)."""

    def __init__(self, encoder: VisionTransformerEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.skip_blocks: list[int] = []
        self.head = nn.Linear(encoder.embed_dim, num_classes)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, L, D] → patch logits [B, L, K]."""
        return self.head(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, *S] → logits [B, num_classes, *S]."""
        tokens = self.encoder.forward_features(x)[:, 1:]  # [B, L, D]
        logits = tokens_to_map(self.decode(tokens), self.encoder.grid_size)  # [B, K, *grid]
        mode = "bilinear" if self.encoder.spatial_dims == 2 else "trilinear"
        return nn.functional.interpolate(
            logits, size=tuple(x.shape[2:]), mode=mode, align_corners=False
        )  # [B, K, *S]

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """As :meth:`ViTUNETR.group_matcher`: embeddings, blocks, then norm + head at full lr."""
        return {
            "stem": r"^encoder\.(?:cls_token|pos_embed|patch_embed)",
            "blocks": [(r"^encoder\.blocks\.(\d+)", None)],
        }


class AttentivePatchHead(LinearPatchHead):
    """The attentive variant of the linear probe: one light transformer block (self-attention
    across the patch tokens, MLP ratio 2, at most 8 heads) before the linear layer, so a patch's
    logits can read the rest of the image, as attentive probing does for classification. Same
    interface and upsampling as :class:`LinearPatchHead`."""

    def __init__(self, encoder: VisionTransformerEncoder, num_classes: int) -> None:
        super().__init__(encoder, num_classes)
        dim = encoder.embed_dim
        heads = next(h for h in (8, 6, 4, 3, 2, 1) if dim % h == 0)
        self.block = Block(dim, heads, mlp_ratio=2.0, qkv_bias=True)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(tokens))  # [B, L, D] → [B, L, K]
