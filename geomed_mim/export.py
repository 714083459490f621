"""Export a pretrained encoder for reuse: ``python -m geomed_mim.export CKPT --output DIR``.

``CKPT`` is a pretraining checkpoint, or a fine-tuning one (its fine-tuned encoder is exported;
the segmentation head is left out). Writes ``DIR/model.safetensors`` (encoder weights only) and
``DIR/config.json`` (architecture, band names, per-band mean/std, patch size, spatial dims,
recorded intermediate blocks).

* **2-D** weights use timm's ``VisionTransformer`` keys; they load with strict keys into::

      timm.create_model(cfg["architecture"], in_chans=cfg["in_chans"],
                        img_size=cfg["img_size"][0],
                        num_classes=0, checkpoint_path="DIR/model.safetensors",
                        **cfg["timm_kwargs"])

  (``timm_kwargs`` is empty for the registry's standard sizes, e.g. ``mae_vit_base_patch16``),
  and ``model.forward_intermediates(x, indices=cfg["intermediate_indices"])`` returns the
  recorded blocks.
* **3-D** weights use MONAI ``ViT`` keys (:data:`~geomed_mim.models.weights.MONAI_KEY_MAP`);
  :func:`~geomed_mim.models.weights.build_monai_vit` builds and loads one. MONAI's position
  embedding has no class slot (MAE's class slot is zero, so nothing is lost), and MONAI's
  LayerNorms default to eps 1e-5 where ours use 1e-6.

* **Swin V2** (SimMIM) weights are timm's ``SwinTransformerV2``'s, without the mask token; they
  load with strict keys into ``timm.create_model(cfg["architecture"], **cfg["timm_kwargs"])``
  (``timm_kwargs`` holds every size argument, ``num_classes=0``). An encoder with extra norms
  (the giant) has no timm twin and is not exported.

Every export also gets a model card, ``DIR/README.md`` (Hugging Face's format: YAML front matter
with license, tags and library_name; the data, bands with wavelengths, normalization statistics,
method, steps and how to load it: :mod:`geomed_mim.model_card`). ``--push-to-hub REPO`` uploads
the folder with ``huggingface_hub`` (installed with timm) when the network and a login allow.

Reading exports and checkpoints back (fine-tuning, band matching) is
:mod:`geomed_mim.models.weights`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import save

from data_pipelines.errors import EXIT_OK
from data_pipelines.store import atomic_write_bytes, atomic_write_json
from geomed_mim.model_card import write_model_card
from geomed_mim.models.swin import NoTimmTwinError, SwinV2Encoder
from geomed_mim.models.swin3d import SwinViT3DEncoder
from geomed_mim.models.vit import ENCODER_ARCHS, VisionTransformerEncoder, timm_encoder_name
from geomed_mim.models.weights import (
    CONFIG_NAME,
    EXPORT_FORMAT,
    MONAI_KEY_MAP,
    WEIGHTS_NAME,
    NotAPretrainingCheckpointError,
    is_finetuning_metadata,
    load_checkpoint_encoder,
    monai_vit_kwargs,
    read_checkpoint_entries,
    to_monai_state_dict,
)
from geomed_mim.usage import UsageError, UserErrors  # a user mistake: one line, no traceback


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


def export_config(
    encoder: VisionTransformerEncoder, meta: dict[str, Any], checkpoint: str | Path
) -> dict[str, Any]:
    """``config.json`` of an export (without the key-layout fields)."""
    blocks = [int(n) for n in meta.get("intermediate_blocks") or []]
    return {
        "format": EXPORT_FORMAT,
        "pretraining_model": meta.get("model_name"),
        # "pretraining", or "segmentation" for the encoder of a fine-tuning checkpoint
        "checkpoint_kind": "segmentation" if is_finetuning_metadata(meta) else "pretraining",
        "spatial_dims": encoder.spatial_dims,
        "in_chans": encoder.in_chans,
        "img_size": list(encoder.img_size),
        "patch_size": list(encoder.patch_size),
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "num_heads": encoder.num_heads,
        "mlp_ratio": float(encoder.mlp_ratio),
        # spacing of the positions its fixed sin-cos embedding was built with (1: MAE's)
        "pos_embed_scale": float(getattr(encoder, "pos_embed_scale", 1.0)),
        "layer_norm_eps": 1e-6,
        "intermediate_blocks": blocks,
        "intermediate_blocks_indexing": "1-indexed block outputs, before the final norm",
        # the same blocks for timm: forward_intermediates(x, indices=intermediate_indices)
        "intermediate_indices": [n - 1 for n in blocks],
        # Hi-End-MAE: the blocks its decoder cross-attended to, deep to shallow, numbered from 1
        # like intermediate_blocks (null for the other methods)
        "encoder_levels": meta.get("encoder_levels"),
        **data_fields(meta, checkpoint),
        "window_hu": meta.get("window_hu"),
    }


def data_fields(meta: dict[str, Any], checkpoint: str | Path) -> dict[str, Any]:
    """What every export's ``config.json`` says of the data: bands, statistics, modality,
    profile, wavelengths and the checkpoint it came from."""
    return {
        "bands": list(meta.get("bands") or []),
        "mean": list(meta.get("mean") or []),
        "std": list(meta.get("std") or []),
        "modality": meta.get("modality"),
        "profile": meta.get("profile"),
        "wavelengths_nm": meta.get("wavelengths_nm"),
        "source_checkpoint": str(Path(checkpoint).resolve()),
    }


def swin_export_config(
    encoder: SwinV2Encoder, meta: dict[str, Any], checkpoint: str | Path
) -> dict[str, Any]:
    """``config.json`` of a Swin V2 encoder: timm's ``SwinTransformerV2`` under any of its
    ``swinv2_*`` names, every size argument in ``timm_kwargs``."""
    size = (meta.get("encoder_arch") or {}).get("size")
    name = f"swinv2_{size}_window8_256"
    return {
        "format": EXPORT_FORMAT,
        "pretraining_model": meta.get("model_name"),
        "checkpoint_kind": "segmentation" if is_finetuning_metadata(meta) else "pretraining",
        "spatial_dims": 2,
        "in_chans": encoder.in_chans,
        "img_size": list(encoder.img_size),
        "patch_size": list(encoder.patch_size),
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "depths": list(encoder.depths),
        **data_fields(meta, checkpoint),
        "weights_keys": "timm",
        "architecture": name if timm.is_model(name) else "swinv2_base_window8_256",
        "timm_kwargs": dict(encoder.timm_kwargs),
    }


def export_encoder(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Write ``model.safetensors`` + ``config.json`` for the encoder; return the config."""
    encoder, meta = load_checkpoint_encoder(checkpoint)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(encoder, SwinViT3DEncoder):
        raise NoTimmTwinError("the 3-D Swin encoder (MONAI's, SimMIM 3-D) has no export yet")
    if isinstance(encoder, SwinV2Encoder):  # SimMIM: timm's Swin V2, no mask token
        state = {k: v.detach().contiguous() for k, v in encoder.timm_state_dict().items()}
        config = swin_export_config(encoder, meta, checkpoint)
        atomic_write_bytes(out / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
        atomic_write_json(out / CONFIG_NAME, config)
        write_model_card(out, config, card_metadata(checkpoint, meta))
        return config
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    config = export_config(encoder, meta, checkpoint)
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
    # serialized in memory and written atomically: safetensors' own save_file creates the file
    # 0600 whatever the umask, unreadable for a cluster's or container's other users
    atomic_write_bytes(out / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))
    atomic_write_json(out / CONFIG_NAME, config)
    write_model_card(out, config, card_metadata(checkpoint, meta))
    return config


