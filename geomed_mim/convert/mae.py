"""MAE-format checkpoints: facebookresearch/mae's ``MaskedAutoencoderViT`` and its remote-sensing
descendants (SatMAE, Prithvi).

The file is ``{"model": state_dict}`` (or the bare state dict). The encoder's keys are timm's ViT
keys, which are ours (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.*``,
``norm``); the decoder's are ours without the ``decoder.`` module prefix (``decoder_embed``,
``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.N.*``, ``decoder_norm``,
``decoder_pred``), so pretraining continues with the published decoder. Sizes are read from the
shapes; the head counts are not in the weights: ``--num-heads`` / ``--decoder-num-heads``, by
default the reference's (64-wide encoder heads, 1280-wide: 16; 16 decoder heads).

Prithvi's temporal patch embedding (Conv3d, weight [D, C, T, p, p], positions over frames × grid)
becomes a 2-D one with ``--frames-to-2d``: ``sum`` adds the T kernel slices (one image stands for
T identical frames: the features of a still scene), ``mean`` averages them (that kernel over T:
smaller patch embeddings, not the same features), ``first`` keeps slice 0. Position embeddings
keep the first frame's positions; the decoder is kept only for a 1-frame tubelet (its head
predicts one frame then). Models that wrap MAE's halves as ``encoder``/``decoder`` modules
(Prithvi 2.0) read too; weights a plain MAE has no place for are left out and listed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from geomed_mim.convert.common import PATCH_KEY, Converted, load_state
from geomed_mim.usage import UsageError

ENCODER_PREFIXES = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
DECODER_PREFIXES = ("decoder_", "mask_token")
FRAMES_TO_2D = ("sum", "first", "mean")


def model_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict in MAE's keys: a ``module.`` prefix (DDP) dropped, and the
    ``encoder.``/``decoder.`` module prefixes of models that wrap MAE's two halves (Prithvi
    2.0's layout)."""
    state = {re.sub(r"^module\.", "", k): v for k, v in load_state(checkpoint).items()}
    if "cls_token" not in state and "encoder.cls_token" in state:
        state = {re.sub(r"^(encoder|decoder)\.", "", k): v for k, v in state.items()}
    return state


def default_heads(dim: int) -> int:
    """The reference ViTs' head count: 64 wide, except ViT-H (1280 wide, 16 heads)."""
    return 16 if dim == 1280 else max(dim // 64, 1)


def vit_arch(state: dict[str, torch.Tensor], prefix: str, num_heads: int | None) -> dict:
    """embed_dim, depth, num_heads, mlp_ratio of the blocks under ``prefix``."""
    depth = len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})
    dim = state[f"{prefix}0.norm1.weight"].shape[0]
    hidden = state[f"{prefix}0.mlp.fc1.weight"].shape[0]
    return {
        "embed_dim": int(dim),
        "depth": depth,
        "num_heads": int(num_heads or default_heads(dim)),
        "mlp_ratio": hidden / dim,
    }


def collapse_frames(state: dict[str, torch.Tensor], how: str | None, frames: int) -> list[str]:
    """A Conv3d patch embedding [D, C, T, p, p] to 2-D in place; returns notes."""
    weight = state[PATCH_KEY]
    if weight.dim() != 5:
        return []
    if how not in FRAMES_TO_2D:
        raise UsageError(
            "--frames-to-2d: the patch embedding is temporal (Conv3d, "
            f"{list(weight.shape)}); give --frames-to-2d sum|first|mean to make it 2-D"
        )
    reduce = {"sum": lambda w: w.sum(2), "mean": lambda w: w.mean(2), "first": lambda w: w[:, :, 0]}
    state[PATCH_KEY] = reduce[how](weight).contiguous()
    for key in ("pos_embed", "decoder_pos_embed"):  # still the source's keys here
        if key in state and frames > 1:  # [1, 1 + T*h*w, D]: the first frame's positions
            per_frame = (state[key].shape[1] - 1) // frames
            state[key] = state[key][:, : 1 + per_frame].contiguous()
    return [f"temporal patch embedding (tubelet {weight.shape[2]}) collapsed by {how}"]


def grid_side(state: dict[str, torch.Tensor]) -> int:
    """Patches per side from the square position embedding (class slot first)."""
    n = state["pos_embed"].shape[1] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise UsageError(
            f"--num-frames: {n} positions are not a square grid; give the model's frame count"
        )
    return side


def read_mae(checkpoint: Path, options: dict[str, Any]) -> Converted:
    """An MAE-format checkpoint → encoder and (when present) decoder in our layout."""
    state = model_state(checkpoint)
    if PATCH_KEY not in state or "cls_token" not in state:
        raise UsageError(
            f"--checkpoint {checkpoint}: no patch_embed.proj.weight/cls_token; not an MAE-format "
            "ViT (for a plain timm ViT use --from timm)"
        )
    tubelet = state[PATCH_KEY].shape[2] if state[PATCH_KEY].dim() == 5 else 1
    notes = collapse_frames(state, options.get("frames_to_2d"), int(options.get("num_frames", 1)))
    encoder = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    decoder = {f"decoder.{k}": v for k, v in state.items() if k.startswith(DECODER_PREFIXES)}
    left = sorted(k for k in state if not k.startswith(ENCODER_PREFIXES + DECODER_PREFIXES))
    if left:  # e.g. Prithvi 2.0's temporal and location encodings: no place in a plain ViT
        notes.append(f"left out (no place in a plain MAE): {', '.join(left[:6])}")
    if tubelet > 1 and decoder:
        notes.append(f"decoder dropped: it predicts {tubelet}-frame tubelets")
        decoder = {}
    patch = int(state[PATCH_KEY].shape[-1])
    arch = vit_arch(state, "blocks.", options.get("num_heads"))
    model = Converted(
        family="vit",
        encoder=encoder,
        arch=arch,
        patch_size=patch,
        img_size=grid_side(state) * patch,
        bands=[],
        source_format="mae (facebookresearch/mae MaskedAutoencoderViT keys)",
        checkpoint=str(checkpoint),
        notes=notes,
    )
    if decoder:
        model.decoder = decoder
        model.pretraining = mae_kwargs(model, decoder, options)
    return model


def mae_kwargs(model: Converted, decoder: dict, options: dict[str, Any]) -> dict[str, Any]:
    """The registry model and ``model_kwargs`` that continue MAE with the published decoder."""
    dec = vit_arch(decoder, "decoder.decoder_blocks.", options.get("decoder_num_heads") or 16)
    return {
        "model": "mae_vit_base_patch16",  # every size argument is given below
        "model_kwargs": {
            **model.arch,
            "patch_size": model.patch_size,
            "decoder_embed_dim": dec["embed_dim"],
            "decoder_depth": dec["depth"],
            "decoder_num_heads": dec["num_heads"],
            "norm_pix_loss": bool(options.get("norm_pix_loss")),
            "img_size": model.img_size,
            "in_chans": model.in_chans,
        },
    }
