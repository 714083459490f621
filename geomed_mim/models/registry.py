"""timm-style model registry: ``create_model("mae_vit_base_patch16", in_chans=14, img_size=224)``.

Each model module registers its own builders with :func:`register_model`, or a family of sizes
with :func:`register_sizes`, next to the model (``mae.py``, ``selective.py``, ``hi_end.py``);
this module knows no model. Importing :mod:`geomed_mim.models` imports the model modules, so every
name is registered after it. Names follow timm (``<method>_vit_<size>_patch<p>``).

Every builder accepts overrides as keyword arguments (``in_chans``, ``img_size``, ``spatial_dims``,
``mask_ratio``, ``norm_pix_loss``, ``patch_size``, ``depth``, decoder sizes, ...). A model made by
:func:`create_model` remembers its name and arguments (``model.registry_name``,
``model.registry_kwargs``) so checkpoints and exports can rebuild it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_MODEL_MODULES: dict[str, str] = {}  # name → the module that registered it


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its function name (as timm's ``register_model``)."""
    name = fn.__name__
    if name in _MODEL_BUILDERS:
        raise ValueError(
            f"model {name!r} is already registered (by {_MODEL_MODULES[name]}); "
            "give the builder another name"
        )
    _MODEL_BUILDERS[name] = fn
    _MODEL_MODULES[name] = fn.__module__
    return fn


def register_sizes(
    prefix: str,
    build: Callable[..., nn.Module],
    sizes: Sequence[str],
    patch_sizes: Sequence[int] = (16,),
) -> None:
    """Register ``<prefix>_<size>_patch<p>`` for every size and patch size, each building
    ``build(size, p, **kwargs)``; the names count as registered by ``build``'s module."""
    for size in sizes:
        for patch_size in patch_sizes:
            register_model(_sized_builder(prefix, build, size, patch_size))


def _sized_builder(
    prefix: str, build: Callable[..., nn.Module], size: str, patch_size: int
) -> Callable[..., nn.Module]:
    def builder(**kwargs: Any) -> nn.Module:
        return build(size, patch_size, **kwargs)

    builder.__name__ = builder.__qualname__ = f"{prefix}_{size}_patch{patch_size}"
    builder.__module__ = build.__module__
    return builder


def list_models(pattern: str | Sequence[str] = "*") -> list[str]:
    """Registered names matching a shell-style pattern (or any of several), sorted."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return sorted(n for n in _MODEL_BUILDERS if any(fnmatch.fnmatch(n, p) for p in patterns))


def is_model(name: str) -> bool:
    return name in _MODEL_BUILDERS


def model_module(name: str) -> str:
    """The module that registered ``name`` (e.g. ``geomed_mim.models.mae``)."""
    return _MODEL_MODULES[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; keyword arguments override its defaults."""
    if name not in _MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    model = _MODEL_BUILDERS[name](**kwargs)
    model.registry_name = name
    model.registry_kwargs = dict(kwargs)
    return model
