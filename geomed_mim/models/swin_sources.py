"""Swin encoders for segmentation: which family a starting point is, its weights, and the network.

A fine-tuning starts from one of three encoder families: ``vit`` (this project's ViT, handled by
:mod:`geomed_mim.models.weights`), ``swinv2`` (timm's Swin V2: SimMIM 2-D checkpoints, their
exports, ``--from satvision`` folders) and ``swin3d`` (MONAI's ``SwinTransformer``: SimMIM 3-D
checkpoints, ``--from swinunetr`` folders). :func:`source_family` tells them apart from an
export's ``architecture`` or a checkpoint's metadata; :func:`build_swin_network` builds the
segmentation network (:mod:`geomed_mim.models.swin_segmentation`) and loads the encoder with
strict keys, input bands matched by name as for the ViT
(:func:`~geomed_mim.models.weights.match_band_channels`). SimMIM's mask token is the one weight
an export lacks; it is never used by a segmentation.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from geomed_mim.models.swin import SwinV2Encoder
from geomed_mim.models.swin_segmentation import SwinUNETRSegmenter, SwinV2FPN, SwinV2LinearHead
from geomed_mim.models.weights import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    BandMatchReport,
    is_finetuning_metadata,
    load_checkpoint_encoder,
    match_band_channels,
    read_checkpoint_entries,
)
from geomed_mim.usage import UsageError

log = logging.getLogger(__name__)

SWIN_FAMILIES = ("swinv2", "swin3d")
HEADS = {"vit": ("unetr", "linear", "attentive"), "swinv2": ("fpn", "linear"), "swin3d": ("unetr",)}
PATCH_KEY = "patch_embed.proj.weight"
INIT_FLAG = "--model.init_args.init_from"
ENCODER_FLAG = "--model.init_args.encoder"


def family_of_architecture(architecture: str) -> str:
    """``vit``, ``swinv2`` or ``swin3d`` from an export's ``architecture`` (a timm name or a
    MONAI class path)."""
    if architecture.startswith("swinv2"):
        return "swinv2"
    if architecture.startswith("monai.networks.nets.swin"):
        return "swin3d"
    return "vit"


def source_family(source: str | Path) -> str:
    """The encoder family of an export folder or a pretraining / fine-tuning checkpoint."""
    path = Path(source)
    if path.is_dir():
        config = json.loads((path / CONFIG_NAME).read_text())
        return family_of_architecture(str(config.get("architecture", "")))
    _, meta = read_checkpoint_entries(path)
    if is_finetuning_metadata(meta):
        return str((meta.get("encoder") or {}).get("family", "vit"))
    name = str(meta.get("model_name") or "")
    if name.startswith("simmim_swinvit3d") or (
        name.startswith("simmim") and int(meta.get("spatial_dims", 2)) == 3
    ):
        return "swin3d"
    return "swinv2" if name.startswith("simmim") else "vit"


@dataclass
class SwinSource:
    """A Swin encoder's weights (timm keys for ``swinv2``, MONAI ``SwinTransformer`` keys for
    ``swin3d``; no mask token) with its size arguments, bands and config."""

    family: str
    sizes: dict[str, Any]
    state: dict[str, torch.Tensor]
    bands: list[str]
    config: dict[str, Any]


def folder_sizes(family: str, config: dict[str, Any]) -> dict[str, Any]:
    """The encoder's size arguments from an export's ``config.json``."""
    if family == "swinv2":
        kw = config["timm_kwargs"]
        sizes = {k: v for k, v in kw.items() if k not in ("img_size", "in_chans", "num_classes")}
        return {**sizes, "extra_norm_period": int(config.get("extra_norm_period") or 0)}
    kw = config["monai_kwargs"]
    return {
        "embed_dim": int(kw["embed_dim"]),
        "depths": [int(d) for d in kw["depths"]],
        "num_heads": [int(h) for h in kw["num_heads"]],
        "window_size": int(next(iter(kw["window_size"]))),
        "patch_size": int(next(iter(kw["patch_size"]))),
        "mlp_ratio": float(kw.get("mlp_ratio", 4.0)),
    }


def read_swin_source(source: str | Path) -> SwinSource:
    """A Swin encoder from an export folder (this project's or a converted one) or a SimMIM /
    fine-tuning checkpoint."""
    path = Path(source)
    if path.is_dir():
        config = json.loads((path / CONFIG_NAME).read_text())
        family = family_of_architecture(str(config.get("architecture", "")))
        state = load_file(str(path / WEIGHTS_NAME))
        sizes = folder_sizes(family, config)
    else:
        encoder, config = load_checkpoint_encoder(path)
        family = "swin3d" if int(encoder.spatial_dims) == 3 else "swinv2"
        state = {k: v for k, v in encoder.state_dict().items() if k != "mask_token"}
        sizes = dict(encoder.size_kwargs)
    in_chans = int(state[PATCH_KEY].shape[1])
    bands = list(config.get("bands") or [f"band{i}" for i in range(in_chans)])
    return SwinSource(family, sizes, state, bands, config)


def check_head(family: str, head: str) -> None:
    """``head`` is one the family's network has: a usage error naming the flag otherwise."""
    if head not in HEADS[family]:
        name = {"vit": "ViT", "swinv2": "Swin V2", "swin3d": "3-D Swin (SwinUNETR)"}[family]
        raise UsageError(
            f"--model.init_args.head {head}: a {name} encoder takes head "
            f"{' or '.join(HEADS[family])}; pass --model.init_args.head {HEADS[family][0]}"
        )


def check_swin_size(family: str, sizes: dict[str, Any], img_size: int, spatial_dims: int) -> None:
    """The image size fits the encoder's patch grid and patch merges (a usage error naming the
    flag that sets it otherwise); the family fits the data's dimensions."""
    if (family == "swin3d") != (spatial_dims == 3):
        dims = 3 if family == "swin3d" else 2
        want = "a --from swinunetr folder" if spatial_dims == 3 else "a Swin V2 export"
        raise UsageError(
            f"{INIT_FLAG} / {ENCODER_FLAG}: a {dims}-D {family} encoder for {spatial_dims}-D "
            f"data; give {want} or a scratch encoder of that dimension"
        )
    patch = int(sizes.get("patch_size", 4 if family == "swinv2" else 2))
    if family == "swinv2":
        stride = patch * 2 ** (len(sizes["depths"]) - 1)  # merges between stages
        flag = "the store's tile size (python -m geomed_mim.build_dataset --tile-size)"
    else:
        stride = patch**5  # SwinUNETR: 4 merges + the decoder's bottleneck
        flag = "--data.init_args.crop_size"
        if int(sizes["embed_dim"]) % 12:
            raise UsageError(
                f"{ENCODER_FLAG}.embed_dim {sizes['embed_dim']}: SwinUNETR needs a multiple of "
                "12 (its feature_size), e.g. 12, 24 or 48"
            )
    # SwinUNETR instance-normalizes its bottleneck (stride p^5): it needs two voxels a side
    least = 2 * stride if family == "swin3d" else stride
    if img_size % stride or img_size < least:
        raise UsageError(
            f"{flag}: {img_size} px does not fit a {family} encoder with patch {patch} and "
            f"{len(sizes['depths'])} stages; give a multiple of {stride} of at least {least}"
        )


def fresh_swin_sizes(family: str, arch: dict[str, Any]) -> dict[str, Any]:
    """A scratch encoder's sizes from the task's ``encoder`` argument (``family`` dropped)."""
    sizes = {k: v for k, v in arch.items() if k != "family"}
    if "depths" not in sizes or "num_heads" not in sizes:
        raise UsageError(
            f"{ENCODER_FLAG}: a {family} encoder needs depths and num_heads, e.g. "
            "{family: swinv2, embed_dim: 96, depths: [2, 2], num_heads: [3, 6], window_size: 8, "
            "patch_size: 4}"
        )
    builder = SwinV2Encoder if family == "swinv2" else SwinUNETRSegmenter
    known = set(inspect.signature(builder).parameters) - {"img_size", "in_chans", "num_classes"}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise UsageError(
            f"{ENCODER_FLAG}: {unknown} are not {family} sizes; use any of {sorted(known)}"
        )
    return sizes


def build_swin_network(
    family: str,
    init_from: str | None,
    arch: dict[str, Any] | None,
    bands: Sequence[str],
    img_size: int,
    spatial_dims: int,
    num_classes: int,
    feature_size: int,
    head: str = "fpn",
) -> tuple[nn.Module, dict[str, Any]]:
    """(segmentation network, the source's config) for a Swin family: fresh from ``arch``, or
    with the encoder of ``init_from`` loaded (strict keys, bands matched by name); Swin V2 under
    ``head`` ``"fpn"`` or ``"linear"`` (the probe)."""
    source = read_swin_source(init_from) if init_from else None
    sizes = source.sizes if source else fresh_swin_sizes(family, arch or {})
    check_swin_size(family, sizes, img_size, spatial_dims)
    if family == "swinv2":
        encoder = SwinV2Encoder(img_size=img_size, in_chans=len(bands), **sizes)
        net: nn.Module = (
            SwinV2LinearHead(encoder, num_classes)
            if head == "linear"
            else SwinV2FPN(encoder, num_classes, channels=feature_size)
        )
    else:
        net = SwinUNETRSegmenter(len(bands), num_classes, **sizes)
    if source is not None:
        report = load_swin_weights(net.encoder, source, bands)
        log.info("encoder initialized from %s; %s", init_from, report)
    return net, dict(source.config) if source else {}


def load_swin_weights(
    encoder: nn.Module, source: SwinSource, bands: Sequence[str]
) -> BandMatchReport:
    """The source's weights into ``encoder`` with strict keys (only SimMIM's mask token may be
    missing), the patch embedding's input channels matched by band name."""
    state = dict(source.state)
    own = encoder.state_dict()
    state[PATCH_KEY], report = match_band_channels(
        own[PATCH_KEY], state[PATCH_KEY], source.bands, list(bands)
    )
    result = encoder.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != "mask_token"]
    if missing or result.unexpected_keys:
        raise UsageError(
            f"{INIT_FLAG}: the source's {source.family} weights do not fit the encoder: missing "
            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    if report.added or report.dropped:
        log.warning("loading pretrained encoder: %s", report)
    return report