def card_metadata(checkpoint: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint metadata with the optimizer steps it was written at (Lightning's)."""
    ckpt, _ = read_checkpoint_entries(checkpoint)
    return {**meta, "global_step": ckpt.get("global_step", "not recorded")}


def push_to_hub(folder: str | Path, repo: str) -> str:
    """Upload the export folder to the Hugging Face Hub repository ``repo``; returns its URL.
    A missing package, no network or no login is a :class:`UsageError` (one line)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise UsageError(
            "--push-to-hub: huggingface_hub is not installed; pip install huggingface_hub, or "
            f"upload {folder} yourself"
        ) from None
    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo)
    except Exception as e:  # network, login, permissions: all the same one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UsageError(
            f"--push-to-hub {repo}: the upload failed ({type(e).__name__}: {first}); the export "
            f"is in {folder}: log in (huggingface-cli login) where the Hub is reachable, or "
            "upload the folder yourself"
        ) from None
    return f"https://huggingface.co/{repo}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m geomed_mim.export",
        description="Export a pretrained encoder as model.safetensors + config.json.",
    )
    parser.add_argument(
        "checkpoint",
        help="a pretraining or fine-tuning checkpoint (.ckpt): its encoder is exported",
    )
    parser.add_argument("--output", "-o", required=True, help="output folder")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload to this Hub repository")
    args = parser.parse_args(argv)
    with UserErrors(output=args.output, system_exit=False) as errors:
        config = export_checked(args.checkpoint, args.output)
    if errors.status is not None:
        return errors.status
    target = config["architecture"]
    print(
        f"exported the {config['spatial_dims']}-D encoder of a {config['checkpoint_kind']} "
        f"checkpoint ({config['depth']} blocks, "
        f"dim {config['embed_dim']}, {config['in_chans']} bands) → {args.output}\n"
        f"  loads into: {target} {config.get('timm_kwargs') or ''}"
    )
    if args.push_to_hub:
        with UserErrors(system_exit=False) as errors:
            print(f"uploaded to {push_to_hub(args.output, args.push_to_hub)}")
        if errors.status is not None:
            return errors.status
    return EXIT_OK


def export_checked(checkpoint: str, output: str) -> dict[str, Any]:
    """:func:`export_encoder`, with a checkpoint that cannot be exported a usage error naming
    the ``checkpoint`` argument."""
    if not Path(checkpoint).is_file():
        raise UsageError(
            f"checkpoint: {checkpoint} is not a file; give the .ckpt a "
            "pretraining run wrote (or a fine-tuning run), e.g. runs/<run>/checkpoints/last.ckpt"
        )
    try:
        return export_encoder(checkpoint, output)
    except NotAPretrainingCheckpointError as e:
        raise UsageError(
            f"checkpoint: {e}; give the .ckpt a pretraining run wrote (or a fine-tuning run)"
        ) from None
    except NoTimmTwinError as e:
        raise UsageError(f"checkpoint: {e}") from None


if __name__ == "__main__":
    sys.exit(main())
