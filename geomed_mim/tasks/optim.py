"""The one optimization recipe of the training tasks: AdamW over timm's parameter groups, with a
linear warmup and a half-cosine decay stepped every optimizer step.

* **Weight decay** only on weight matrices: never on 1-D parameters (norms, biases) nor on the
  names a model lists in ``no_weight_decay()`` (class token, mask token, position embeddings).
* **Layer-wise lr decay** (fine-tuning): the layers come from the model's ``group_matcher()``
  (timm's convention); layer ``i`` of ``n`` gets ``lr × layer_decay ** (n - 1 - i)``.

Both are timm's ``param_groups_weight_decay`` / ``param_groups_layer_decay``; timm expresses the
layer scale as ``lr_scale`` for its own schedulers, which is turned into each group's ``lr`` here
because the schedule is torch's ``LambdaLR`` (a multiplier of every group's initial lr).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup from 0, then half-cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    progress = min(progress, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    no_weight_decay: Collection[str] = (),
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """Parameter groups with their ``lr`` and ``weight_decay`` (trainable parameters only).

    ``layer_decay < 1`` needs ``model.group_matcher()``; there is then one group per (layer,
    decay or not), else one decay and one no-decay group. Groups come in the order their first
    parameter has in ``model.parameters()``, so the optimizer state of a checkpoint matches.
    """
    if layer_decay < 1.0:
        groups = param_groups_layer_decay(
            model, weight_decay, no_weight_decay_list=no_weight_decay, layer_decay=layer_decay
        )
    else:
        groups = param_groups_weight_decay(
            model, weight_decay, no_weight_decay_list=no_weight_decay
        )
    for group in groups:
        group["lr"] = lr * group.pop("lr_scale", 1.0)
    position = {id(p): i for i, p in enumerate(model.parameters())}
    return sorted(groups, key=lambda g: position[id(g["params"][0])])


def adamw_warmup_cosine(
    groups: list[dict[str, Any]],
    lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: AdamW and the per-step warmup-cosine schedule
    (``min_lr`` is reached at ``total_steps``, as a fraction of ``lr`` for every group)."""
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    min_ratio = min_lr / lr if lr > 0 else 0.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
