"""Pretrained encoder weights: read them from a pretraining checkpoint or an export folder, convert
between key layouts, and load them into an encoder for another band list.

* A **pretraining checkpoint** (``.ckpt``, written by the pretraining task) holds the whole MIM
  model under ``state_dict`` (``model.`` prefix) and a plain-data description under
  :data:`CHECKPOINT_METADATA_KEY`; :func:`load_pretrained_model` rebuilds the model from it.
* An **export folder** holds ``model.safetensors`` (encoder only) and ``config.json``. 2-D weights
  use timm's ``VisionTransformer`` keys (our own); 3-D weights use MONAI ``ViT`` keys
  (:data:`MONAI_KEY_MAP`), which :func:`build_monai_vit` loads into MONAI.
* Either way, :func:`read_encoder_source` gives our-key weights, the band names, the architecture
  and the recorded intermediate blocks; :func:`load_encoder` builds an encoder from it, matching
  patch-embedding input channels **by band name**: shared bands are copied, new bands keep the
  fresh initialization, dropped bands are reported.

Block numbering: ``intermediate_blocks`` (checkpoints and exports) are numbered from 1, block 1
being ``encoder.blocks[0]``; exports also carry them 0-indexed as ``intermediate_indices``, the
``indices`` of timm's ``forward_intermediates``. :func:`recorded_block_numbers` reads either.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import ViT
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from data_pipelines.errors import UserError
from geomed_mim.models.pos_embed import get_sincos_pos_embed
from geomed_mim.models.registry import create_model
from geomed_mim.models.vit import VisionTransformerEncoder

log = logging.getLogger(__name__)

CHECKPOINT_METADATA_KEY = "geomed_mim"  # the checkpoint entry the pretraining task writes
EXPORT_FORMAT = "geomed_mim.encoder/1"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
ARCH_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "pos_embed_scale")
ARCH_DEFAULTS = {"pos_embed_scale": 1.0}  # keys that exports written before them lack

# our (timm) key → MONAI ViT key; ``N`` is a block index. pos_embed drops its class slot.
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
        elif key.startswith("classification_head.") or (
            key.startswith("blocks.") and "norm_cross_attn" in key
        ):
            continue  # MONAI-only modules our encoder does not have
        else:
            out[_rename(key, _FROM_MONAI)] = value
    return out


# -- reading checkpoints and exports --------------------------------------------------------------
class NotAPretrainingCheckpointError(UserError, ValueError):
    """The file is not a checkpoint the pretraining (or fine-tuning) task wrote."""


FINETUNING_KIND = "segmentation"  # ``kind`` in the metadata of a fine-tuning checkpoint
FINETUNED_ENCODER_PREFIX = "net.encoder."  # the encoder's keys in a fine-tuning state_dict
SWIN3D_FINETUNED_PREFIX = "net.swinViT."  # those of a SwinUNETR fine-tuning


def read_checkpoint_entries(checkpoint: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(checkpoint, its ``geomed_mim`` metadata) of a file one of our tasks wrote, loaded with
    ``weights_only=True`` (memory-mapped); :class:`NotAPretrainingCheckpointError` otherwise."""
    if not Path(checkpoint).is_file():
        raise NotAPretrainingCheckpointError(f"{checkpoint} is not a file")
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise NotAPretrainingCheckpointError(
            f"{checkpoint} is not a torch checkpoint that loads with weights_only=True"
        ) from e
    meta = ckpt.get(CHECKPOINT_METADATA_KEY) if isinstance(ckpt, dict) else None
    if not meta:
        hparams = ckpt.get("hyper_parameters") or {} if isinstance(ckpt, dict) else {}
        what = hparams.get("_class_path", "").rsplit(".", 1)[-1]
        raise NotAPretrainingCheckpointError(
            f"{checkpoint} has no '{CHECKPOINT_METADATA_KEY}' entry"
            + (f" (a {what} checkpoint of an earlier version)" if what else "")
            + ": not written by the pretraining or fine-tuning task"
        )
    return ckpt, meta


def is_finetuning_metadata(meta: dict[str, Any]) -> bool:
    return meta.get("kind") == FINETUNING_KIND


