"""Plain timm ViT state dicts: a file (``--from timm --architecture vit_small_patch16_224``) or a
torchgeo weight (``--from torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO``), read offline from
torch hub's cache, where torchgeo's own download puts it
(``torch.hub.get_dir()/checkpoints/<the file name of the weight's URL>``).

timm's ``VisionTransformer`` keys are this project's ViT keys; a classifier head is left out.
Only the plain ViT (one class token, no register tokens, layer scale or pooling norm) has the
same modules as this project's encoder; other timm models are refused with the keys that
differ. torchgeo's weights record their bands (``meta["bands"]``) and timm architecture.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from geomed_mim.convert.common import PATCH_KEY, Converted, load_state
from geomed_mim.convert.mae import grid_side, vit_arch
from geomed_mim.models.vit import VisionTransformerEncoder
from geomed_mim.usage import UsageError

HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.")


def read_file_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` or torch file's state dict, the classifier head left out."""
    if checkpoint.suffix == ".safetensors":
        state = load_file(str(checkpoint))
    else:
        state = load_state(checkpoint)
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}


def timm_arch(architecture: str, state: dict[str, torch.Tensor], heads: int | None) -> dict:
    """Our encoder's sizes for ``state`` (read from its shapes; the head count, which shapes do
    not tell, is ``heads`` or the architecture's); a usage error unless ``architecture`` is a
    plain timm ViT with the state's keys."""
    if not timm.is_model(architecture):
        raise UsageError(
            f"--architecture {architecture}: not a timm model; give its timm name, e.g. "
            "vit_small_patch16_224"
        )
    if PATCH_KEY not in state or "pos_embed" not in state:
        raise UsageError("--checkpoint: no patch_embed.proj/pos_embed; not a timm ViT state dict")
    with torch.device("meta"):
        ref = timm.create_model(architecture, num_classes=0)
    if not isinstance(ref, VisionTransformer):
        raise UsageError(f"--architecture {architecture}: not the plain ViT this project's is")
    arch = vit_arch(state, "blocks.", heads or int(ref.blocks[0].attn.num_heads))
    # the key names depend on the depth only: a narrow twin tells them
    ours = VisionTransformerEncoder(16, 16, 1, embed_dim=8, depth=arch["depth"], num_heads=1)
    own, theirs = set(ours.state_dict()), set(state)
    if own != theirs:
        raise UsageError(
            f"--architecture {architecture}: not the plain ViT this project's encoder is; keys "
            f"only in the file {sorted(theirs - own)[:3]}, only in the encoder "
            f"{sorted(own - theirs)[:3]}"
        )
    return arch


def read_timm(
    checkpoint: Path, architecture: str, source_format: str, heads: int | None = None
) -> Converted:
    """A timm ViT state dict → our layout (the keys are the same)."""
    state = read_file_state(checkpoint)
    arch = timm_arch(architecture, state, heads)
    patch = int(state[PATCH_KEY].shape[-1])
    return Converted(
        family="vit",
        encoder=dict(state),
        arch=arch,
        patch_size=patch,
        img_size=grid_side(state) * patch,
        bands=[],
        source_format=source_format,
        checkpoint=str(checkpoint),
    )


def torchgeo_weight(spec: str) -> Any:
    """The torchgeo weight enum member ``ViTSmall16_Weights.SENTINEL2_ALL_DINO`` names."""
    enum_name, _, member = spec.partition(".")
    try:
        models = importlib.import_module("torchgeo.models")
    except ImportError:
        raise UsageError(
            "--from torchgeo:...: torchgeo is not installed (pip install torchgeo)"
        ) from None
    weights = getattr(models, enum_name, None)
    if weights is None or not member or not hasattr(weights, member):
        raise UsageError(
            f"--from torchgeo:{spec}: no such torchgeo weight; give <Enum>.<MEMBER>, e.g. "
            "torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_DINO"
        )
    return getattr(weights, member)


def hub_cache_file(url: str) -> Path:
    """Where torch hub (and so torchgeo) caches the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.split("?")[0].rsplit("/", 1)[-1]


def read_torchgeo(spec: str, checkpoint: Path | None) -> Converted:
    """A torchgeo ViT weight from torch hub's cache (or ``checkpoint``), offline."""
    weight = torchgeo_weight(spec)
    path = checkpoint or hub_cache_file(weight.url)
    if not path.is_file():
        raise UsageError(
            f"--from torchgeo:{spec}: {path} is absent and nothing is downloaded here; place "
            f"the file of {weight.url} there (or pass it as --checkpoint)"
        )
    model = read_timm(path, weight.meta["model"], f"torchgeo {spec}")
    model.bands = [str(b) for b in weight.meta.get("bands") or []]
    model.notes.append(f"torchgeo weight {spec} ({weight.meta.get('ssl_method', '')})")
    return model
