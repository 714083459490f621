"""MONAI SwinUNETR's self-supervised Swin ViT (``model_swinvit.pt``, pretrained on CT volumes).

The file is ``{"state_dict": {...}}`` with ``module.`` keys: the 3-D Swin Transformer
(``patch_embed``, ``layers{1..4}.0.blocks.N``, ``layers{n}.0.downsample``), its MLPs named
``fc1``/``fc2``, as MONAI's ``SwinUNETR.load_from`` reads it, beside the pretraining heads
(rotation, contrastive, reconstruction), which are left out. The weights become MONAI's
``SwinTransformer`` keys (the MLPs' ``linear1``/``linear2``): this project's 3-D Swin encoder
(:class:`~geomed_mim.models.swin3d.SwinViT3DEncoder`, SimMIM 3-D) and SwinUNETR's ``swinViT``.
Sizes come from the shapes: the width from the patch embedding, the heads and the window from
each stage's relative-position table ((2w - 1)³ rows, one column per head).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from geomed_mim.convert.common import PATCH_KEY, Converted, load_state
from geomed_mim.usage import UsageError

_BLOCK_TABLE = re.compile(r"^layers(\d)\.0\.blocks\.(\d+)\.attn\.relative_position_bias_table$")


def monai_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Swin ViT's weights under MONAI ``SwinTransformer``'s names."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^module\.", "", key)
        if not key.startswith(("patch_embed.", "layers")):
            continue  # the self-supervised heads
        out[key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")] = value
    return out


def swin3d_sizes(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """embed_dim, depths, num_heads, window_size, patch_size read from the shapes."""
    depths, heads, windows = [0] * 4, [0] * 4, set()
    for key, value in state.items():
        m = _BLOCK_TABLE.match(key)
        if m:
            stage = int(m.group(1)) - 1
            depths[stage] = max(depths[stage], int(m.group(2)) + 1)
            heads[stage] = int(value.shape[1])
            windows.add(round(value.shape[0] ** (1 / 3) + 1) // 2)
    if 0 in depths or len(windows) != 1:
        raise UsageError("--checkpoint: not a 4-stage MONAI Swin ViT (model_swinvit.pt layout)")
    return {
        "embed_dim": int(state[PATCH_KEY].shape[0]),
        "depths": depths,
        "num_heads": heads,
        "window_size": windows.pop(),
        "patch_size": int(state[PATCH_KEY].shape[-1]),
    }


def read_swinunetr(checkpoint: Path, img_size: int | None) -> Converted:
    """``model_swinvit.pt`` → MONAI ``SwinTransformer`` weights (SimMIM 3-D's encoder)."""
    state = monai_keys(load_state(checkpoint))
    if PATCH_KEY not in state or state[PATCH_KEY].dim() != 5:
        raise UsageError(
            f"--checkpoint {checkpoint}: no 3-D patch embedding; give SwinUNETR's "
            "self-supervised model_swinvit.pt for --from swinunetr"
        )
    sizes = swin3d_sizes(state)
    size = img_size or 96  # SwinUNETR's pretraining crops; any multiple of patch × 2^4 works
    return Converted(
        family="swin3d",
        encoder=state,
        arch=sizes,
        patch_size=sizes["patch_size"],
        img_size=size,
        bands=["CT"] if state[PATCH_KEY].shape[1] == 1 else [],
        source_format="swinunetr (MONAI SwinUNETR self-supervised Swin ViT)",
        checkpoint=str(checkpoint),
        pretraining={
            "model": "simmim_swinvit3d_feat48",  # every size argument is given below
            "model_kwargs": {**sizes, "img_size": size, "in_chans": int(state[PATCH_KEY].shape[1])},
        },
        notes=["encoder only: the self-supervised heads are not SimMIM's decoder"],
    )
