"""SatVision-TOA: a checkpoint as pytorch-caney's DeepSpeed training writes it, and its YAML config.

The checkpoint is ``{"module": {...}}`` (a plain ``{"model": ...}`` or bare state dict reads too):
``encoder.*`` holds Microsoft's Swin V2 (patch merging at the *end* of each stage, the mask
token), ``decoder.0.*`` SimMIM's 1×1 convolution. timm's own checkpoint filter moves the patch
merging to the start of the next stage (timm's layout, our encoder's); the decoder's keys are
already ours. The config gives the sizes (``MODEL.SWINV2.*``, ``DATA.IMG_SIZE``, the mask unit
``DATA.MASK_PATCH_SIZE``); the bands are the ``modis_toa14`` profile's, SatVision-TOA's order.

The giant's extra norms (``NORM_PERIOD``: pytorch-caney's ``norm3`` at the end of every N-th
block of a stage) become our encoder's ``extra_norms``; such an export loads into
:class:`~geomed_mim.models.swin.SwinV2Encoder` (``extra_norm_period``), not into timm's model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.models.swin_transformer_v2 import checkpoint_filter_fn

from geomed_mim.convert.common import Converted, load_state
from geomed_mim.models.swin import SwinV2Encoder
from geomed_mim.usage import UsageError

PROFILE = "modis_toa14"
# pytorch-caney's defaults for the keys a config may leave out
SWINV2_DEFAULTS: dict[str, Any] = {
    "PATCH_SIZE": 4,
    "IN_CHANS": 14,
    "EMBED_DIM": 96,
    "DEPTHS": [2, 2, 6, 2],
    "NUM_HEADS": [3, 6, 12, 24],
    "WINDOW_SIZE": 7,
    "MLP_RATIO": 4.0,
    "NORM_PERIOD": 0,
    "NORM_STAGE": False,
    "APE": False,
}


def read_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(MODEL.SWINV2 with defaults, DATA) of a pytorch-caney YAML config."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or "MODEL" not in raw:
        raise UsageError(f"--config {path}: no MODEL section; give SatVision-TOA's YAML config")
    swin = {**SWINV2_DEFAULTS, **((raw.get("MODEL") or {}).get("SWINV2") or {})}
    return swin, raw.get("DATA") or {}


def encoder_kwargs(swin: dict[str, Any], img_size: int) -> dict[str, Any]:
    """Our :class:`SwinV2Encoder`'s arguments for the config's sizes."""
    return {
        "img_size": img_size,
        "patch_size": int(swin["PATCH_SIZE"]),
        "in_chans": int(swin["IN_CHANS"]),
        "embed_dim": int(swin["EMBED_DIM"]),
        "depths": [int(d) for d in swin["DEPTHS"]],
        "num_heads": [int(h) for h in swin["NUM_HEADS"]],
        "window_size": int(swin["WINDOW_SIZE"]),
        "mlp_ratio": float(swin["MLP_RATIO"]),
    }


def read_satvision(checkpoint: Path, config: Path) -> Converted:
    """A SatVision-TOA checkpoint + config → encoder (timm's Swin V2 keys) and SimMIM decoder."""
    swin, data = read_config(config)
    if swin["APE"]:
        raise UsageError(
            f"--config {config}: APE (absolute positions) has no place in timm's Swin V2"
        )
    if swin["NORM_STAGE"]:  # pytorch-caney's also normalizes the last stage's end; ours not
        raise UsageError(
            f"--config {config}: NORM_STAGE norms have no twin here; convert a model without "
            "them (NORM_PERIOD, the giant's, is supported)"
        )
    img_size = int(data.get("IMG_SIZE", 192))
    kwargs = encoder_kwargs(swin, img_size)
    period = int(swin["NORM_PERIOD"])
    state = load_state(checkpoint)
    encoder = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    # the MIM parts: SimMIM's decoder and the encoder's mask token, keyed as in our SimMIM
    decoder = {f"decoder.{k}": v for k, v in state.items() if k.startswith("decoder.")}
    if decoder and "mask_token" in encoder:
        decoder["encoder.mask_token"] = encoder["mask_token"]
    if not encoder:
        raise UsageError(
            f"--checkpoint {checkpoint}: no encoder.* weights; give the file pytorch-caney wrote "
            "(mp_rank_00_model_states.pt) for --from satvision"
        )
    with torch.device("meta"):  # the filter reads the patch embedding's shape only
        shell = SwinV2Encoder(**kwargs)
    mapped = checkpoint_filter_fn(encoder, shell)
    mapped = {
        extra_norm_key(k): v
        for k, v in mapped.items()
        if k != "mask_token" and not k.startswith("head")
    }
    return Converted(
        family="swinv2",
        encoder=mapped,
        arch={k: v for k, v in kwargs.items() if k != "in_chans"},
        patch_size=kwargs["patch_size"],
        img_size=img_size,
        bands=[],  # the caller puts the profile's
        source_format="satvision (pytorch-caney SimMIM, Swin V2)",
        checkpoint=str(checkpoint),
        decoder=decoder or None,
        pretraining=simmim_kwargs(kwargs, data, period) if decoder else None,
        profile=PROFILE,
        extra_norm_period=period,
        notes=[f"extra norms after every {period}th block: load with extra_norm_period"]
        if period
        else [],
    )


def extra_norm_key(key: str) -> str:
    """pytorch-caney's extra norm inside a block (``layers.S.blocks.B.norm3``, the giant's) →
    our encoder's ``extra_norms.S_B`` (a LayerNorm after that block: the same computation)."""
    m = re.match(r"^layers\.(\d+)\.blocks\.(\d+)\.norm3\.(weight|bias)$", key)
    return f"extra_norms.{m.group(1)}_{m.group(2)}.{m.group(3)}" if m else key


def simmim_kwargs(kwargs: dict[str, Any], data: dict[str, Any], period: int) -> dict[str, Any]:
    """The registry model and ``model_kwargs`` that continue SatVision-TOA's SimMIM."""
    sizes = {k: v for k, v in kwargs.items() if k not in ("img_size", "in_chans")}
    if period:
        sizes["extra_norm_period"] = period
    return {
        "model": "simmim_swinv2_tiny_window8",  # every size argument is given below
        "model_kwargs": {
            **sizes,
            "mask_patch_size": int(data.get("MASK_PATCH_SIZE", 32)),
            "mask_ratio": float(data.get("MASK_RATIO", 0.6)),
            "img_size": kwargs["img_size"],
            "in_chans": kwargs["in_chans"],
        },
    }