def load_pretrained_model(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The MIM model and its metadata from a pretraining checkpoint (loaded with weights_only)."""
    ckpt, meta = read_checkpoint_entries(checkpoint)
    if is_finetuning_metadata(meta):
        raise NotAPretrainingCheckpointError(
            f"{checkpoint} is a fine-tuning checkpoint: it holds an encoder and a segmentation "
            "head, no MIM model"
        )
    model = create_model(meta["model_name"], **meta["model_kwargs"])
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), meta


def load_checkpoint_encoder(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(encoder, metadata) of a pretraining checkpoint or of a fine-tuning one (its fine-tuned
    encoder, rebuilt from the architecture the checkpoint records: a ViT, or a Swin as SimMIM
    builds it)."""
    ckpt, meta = read_checkpoint_entries(checkpoint)
    if not is_finetuning_metadata(meta):
        model, meta = load_pretrained_model(checkpoint)
        return model.encoder, meta
    family = (meta.get("encoder") or {}).get("family", "vit")
    prefix = SWIN3D_FINETUNED_PREFIX if family == "swin3d" else FINETUNED_ENCODER_PREFIX
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if family != "vit":
        return finetuned_swin_encoder(meta, state), meta
    encoder = VisionTransformerEncoder(
        img_size=meta["img_size"],
        in_chans=int(meta["in_chans"]),
        spatial_dims=int(meta["spatial_dims"]),
        **meta["encoder"],
    )
    encoder.load_state_dict(state, strict=True)
    return encoder.eval(), meta


def finetuned_swin_encoder(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The Swin encoder of a fine-tuning checkpoint, as SimMIM builds it (Swin V2 or MONAI's
    3-D Swin), its fine-tuned weights loaded (the mask token may be absent: SwinUNETR's has
    none)."""
    from geomed_mim.models.swin import SwinV2Encoder
    from geomed_mim.models.swin3d import SwinViT3DEncoder

    sizes = {k: v for k, v in meta["encoder"].items() if k != "family"}
    kind = SwinViT3DEncoder if meta["encoder"]["family"] == "swin3d" else SwinV2Encoder
    encoder = kind(img_size=meta["img_size"], in_chans=int(meta["in_chans"]), **sizes)
    load_swin_export(encoder, state)
    return encoder.eval()


def read_export(export_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights as stored, config) of an export folder."""
    export_dir = Path(export_dir)
    config = json.loads((export_dir / CONFIG_NAME).read_text())
    return load_file(str(export_dir / WEIGHTS_NAME)), config


def recorded_block_numbers(config: dict[str, Any]) -> list[int]:
    """The recorded intermediate blocks, numbered from 1, from checkpoint metadata or an export
    config: ``intermediate_blocks`` (1-indexed, every version writes it), else timm's 0-indexed
    ``intermediate_indices`` + 1; [] when neither is there."""
    if config.get("intermediate_blocks"):
        return [int(n) for n in config["intermediate_blocks"]]
    return [int(i) + 1 for i in config.get("intermediate_indices") or []]


@dataclass
class EncoderSource:
    """Pretrained encoder weights in our key layout, with what is needed to rebuild the encoder."""

    state: dict[str, torch.Tensor]
    bands: list[str]
    arch: dict[str, Any]  # embed_dim, depth, num_heads, mlp_ratio, patch_size
    block_numbers: list[int]  # recorded intermediate blocks, numbered from 1
    config: dict[str, Any]  # the export config or the checkpoint metadata
    spatial_dims: int
    img_size: list[int]


def read_encoder_source(path: str | Path) -> EncoderSource:
    """Encoder weights from an export folder, a pretraining checkpoint or a fine-tuning one
    (``.ckpt``)."""
    if Path(path).is_dir():
        state, config = read_export(path)
        if config.get("weights_keys") == "monai":
            state = from_monai_state_dict(state)
        arch = {k: config[k] if k in config else ARCH_DEFAULTS[k] for k in ARCH_KEYS}
        spatial_dims, img_size, in_chans = (
            config[k] for k in ("spatial_dims", "img_size", "in_chans")
        )
    else:
        encoder, config = load_checkpoint_encoder(path)
        state = encoder.state_dict()
        arch = {k: getattr(encoder, k) for k in ARCH_KEYS}
        spatial_dims, img_size, in_chans = encoder.spatial_dims, encoder.img_size, encoder.in_chans
    bands = list(config.get("bands") or [f"band{i}" for i in range(in_chans)])
    return EncoderSource(
        state=state,
        bands=bands,
        arch=arch,
        block_numbers=recorded_block_numbers(config),
        config=config,
        spatial_dims=int(spatial_dims),
        img_size=list(img_size),
    )


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
# names users write for Sentinel-2 bands (STAC ``eo:common_name`` / asset keys, torchgeo's
# names) → the band token; ``B01``/``B1`` and ``B08A``/``B8A`` are equal anyway (the profiles'
# token rule). These are Sentinel-2's: Landsat's "nir08" is its B5, so a Landsat model's
# bands are best written as band tokens of its own profile.
BAND_ALIASES: dict[str, str] = {
    "coastal": "B1",
    "blue": "B2",
    "green": "B3",
    "red": "B4",
    "rededge1": "B5",
    "rededge2": "B6",
    "rededge3": "B7",
    "nir": "B8",
    "nir08": "B8A",
    "nir09": "B9",
    "watervapour": "B9",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}
_BAND_TOKEN = re.compile(r"^B0*(\d+)([A-Z]?)$", re.IGNORECASE)


def canonical_band(name: str) -> str:
    """The key bands are matched by: ``B01`` → ``B1``, ``b08a`` → ``B8A``, ``red`` → ``B4``,
    ``nir08`` → ``B8A`` (:data:`BAND_ALIASES`); other names upper-cased."""
    token = name.strip()
    token = BAND_ALIASES.get(token.casefold().replace("_", "").replace("-", ""), token)
    m = _BAND_TOKEN.match(token)
    return f"B{int(m.group(1))}{m.group(2).upper()}" if m else token.upper()


@dataclass
class BandMatchReport:
    """How the patch embedding's input channels were matched by band name."""

    shared: list[str] = field(default_factory=list)  # copied from the pretrained weights
    added: list[str] = field(default_factory=list)  # not pretrained: initialized
    dropped: list[str] = field(default_factory=list)  # pretrained but not in the new band list
    # target band → the source band it was copied from (differs when matched by an alias)
    source_of: dict[str, str] = field(default_factory=dict)

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
    new_bands: str = "keep",
) -> tuple[torch.Tensor, BandMatchReport]:
    """Patch-embedding weight for ``target_bands``: channels of shared bands (matched by
    :func:`canonical_band`: case, zero padding and aliases ignored) come from ``source_weight``;
    the others keep ``target_weight``'s values (``new_bands="keep"``) or take the mean of the
    source's kernels (``"mean"``: a new band whose normalized values resemble the others' adds
    what an average pretrained band adds)."""
    if source_weight.shape[1] != len(source_bands):
        raise ValueError(
            f"pretrained patch embedding has {source_weight.shape[1]} channels but "
            f"{len(source_bands)} band names"
        )
    src_index = {canonical_band(b): i for i, b in enumerate(source_bands)}
    weight = target_weight.detach().clone()
    report = BandMatchReport()
    for j, band in enumerate(target_bands):
        i = src_index.get(canonical_band(band))
        if i is None:
            report.added.append(band)
            if new_bands == "mean":
                weight[:, j] = source_weight.mean(dim=1)
        else:
            weight[:, j] = source_weight[:, i]
            report.shared.append(band)
            report.source_of[band] = source_bands[i]
    target_keys = {canonical_band(b) for b in target_bands}
    report.dropped = [b for b in source_bands if canonical_band(b) not in target_keys]
    return weight, report


def positions_on_grid(encoder: VisionTransformerEncoder, source: torch.Tensor) -> torch.Tensor:
    """A source's ``pos_embed`` [1, 1 + L, D] (class slot first) on ``encoder``'s patch grid.

    The fixed sin-cos table (this project's, MAE's) is recomputed for the new grid; learned
    positions (timm's and torchgeo's published ViTs) are resampled as timm does
    (``resample_abs_pos_embed``, bicubic), which a recomputed table would silently replace.
    """
    grid = tuple(encoder.grid_size)
    side = round((source.shape[1] - 1) ** (1 / len(grid)))
    source_grid = (side,) * len(grid)
    if side ** len(grid) != source.shape[1] - 1:
        raise ValueError(f"pos_embed: {source.shape[1] - 1} positions are not a square/cube grid")
    table = get_sincos_pos_embed(source.shape[-1], source_grid, True, encoder.pos_embed_scale)
    if torch.allclose(source[0].float(), torch.from_numpy(table).float(), atol=1e-5):
        return encoder.pos_embed.detach()  # the same recipe, already on this grid
    if len(grid) != 2:
        raise ValueError(
            f"pos_embed: learned 3-D positions for a {source_grid} grid cannot be resampled to "
            f"{grid}; give the source's image size"
        )
    log.info("resampling learned positions from a %s to a %s patch grid", source_grid, grid)
    return resample_abs_pos_embed(source, list(grid), list(source_grid), num_prefix_tokens=1)


def load_encoder_weights(
    encoder: VisionTransformerEncoder,
    state: dict[str, torch.Tensor],
    source_bands: Sequence[str],
    target_bands: Sequence[str] | None = None,
) -> BandMatchReport:
    """Load our-key encoder weights into ``encoder``, matching input bands by name.

    On another patch grid the positions come from :func:`positions_on_grid`.
    """
    target_bands = list(target_bands or source_bands)
    if len(target_bands) != encoder.in_chans:
        raise ValueError(f"{len(target_bands)} band names for an encoder of {encoder.in_chans}")
    state = dict(state)
    own = encoder.state_dict()
    key = "patch_embed.proj.weight"
    state[key], report = match_band_channels(own[key], state[key], source_bands, target_bands)
    if state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = positions_on_grid(encoder, state["pos_embed"])
    encoder.load_state_dict(state, strict=True)
    if report.added or report.dropped:
        log.warning("loading pretrained encoder: %s", report)
    return report


def load_encoder(
    source: str | Path,
    bands: Sequence[str] | None = None,
    img_size: int | Sequence[int] | None = None,
    spatial_dims: int | None = None,
) -> tuple[VisionTransformerEncoder, BandMatchReport, dict[str, Any]]:
    """Our encoder from an export folder or a pretraining checkpoint, for ``bands`` (default: the
    source's) at ``img_size`` (default: the source's); returns (encoder, band report, the
    source's config or checkpoint metadata)."""
    src = read_encoder_source(source)
    target_bands = list(bands or src.bands)
    encoder = VisionTransformerEncoder(
        img_size=img_size or src.img_size,
        in_chans=len(target_bands),
        spatial_dims=spatial_dims or src.spatial_dims,
        **src.arch,
    )
    report = load_encoder_weights(encoder, src.state, src.bands, target_bands)
    return encoder, report, src.config


# -- continuing pretraining from an export ---------------------------------------------------------
# a converted model's MIM parts outside the encoder export, keyed as in the MIM model: the
# decoder's weights (``decoder.*``) and SimMIM's mask token (``encoder.mask_token``)
DECODER_WEIGHTS_NAME = "decoder.safetensors"


class InitFromMismatchError(ValueError):
    """An ``init_from`` source whose weights do not fit the model being pretrained."""


def load_swin_export(encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """timm Swin V2 weights into our :class:`~geomed_mim.models.swin.SwinV2Encoder` (MONAI
    ``SwinTransformer`` weights into the 3-D one); only the mask token (not part of timm's or
    MONAI's model) keeps its initialization."""
    result = encoder.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != "mask_token"]
    if missing or result.unexpected_keys:
        raise InitFromMismatchError(
            f"Swin V2 keys differ: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}"
        )


def init_mim_model(model: nn.Module, source: str | Path) -> str:
    """Load an export folder (or a checkpoint) into a MIM model before pretraining continues:
    the encoder always, the decoder too when the export holds one of the model's shape.
    Returns one line saying what was loaded."""
    source = Path(source)
    config = json.loads((source / CONFIG_NAME).read_text()) if source.is_dir() else {}
    encoder = model.encoder
    if str(config.get("architecture", "")).startswith(("swinv2", "monai.networks.nets.swin")):
        state = load_file(str(source / WEIGHTS_NAME))
        check_shapes(encoder.state_dict(), state, "encoder")
        load_swin_export(encoder, state)
    else:
        src = read_encoder_source(source)
        if len(src.bands) != encoder.in_chans:
            raise InitFromMismatchError(
                f"{len(src.bands)} bands in the source, {encoder.in_chans} in the data"
            )
        check_shapes(encoder.state_dict(), src.state, "encoder", skip=("pos_embed",))
        load_encoder_weights(encoder, src.state, src.bands)
    decoder_file = source / DECODER_WEIGHTS_NAME
    if not decoder_file.is_file():
        return f"encoder initialized from {source}; the decoder starts fresh"
    parts = load_file(str(decoder_file))
    own = model.state_dict()
    unknown = [k for k in parts if k not in own]
    missing = [k for k in own if k.startswith("decoder.") and k not in parts]
    if unknown or missing:
        raise InitFromMismatchError(
            f"the source's decoder is not this model's: keys {unknown[:3]} unknown, "
            f"{missing[:3]} missing (model and model_kwargs must be continue_pretraining's)"
        )
    check_shapes(own, parts, "decoder")
    model.load_state_dict({**own, **parts}, strict=True)
    return f"encoder and decoder initialized from {source}"


def check_shapes(
    own: dict[str, torch.Tensor],
    state: dict[str, torch.Tensor],
    what: str,
    skip: Sequence[str] = (),
) -> None:
    """:class:`InitFromMismatchError` naming the first weight whose shape differs."""
    for key, value in state.items():
        if key in own and key not in skip and own[key].shape != value.shape:
            raise InitFromMismatchError(
                f"{what} weight {key} is {list(value.shape)} in the source, "
                f"{list(own[key].shape)} in the model (model_kwargs must match the source's)"
            )
