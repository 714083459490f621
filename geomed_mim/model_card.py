"""The model card (``README.md``) written next to an export's ``config.json``, in Hugging Face's
model-card format: YAML front matter (license, tags, library_name) and a body saying what the
weights are (data, bands with wavelengths, normalization statistics, method, training steps)
and how to load them with timm, MONAI and this project. Everything comes from ``config.json``
(and the checkpoint metadata the export read), so a card never claims what the folder lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from data_pipelines.store import atomic_write_bytes

CARD_NAME = "README.md"


def front_matter(config: dict[str, Any]) -> str:
    tags = ["geomed_mim", "masked-image-modeling", "feature-extraction"]
    tags.append("medical-imaging" if config.get("modality") == "ct" else "remote-sensing")
    if config.get("weights_keys") == "timm":
        tags.append("timm")
    meta = {
        # the weights' own license is the source's for converted models: state it when sharing
        "license": config.get("license") or "other",
        "library_name": "timm" if config.get("weights_keys") == "timm" else "monai",
        "tags": tags,
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def band_lines(config: dict[str, Any]) -> list[str]:
    """A table of bands, wavelengths and (when recorded) mean/std."""
    bands = config.get("bands") or []
    waves = config.get("wavelengths_nm") or [None] * len(bands)
    mean, std = config.get("mean") or [], config.get("std") or []
    lines = ["| # | band | wavelength (nm) | mean | std |", "|---|---|---|---|---|"]
    for i, band in enumerate(bands):
        w = waves[i] if i < len(waves) and waves[i] is not None else "-"
        m = f"{mean[i]:.6g}" if i < len(mean) else "-"
        s = f"{std[i]:.6g}" if i < len(std) else "-"
        lines.append(f"| {i + 1} | {band} | {w} | {m} | {s} |")
    if not mean:
        lines.append("")
        lines.append("No normalization statistics are recorded: standardize each band with the "
                     "statistics of the data the weights were trained on.")  # fmt: skip
    return lines


def method_lines(config: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    converted = config.get("converted_from")
    lines = [f"- architecture: `{config.get('architecture')}` {config.get('timm_kwargs') or ''}"]
    if converted:
        lines.append(f"- converted from: {converted['format']} (`{config['source_checkpoint']}`)")
        lines.append(f"- bands copied: {converted['bands_shared']}; initialized as the mean "
                     f"kernel: {converted['bands_initialized_as_mean']}; dropped: "
                     f"{converted['bands_dropped']}")  # fmt: skip
        lines += [f"- {note}" for note in converted.get("notes") or []]
    else:
        lines.append(f"- method: `{config.get('pretraining_model')}` "
                     f"({config.get('checkpoint_kind')} checkpoint)")  # fmt: skip
        lines.append(f"- steps: {meta.get('global_step', 'not recorded')}")
        lines.append(f"- checkpoint: `{config.get('source_checkpoint')}`")
    if config.get("continue_pretraining"):
        lines.append(f"- continue pretraining: `{config['continue_pretraining']}`")
    return lines


def loading_lines(config: dict[str, Any]) -> list[str]:
    if config.get("architecture", "").startswith("monai.networks.nets.swin_unetr"):
        return ["```python", "from monai.networks.nets.swin_unetr import SwinTransformer",
                "from safetensors.torch import load_file",
                f"swin = SwinTransformer(**{config['monai_kwargs']!r})",
                "swin.load_state_dict(load_file('model.safetensors'))  # SwinUNETR's swinViT",
                "```"]  # fmt: skip
    if config.get("weights_keys") == "monai":
        return ["```python", "from geomed_mim.models.weights import build_monai_vit",
                "vit = build_monai_vit('.')  # MONAI ViT, strict keys", "```"]  # fmt: skip
    kwargs = dict(config.get("timm_kwargs") or {})
    if config.get("timm_loadable") is False:  # a Swin V2 with extra norms: our encoder only
        kwargs.pop("num_classes", None)
        return ["```python", "from safetensors.torch import load_file",
                "from geomed_mim.models.swin import SwinV2Encoder",
                f"encoder = SwinV2Encoder(**{kwargs!r}, "
                f"extra_norm_period={config['extra_norm_period']})",
                "encoder.load_state_dict(load_file('model.safetensors'), strict=False)  "
                "# all but the mask token", "```"]  # fmt: skip
    if "depths" not in kwargs:  # ViT exports: the band count and size travel separately
        kwargs = {"in_chans": config["in_chans"], "img_size": config["img_size"][0],
                  "num_classes": 0, **kwargs}  # fmt: skip
    return [
        "```python",
        "import timm",
        f"model = timm.create_model({config['architecture']!r}, "
        f"checkpoint_path='model.safetensors', **{kwargs!r})",
        "```",
        "In this project: `--model.init_args.init_from <this folder>` (fine-tuning, and "
        "pretraining that continues), or `geomed_mim.models.weights.load_encoder('<folder>')`.",
    ]


def model_card(config: dict[str, Any], meta: dict[str, Any] | None = None) -> str:
    meta = meta or {}
    converted = config.get("converted_from")
    title = (
        f"{config.get('architecture')} converted from {converted['format']}"
        if converted
        else f"{config.get('pretraining_model') or config.get('architecture')} encoder"
    )
    body = [
        f"# {title}",
        "",
        "## Data",
        f"- modality: {config.get('modality')}; profile: {config.get('profile')}",
        f"- image size: {config.get('img_size')}, patch size: {config.get('patch_size')}",
        "",
        "## Bands and normalization",
        *band_lines(config),
        "",
        "## Method",
        *method_lines(config, meta),
        "",
        "## How to load",
        *loading_lines(config),
        "",
    ]
    return front_matter(config) + "\n" + "\n".join(body)


def write_model_card(
    folder: str | Path, config: dict[str, Any], meta: dict[str, Any] | None = None
) -> Path:
    path = Path(folder) / CARD_NAME
    atomic_write_bytes(path, model_card(config, meta).encode())
    return path
