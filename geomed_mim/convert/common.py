"""What every source format shares once its keys are read: the converted model, band matching on
the patch embedding (and on a decoder's output), position-embedding resampling, and writing the
export folder.

A reader (``satvision``, ``mae``, ``timm_vit``) returns a :class:`Converted` in this project's key
layout at the source's own bands and image size; :func:`adapt` then matches the bands to the
target list and resamples to the target image size; :func:`write_export` writes the folder
``geomed_mim.export`` writes (``model.safetensors`` + ``config.json``, plus
``decoder.safetensors`` when the source holds a MIM decoder, and the model card).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save
from timm.layers import resample_abs_pos_embed

from data_pipelines.store import atomic_write_bytes, atomic_write_json
from geomed_mim.models.vit import ENCODER_ARCHS, timm_encoder_name
from geomed_mim.models.weights import (
    CONFIG_NAME,
    DECODER_WEIGHTS_NAME,
    EXPORT_FORMAT,
    WEIGHTS_NAME,
    BandMatchReport,
    canonical_band,
    match_band_channels,
)
from geomed_mim.usage import UsageError

PATCH_KEY = "patch_embed.proj.weight"
DECODER_POS = "decoder.decoder_pos_embed"  # MAE's decoder positions, in the MIM model's keys


@dataclass
class Converted:
    """A published model in this project's layout (encoder: timm keys; decoder: ours)."""

    family: str  # "vit" or "swinv2"
    encoder: dict[str, torch.Tensor]
    arch: dict[str, Any]  # vit: embed_dim, depth, num_heads, mlp_ratio; swinv2: timm kwargs
    patch_size: int
    img_size: int
    bands: list[str]
    source_format: str  # what it was read as, for config.json and the model card
    checkpoint: str
    # the MIM model's weights outside the encoder export, keyed as in the MIM model: the
    # decoder's (``decoder.*``) and SimMIM's mask token (``encoder.mask_token``)
    decoder: dict[str, torch.Tensor] | None = None
    # registry name and model_kwargs that continue pretraining with ``decoder``
    pretraining: dict[str, Any] | None = None
    wavelengths_nm: list[float | None] | None = None
    profile: str | None = None
    notes: list[str] = field(default_factory=list)  # said in the summary and the model card
    # Swin V2 at giant scale: a LayerNorm after every N-th block of a stage (0: none), kept as
    # ``extra_norms.{stage}_{block}``: timm's Swin V2 has no place for them
    extra_norm_period: int = 0

    @property
    def in_chans(self) -> int:
        return int(self.encoder[PATCH_KEY].shape[1])


