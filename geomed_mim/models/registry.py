"""timm-style model registry: ``create_model("mae_vit_base_patch16", in_chans=14, img_size=224)``.

Register a builder with :func:`register_model`; names follow timm
(``<method>_vit_<size>_patch<p>``).
Every builder accepts overrides as keyword arguments (``in_chans``, ``img_size``, ``spatial_dims``,
``mask_ratio``, ``norm_pix_loss``, ``patch_size``, ``depth``, decoder sizes, ...). A model made by
:func:`create_model` remembers its name and arguments (``model.registry_name``,
``model.registry_kwargs``) so checkpoints and exports can rebuild it.

:data:`ENCODER_ARCHS` gives each size's encoder hyperparameters and the timm ``VisionTransformer``
they correspond to; the export uses it to name the timm model a 2-D encoder loads into.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from geomed_mim.models.hi_end import HiEndMAE
from geomed_mim.models.mae import MaskedAutoencoder

_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}

# size → encoder hyperparameters, as timm's vit_<size>_patch16_224 (and MAE's reference sizes)
ENCODER_ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12, "mlp_ratio": 4.0},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "mlp_ratio": 4.0},
}
# the MAE reference decoder, the same for every encoder size
MAE_DECODER_DEFAULTS: dict[str, Any] = {
    "decoder_embed_dim": 512,
    "decoder_depth": 8,
    "decoder_num_heads": 16,
}


def timm_encoder_name(size: str, patch_size: int) -> str:
    """The timm architecture whose ``state_dict`` keys and shapes match our 2-D encoder."""
    return f"vit_{size}_patch{patch_size}_224"


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its function name (as timm's ``register_model``)."""
    name = fn.__name__
    if name in _MODEL_BUILDERS:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_BUILDERS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return sorted(n for n in _MODEL_BUILDERS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODEL_BUILDERS


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; keyword arguments override its defaults."""
    if name not in _MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    model = _MODEL_BUILDERS[name](**kwargs)
    model.registry_name = name
    model.registry_kwargs = dict(kwargs)
    return model


def _mae(size: str, default_patch_size: int, **kwargs: Any) -> MaskedAutoencoder:
    cfg: dict[str, Any] = {"patch_size": default_patch_size, **ENCODER_ARCHS[size]}
    cfg.update(MAE_DECODER_DEFAULTS)
    cfg.update(kwargs)
    model = MaskedAutoencoder(**cfg)
    # the named timm architecture (its patch size); export records any override as a kwarg
    model.encoder_arch = {"size": size, "patch_size": default_patch_size}
    return model


@register_model
def mae_vit_tiny_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _mae("tiny", 16, **kwargs)


@register_model
def mae_vit_small_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _mae("small", 16, **kwargs)


@register_model
def mae_vit_base_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _mae("base", 16, **kwargs)


@register_model
def mae_vit_large_patch16(**kwargs: Any) -> MaskedAutoencoder:
    return _mae("large", 16, **kwargs)


# -- Hi-End-MAE (issue 7) -------------------------------------------------------------------------
# Decoder per encoder size: base and large are the released decoders (384 wide / 12 heads, 528 / 16
# heads; 2 self-attention blocks before the level blocks); tiny and small scale them down.
HI_END_DECODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4},
    "small": {"decoder_embed_dim": 256, "decoder_depth": 2, "decoder_num_heads": 8},
    "base": {"decoder_embed_dim": 384, "decoder_depth": 2, "decoder_num_heads": 12},
    "large": {"decoder_embed_dim": 528, "decoder_depth": 2, "decoder_num_heads": 16},
}


def _hi_end(size: str, default_patch_size: int, **kwargs: Any) -> HiEndMAE:
    cfg: dict[str, Any] = {"patch_size": default_patch_size, **ENCODER_ARCHS[size]}
    cfg.update(HI_END_DECODER_DEFAULTS[size])
    cfg.update(kwargs)
    model = HiEndMAE(**cfg)
    # timm has no patch-12 ViTs: name the patch-16 one, the export passes patch_size=12 as a kwarg
    model.encoder_arch = {"size": size, "patch_size": 16}
    return model


@register_model
def hi_end_mae_vit_tiny_patch12(**kwargs: Any) -> HiEndMAE:
    return _hi_end("tiny", 12, **kwargs)


@register_model
def hi_end_mae_vit_tiny_patch16(**kwargs: Any) -> HiEndMAE:
    return _hi_end("tiny", 16, **kwargs)


@register_model
def hi_end_mae_vit_small_patch12(**kwargs: Any) -> HiEndMAE:
    return _hi_end("small", 12, **kwargs)


@register_model
def hi_end_mae_vit_small_patch16(**kwargs: Any) -> HiEndMAE:
    return _hi_end("small", 16, **kwargs)


@register_model
def hi_end_mae_vit_base_patch12(**kwargs: Any) -> HiEndMAE:
    return _hi_end("base", 12, **kwargs)


@register_model
def hi_end_mae_vit_base_patch16(**kwargs: Any) -> HiEndMAE:
    return _hi_end("base", 16, **kwargs)


@register_model
def hi_end_mae_vit_large_patch12(**kwargs: Any) -> HiEndMAE:
    return _hi_end("large", 12, **kwargs)


@register_model
def hi_end_mae_vit_large_patch16(**kwargs: Any) -> HiEndMAE:
    return _hi_end("large", 16, **kwargs)
