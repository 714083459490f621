"""Export a pretrained encoder for reuse: ``python -m geomed_mim.export CKPT --output DIR``.

Writes ``DIR/model.safetensors`` (encoder weights only) and ``DIR/config.json`` (architecture, band
names, per-band mean/std, patch size, spatial dims, recorded intermediate blocks).

* **2-D** weights use timm's ``VisionTransformer`` keys; they load with strict keys into::

      timm.create_model(cfg["architecture"], in_chans=cfg["in_chans"],
                        img_size=cfg["img_size"][0],
                        num_classes=0, checkpoint_path="DIR/model.safetensors",
                        **cfg["timm_kwargs"])

  (``timm_kwargs`` is empty for the registry's standard sizes, e.g. ``mae_vit_base_patch16``).
* **3-D** weights use MONAI ``ViT`` keys (:data:`MONAI_KEY_MAP`); :func:`build_monai_vit` builds
  and loads one. MONAI's position embedding has no class slot (MAE's class slot is zero, so
  nothing is lost), and MONAI's LayerNorms default to eps 1e-5 where ours use 1e-6.

Loading into a model with another band list (:func:`load_encoder`) matches patch-embedding input
channels by band name: shared bands are copied, new bands keep the fresh initialization, dropped
bands are reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from data_pipelines.store import atomic_write_json
from geomed_mim.models.registry import ENCODER_ARCHS, create_model, timm_encoder_name
from geomed_mim.models.vit import VisionTransformerEncoder
from geomed_mim.tasks.pretrain import CHECKPOINT_METADATA_KEY

log = logging.getLogger(__name__)

EXPORT_FORMAT = "geomed_mim.encoder/1"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"

# our (timm) key → MONAI ViT key; ``N`` is a block number. pos_embed drops its class slot.
MONAI_KEY_MAP: dict[str, str] = {
    "cls_token": "cls_token",
    "pos_embed": "patch_embedding.position_embeddings",
    "patch_embed.proj.weight": "patch_embedding.patch_embeddings.weight",
    "patch_embed.proj.bias": "patch_embedding.patch_embeddings.bias",
    "blocks.N.norm1.{weight,bias}": "blocks.N.norm1.{weight,bias}",
    "blocks.N.attn.qkv.{weight,bias}": "blocks.N.attn.qkv.{weight,bias}",
    "blocks.N.attn.proj.{weight,bias}": "blocks.N.attn.out_proj.{weight,bias}",
    "blocks.N.norm2.{weight,bias}": "blocks.N.norm2.{weight,bias}",
    "blocks.N.mlp.fc1.{weight,bias}": "blocks.N.mlp.linear1.{weight,bias}",
    "blocks.N.mlp.fc2.{weight,bias}": "blocks.N.mlp.linear2.{weight,bias}",
    "norm.{weight,bias}": "norm.{weight,bias}",
}
_TO_MONAI = [
    (r"^patch_embed\.proj\.", "patch_embedding.patch_embeddings."),
    (r"^(blocks\.\d+)\.attn\.proj\.", r"\1.attn.out_proj."),
    (r"^(blocks\.\d+)\.mlp\.fc1\.", r"\1.mlp.linear1."),
    (r"^(blocks\.\d+)\.mlp\.fc2\.", r"\1.mlp.linear2."),
]
_FROM_MONAI = [
    (r"^patch_embedding\.patch_embeddings\.", "patch_embed.proj."),
    (r"^(blocks\.\d+)\.attn\.out_proj\.", r"\1.attn.proj."),
    (r"^(blocks\.\d+)\.mlp\.linear1\.", r"\1.mlp.fc1."),
    (r"^(blocks\.\d+)\.mlp\.linear2\.", r"\1.mlp.fc2."),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


def to_monai_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder's keys → MONAI ``ViT`` keys (see :data:`MONAI_KEY_MAP`)."""
    out = {}
    for key, value in state.items():
        if key == "pos_embed":
            out["patch_embedding.position_embeddings"] = value[:, 1:, :].contiguous()
        else:
            out[_rename(key, _TO_MONAI)] = value
    return out


def from_monai_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MONAI ``ViT`` keys → our encoder's keys (a zero class slot is put back in pos_embed)."""
    out = {}
    for key, value in state.items():
        if key == "patch_embedding.position_embeddings":
            out["pos_embed"] = torch.cat([value.new_zeros(1, 1, value.shape[-1]), value], dim=1)
        elif (
            key.startswith(("classification_head.", "blocks.")) and "norm_cross_attn" in key
        ) or key.startswith("classification_head."):
            continue
        else:
            out[_rename(key, _FROM_MONAI)] = value
    return out