def load_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model's state dict out of a torch file: DeepSpeed's ``module``, ``model`` (MAE's),
    ``state_dict`` (Lightning's) or the bare dict; one-line usage error for anything else."""
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is the same user mistake
        raise UsageError(
            f"--checkpoint {checkpoint}: not a torch checkpoint that loads with "
            f"weights_only=True ({type(e).__name__}); give the published .pth/.pt file"
        ) from None
    for key in ("module", "model", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise UsageError(f"--checkpoint {checkpoint}: holds no state dict of tensors")
    return ckpt


# -- bands ------------------------------------------------------------------------------------
def band_sources(
    report: BandMatchReport, source: Sequence[str], target: Sequence[str]
) -> list[int | None]:
    """For each target band, the source channel it comes from (None: the mean of all)."""
    index = {b: i for i, b in enumerate(source)}
    return [index[report.source_of[b]] if b in report.source_of else None for b in target]


def take_bands(t: torch.Tensor, axis: int, sources: Sequence[int | None]) -> torch.Tensor:
    """``t`` with its band ``axis`` rebuilt: source channel i, or the mean over all (None)."""
    mean = t.mean(dim=axis, keepdim=True)
    parts = [mean if i is None else t.narrow(axis, i, 1) for i in sources]
    return torch.cat(parts, dim=axis).contiguous()


def mapped_names(
    source: Sequence[str], target: Sequence[str], band_map: dict[str, str]
) -> list[str]:
    """The source's bands renamed for matching by ``band_map`` (target band → source band):
    a mapped band takes its target's name, an unmapped one a name nothing matches."""
    by_source = {canonical_band(s): t for t, s in band_map.items()}
    unknown = [s for s in band_map.values() if canonical_band(s) not in map(canonical_band, source)]
    unknown += [t for t in band_map if canonical_band(t) not in map(canonical_band, target)]
    if unknown:
        raise UsageError(
            f"--band-map: {unknown} not among the source's bands {list(source)} / the target's "
            f"{list(target)}; write TARGET=SOURCE pairs of their names"
        )
    return [by_source.get(canonical_band(b), f"{b} (unmapped)") for b in source]


def match_bands(
    model: Converted, target: Sequence[str], band_map: dict[str, str] | None = None
) -> BandMatchReport:
    """Patch-embedding kernels for ``target`` bands in place: matched bands copied, new ones the
    mean of the source's kernels; a decoder's outputs follow. With ``band_map`` (target band →
    source band, for sensors whose names differ or collide) only its pairs match."""
    names = mapped_names(model.bands, target, band_map) if band_map else list(model.bands)
    weight = model.encoder[PATCH_KEY]
    shape = (weight.shape[0], len(target), *weight.shape[2:])
    new, report = match_band_channels(weight.new_zeros(shape), weight, names, target, "mean")
    if not report.shared:
        raise UsageError(
            f"--target-bands/--profile: none of {list(target)} matches the source's bands "
            f"{model.bands}; give band names as B01..B12, B8A, red, nir08, ..., --band-map "
            "TARGET=SOURCE pairs, or --source-bands for a source that does not record them"
        )
    sources = band_sources(report, names, target)
    original = dict(zip(names, model.bands, strict=True))
    report.source_of = {t: original[s] for t, s in report.source_of.items()}
    report.dropped = [original[s] for s in report.dropped]
    model.encoder[PATCH_KEY] = new.contiguous()
    if model.decoder is not None:
        adapt_decoder_bands(model, sources)
    if model.pretraining:
        model.pretraining["model_kwargs"]["in_chans"] = len(sources)
    model.bands = list(target)
    return report


def adapt_decoder_bands(model: Converted, sources: Sequence[int | None]) -> None:
    """The decoder predicts every band: its output rows are matched like the input kernels.
    MAE's head emits (p, p, C) per patch; SimMIM's 1×1 conv C × s² channels (PixelShuffle's
    order, band first)."""
    dec, c = model.decoder, len(model.bands)
    if "decoder.decoder_pred.weight" in dec:
        w, b = dec["decoder.decoder_pred.weight"], dec["decoder.decoder_pred.bias"]  # [p*p*C, .]
        pp = w.shape[0] // c
        w = take_bands(w.reshape(pp, c, -1), 1, sources).reshape(pp * len(sources), -1)
        b = take_bands(b.reshape(pp, c), 1, sources).reshape(-1)
        dec["decoder.decoder_pred.weight"], dec["decoder.decoder_pred.bias"] = w, b
    else:
        w, b = dec["decoder.decoder.0.weight"], dec["decoder.decoder.0.bias"]  # [C*s*s, F, 1, 1]
        ss = w.shape[0] // c
        w = take_bands(w.reshape(c, ss, *w.shape[1:]), 0, sources).flatten(0, 1)
        b = take_bands(b.reshape(c, ss), 0, sources).reshape(-1)
        dec["decoder.decoder.0.weight"], dec["decoder.decoder.0.bias"] = w, b


# -- image size -------------------------------------------------------------------------------
def resample_positions(model: Converted, img_size: int) -> None:
    """A ViT at another image size: absolute position embeddings (encoder's, and a MAE
    decoder's) resampled bicubically to the new grid with timm's ``resample_abs_pos_embed``,
    the class slot kept. Swin V2 has none (relative positions inside windows)."""
    if img_size == model.img_size:
        return
    stride = model.patch_size * (16 if model.family == "swin3d" else 1)  # 4 merges in 3-D
    if img_size % stride:
        raise UsageError(f"--img-size {img_size} is not a multiple of {stride}")
    old, new = model.img_size // model.patch_size, img_size // model.patch_size
    if model.family == "vit":
        for state, key in ((model.encoder, "pos_embed"), (model.decoder, DECODER_POS)):
            if state is not None and key in state:
                state[key] = resample_abs_pos_embed(
                    state[key], [new, new], [old, old], num_prefix_tokens=1
                ).contiguous()
    elif model.family == "swinv2":  # timm's Swin V2 builds its attention masks for a size
        model.arch["img_size"] = [img_size, img_size]
    model.img_size = img_size
    if model.pretraining:
        model.pretraining["model_kwargs"]["img_size"] = img_size


# -- config.json ------------------------------------------------------------------------------
def vit_timm_spec(model: Converted) -> tuple[str, dict[str, Any]]:
    """(timm name, extra kwargs) of a ViT: the standard size of its width when there is one."""
    size = next((s for s, a in ENCODER_ARCHS.items() if a == model.arch), None)
    size = size or next(
        (s for s, a in ENCODER_ARCHS.items() if a["embed_dim"] == model.arch["embed_dim"]), "base"
    )
    name = timm_encoder_name(size, model.patch_size)
    if not timm.is_model(name):
        name = timm_encoder_name(size, 16)
    defaults = {**ENCODER_ARCHS[size], "patch_size": int(name.split("patch")[1].split("_")[0])}
    actual = {**model.arch, "patch_size": model.patch_size}
    return name, {k: v for k, v in actual.items() if defaults.get(k) != v}


def vit_config(model: Converted) -> dict[str, Any]:
    """The fields :func:`geomed_mim.models.weights.read_encoder_source` reads of a 2-D ViT."""
    depth = int(model.arch["depth"])
    step = max(depth // 4, 1)  # the pretraining task's default recorded blocks
    blocks = [min(1 + k * step, depth) for k in (1, 2, 3)]
    name, extra = vit_timm_spec(model)
    return {
        "spatial_dims": 2,
        "img_size": [model.img_size, model.img_size],
        "patch_size": [model.patch_size, model.patch_size],
        **{k: model.arch[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio")},
        "pos_embed_scale": 1.0,
        "layer_norm_eps": 1e-6,
        "intermediate_blocks": blocks,
        "intermediate_blocks_indexing": "1-indexed block outputs, before the final norm",
        "intermediate_indices": [n - 1 for n in blocks],
        "encoder_levels": None,
        "window_hu": None,
        "architecture": name,
        "timm_kwargs": extra,
    }


def swin_config(model: Converted) -> dict[str, Any]:
    """The fields of a Swin V2 export (timm's ``SwinTransformerV2``, every size argument)."""
    kwargs = {**model.arch, "in_chans": model.in_chans, "num_classes": 0}
    return {
        "spatial_dims": 2,
        "img_size": [model.img_size, model.img_size],
        "patch_size": [model.patch_size, model.patch_size],
        "embed_dim": kwargs["embed_dim"],
        "depth": sum(kwargs["depths"]),
        "depths": list(kwargs["depths"]),
        "architecture": "swinv2_base_window8_256",
        "timm_kwargs": kwargs,
        **extra_norm_fields(model),
    }


def extra_norm_fields(model: Converted) -> dict[str, Any]:
    """What a Swin V2 with extra norms says of them: timm cannot load it, our encoder can."""
    if not model.extra_norm_period:
        return {}
    return {
        "extra_norm_period": model.extra_norm_period,
        "timm_loadable": False,
        "loads_into": "geomed_mim.models.swin.SwinV2Encoder(**timm_kwargs less num_classes, "
        "extra_norm_period=extra_norm_period): the extra_norms.* keys are LayerNorms after "
        "every extra_norm_period-th block of each stage, which timm's SwinTransformerV2 lacks",
    }


def swin3d_config(model: Converted) -> dict[str, Any]:
    """The fields of a 3-D Swin export: MONAI's ``SwinTransformer`` and its arguments."""
    a = model.arch
    return {
        "spatial_dims": 3,
        "img_size": [model.img_size] * 3,
        "patch_size": [model.patch_size] * 3,
        "embed_dim": a["embed_dim"],
        "depth": sum(a["depths"]),
        "depths": list(a["depths"]),
        "architecture": "monai.networks.nets.swin_unetr.SwinTransformer",
        "monai_kwargs": {
            "in_chans": model.in_chans,
            "embed_dim": a["embed_dim"],
            "window_size": [a["window_size"]] * 3,
            "patch_size": [model.patch_size] * 3,
            "depths": list(a["depths"]),
            "num_heads": list(a["num_heads"]),
            "spatial_dims": 3,
        },
    }


LAYOUTS = {"vit": vit_config, "swinv2": swin_config, "swin3d": swin3d_config}


def export_config(model: Converted, report: BandMatchReport | None) -> dict[str, Any]:
    """``config.json``: the export's fields, what it was converted from and how bands matched."""
    layout = LAYOUTS[model.family](model)
    return {
        "format": EXPORT_FORMAT,
        "pretraining_model": (model.pretraining or {}).get("model"),
        "checkpoint_kind": "converted",
        "in_chans": model.in_chans,
        **layout,
        "bands": list(model.bands),
        "mean": [],  # published statistics are the source's; this project's data module
        "std": [],  # normalizes with the store's own
        "modality": "ct" if model.family == "swin3d" else "rs",
        "profile": model.profile,
        "wavelengths_nm": model.wavelengths_nm,
        "source_checkpoint": str(Path(model.checkpoint).resolve()),
        "weights_keys": "monai" if model.family == "swin3d" else "timm",
        "converted_from": {
            "format": model.source_format,
            "bands_shared": report.shared if report else list(model.bands),
            "bands_initialized_as_mean": report.added if report else [],
            "bands_dropped": report.dropped if report else [],
            "notes": model.notes,
        },
        "continue_pretraining": model.pretraining,  # registry name + model_kwargs, or null
    }


def write_export(model: Converted, output: Path, report: BandMatchReport | None) -> dict:
    """Write the export folder; return its config."""
    output.mkdir(parents=True, exist_ok=True)
    config = export_config(model, report)
    atomic_write_bytes(output / WEIGHTS_NAME, serialized(model.encoder))
    if model.decoder is not None:
        atomic_write_bytes(output / DECODER_WEIGHTS_NAME, serialized(model.decoder))
    atomic_write_json(output / CONFIG_NAME, config)
    return config


def serialized(state: dict[str, torch.Tensor]) -> bytes:
    """safetensors bytes (written atomically by the caller: the file is readable by others)."""
    return save({k: v.detach().contiguous() for k, v in state.items()}, metadata={"format": "pt"})


def band_table(report: BandMatchReport) -> str:
    """The matched / initialised / dropped bands as a short table."""
    rows = [("target band", "from source", "how")]
    rows += [(b, report.source_of[b], "copied") for b in report.shared]
    rows += [(b, "-", "mean of source kernels") for b in report.added]
    rows += [("-", b, "dropped") for b in report.dropped]
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) for r in rows
    )