# -- reading a pretraining checkpoint -------------------------------------------------------------
def load_pretrained_model(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The MIM model and its metadata from a Lightning checkpoint (loaded with weights_only)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta = ckpt.get(CHECKPOINT_METADATA_KEY)
    if not meta:
        raise ValueError(f"{checkpoint} has no '{CHECKPOINT_METADATA_KEY}' entry: not ours?")
    model = create_model(meta["model_name"], **meta["model_kwargs"])
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), meta


def timm_spec(encoder: VisionTransformerEncoder, meta: dict[str, Any]) -> tuple[str, dict]:
    """(timm architecture name, extra kwargs) that rebuild ``encoder`` in timm."""
    arch = meta.get("encoder_arch") or {}
    size = arch.get("size") or "base"
    name = timm_encoder_name(size, int(arch.get("patch_size") or encoder.patch_size[0]))
    defaults = {**ENCODER_ARCHS[size], "patch_size": int(arch.get("patch_size") or 16)}
    actual = {
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "num_heads": encoder.num_heads,
        "mlp_ratio": float(encoder.mlp_ratio),
        "patch_size": int(encoder.patch_size[0]),
    }
    extra = {k: v for k, v in actual.items() if defaults.get(k) != v}
    return name, extra


def export_encoder(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Write ``model.safetensors`` + ``config.json`` for the encoder; return the config."""
    model, meta = load_pretrained_model(checkpoint)
    encoder: VisionTransformerEncoder = model.encoder
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    config: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "pretraining_model": meta["model_name"],
        "spatial_dims": encoder.spatial_dims,
        "in_chans": encoder.in_chans,
        "img_size": list(encoder.img_size),
        "patch_size": list(encoder.patch_size),
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "num_heads": encoder.num_heads,
        "mlp_ratio": float(encoder.mlp_ratio),
        "layer_norm_eps": 1e-6,
        "intermediate_blocks": list(meta.get("intermediate_blocks") or []),
        "intermediate_blocks_indexing": "1-indexed block outputs, before the final norm",
        # Hi-End-MAE: the blocks its decoder cross-attended to, deep to shallow (null otherwise)
        "encoder_levels": meta.get("encoder_levels"),
        "bands": list(meta.get("bands") or []),
        "mean": list(meta.get("mean") or []),
        "std": list(meta.get("std") or []),
        "modality": meta.get("modality"),
        "profile": meta.get("profile"),
        "wavelengths_nm": meta.get("wavelengths_nm"),
        "window_hu": meta.get("window_hu"),
        "source_checkpoint": str(Path(checkpoint).resolve()),
    }
    if encoder.spatial_dims == 2:
        name, extra = timm_spec(encoder, meta)
        config.update(weights_keys="timm", architecture=name, timm_kwargs=extra)
    else:
        state = to_monai_state_dict(state)
        config.update(
            weights_keys="monai",
            architecture="monai.networks.nets.ViT",
            monai_kwargs=monai_vit_kwargs(config),
            monai_key_map=MONAI_KEY_MAP,
        )
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    atomic_write_json(out / CONFIG_NAME, config)
    return config


def read_export(export_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    export_dir = Path(export_dir)
    config = json.loads((export_dir / CONFIG_NAME).read_text())
    return load_file(str(export_dir / WEIGHTS_NAME)), config


# -- MONAI ----------------------------------------------------------------------------------------
def monai_vit_kwargs(config: dict[str, Any], classification: bool = True) -> dict[str, Any]:
    return {
        "in_channels": config["in_chans"],
        "img_size": list(config["img_size"]),
        "patch_size": list(config["patch_size"]),
        "hidden_size": config["embed_dim"],
        "mlp_dim": int(config["embed_dim"] * config["mlp_ratio"]),
        "num_layers": config["depth"],
        "num_heads": config["num_heads"],
        "proj_type": "conv",
        "classification": classification,
        "qkv_bias": True,
        "spatial_dims": config["spatial_dims"],
    }


def build_monai_vit(export_dir: str | Path, classification: bool = True) -> nn.Module:
    """A MONAI ``ViT`` holding a 3-D export's weights (LayerNorm eps set to ours, 1e-6).

    With ``classification=False`` (as inside MONAI's UNETR) the class token is not used.
    Keys the export does not hold (``classification_head.*``, unused ``norm_cross_attn``) keep
    MONAI's initialization; any other mismatch raises.
    """
    from monai.networks.nets import ViT

    state, config = read_export(export_dir)
    if config.get("weights_keys") != "monai":
        raise ValueError(f"{export_dir} is a {config.get('weights_keys')} export, not a 3-D one")
    vit = ViT(**monai_vit_kwargs(config, classification))
    for module in vit.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = config.get("layer_norm_eps", 1e-6)
    if not classification:
        state = {k: v for k, v in state.items() if k != "cls_token"}
    result = vit.load_state_dict(state, strict=False)
    allowed = re.compile(r"^(classification_head\.|blocks\.\d+\.norm_cross_attn\.)")
    bad_missing = [k for k in result.missing_keys if not allowed.match(k)]
    if bad_missing or result.unexpected_keys:
        raise RuntimeError(
            f"MONAI ViT key mismatch: missing {bad_missing}, unexpected {result.unexpected_keys}"
        )
    return vit


# -- loading with band matching -------------------------------------------------------------------
@dataclass
class BandMatchReport:
    """How the patch embedding's input channels were matched by band name."""

    shared: list[str] = field(default_factory=list)  # copied from the pretrained weights
    added: list[str] = field(default_factory=list)  # not pretrained: fresh initialization
    dropped: list[str] = field(default_factory=list)  # pretrained but not in the new band list

    def __str__(self) -> str:
        return (
            f"bands: {len(self.shared)} shared {self.shared}; {len(self.added)} new (initialized) "
            f"{self.added}; {len(self.dropped)} dropped {self.dropped}"
        )


def match_band_channels(
    target_weight: torch.Tensor,
    source_weight: torch.Tensor,
    source_bands: Sequence[str],
    target_bands: Sequence[str],
) -> tuple[torch.Tensor, BandMatchReport]:
    """Patch-embedding weight for ``target_bands``: channels of shared bands (matched by name,
    case-insensitive) come from ``source_weight``; the others keep ``target_weight``'s values."""
    if source_weight.shape[1] != len(source_bands):
        raise ValueError(
            f"pretrained patch embedding has {source_weight.shape[1]} channels but "
            f"{len(source_bands)} band names"
        )
    src_index = {b.casefold(): i for i, b in enumerate(source_bands)}
    weight = target_weight.detach().clone()
    report = BandMatchReport()
    for j, band in enumerate(target_bands):
        i = src_index.get(band.casefold())
        if i is None:
            report.added.append(band)
        else:
            weight[:, j] = source_weight[:, i]
            report.shared.append(band)
    target_keys = {b.casefold() for b in target_bands}
    report.dropped = [b for b in source_bands if b.casefold() not in target_keys]
    return weight, report


def load_encoder_weights(
    encoder: VisionTransformerEncoder,
    state: dict[str, torch.Tensor],
    source_bands: Sequence[str],
    target_bands: Sequence[str] | None = None,
) -> BandMatchReport:
    """Load our-key encoder weights into ``encoder``, matching input bands by name.

    The fixed sin-cos ``pos_embed`` is kept from ``encoder`` when the grid differs.
    """
    target_bands = list(target_bands or source_bands)
    if len(target_bands) != encoder.in_chans:
        raise ValueError(f"{len(target_bands)} band names for an encoder of {encoder.in_chans}")
    state = dict(state)
    own = encoder.state_dict()
    key = "patch_embed.proj.weight"
    state[key], report = match_band_channels(own[key], state[key], source_bands, target_bands)
    if state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = own["pos_embed"]
    encoder.load_state_dict(state, strict=True)
    if report.added or report.dropped:
        log.warning("loading pretrained encoder: %s", report)
    return report


def load_encoder(
    export_dir: str | Path,
    bands: Sequence[str] | None = None,
    img_size: int | Sequence[int] | None = None,
) -> tuple[VisionTransformerEncoder, BandMatchReport, dict[str, Any]]:
    """Our encoder from an export (2-D or 3-D), for ``bands`` (default: the export's)."""
    state, config = read_export(export_dir)
    if config.get("weights_keys") == "monai":
        state = from_monai_state_dict(state)
    source_bands = config.get("bands") or [f"band{i}" for i in range(config["in_chans"])]
    target_bands = list(bands or source_bands)
    encoder = VisionTransformerEncoder(
        img_size=img_size or config["img_size"],
        patch_size=config["patch_size"],
        in_chans=len(target_bands),
        embed_dim=config["embed_dim"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        mlp_ratio=config["mlp_ratio"],
        spatial_dims=config["spatial_dims"],
    )
    report = load_encoder_weights(encoder, state, source_bands, target_bands)
    return encoder, report, config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geomed_mim.export",
        description="Export a pretrained encoder as model.safetensors + config.json.",
    )
    parser.add_argument("checkpoint", help="a pretraining checkpoint (.ckpt)")
    parser.add_argument("--output", "-o", required=True, help="output folder")
    args = parser.parse_args(argv)
    config = export_encoder(args.checkpoint, args.output)
    target = config["architecture"]
    print(
        f"exported {config['spatial_dims']}-D encoder ({config['depth']} blocks, "
        f"dim {config['embed_dim']}, {config['in_chans']} bands) → {args.output}\n"
        f"  loads into: {target} {config.get('timm_kwargs') or ''}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
