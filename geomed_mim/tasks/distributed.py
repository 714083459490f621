"""Following a ``torchrun`` launch (one node, several nodes, elastic): what the training CLI
(:mod:`geomed_mim.cli`) changes in the trainer's configuration.

Under ``torchrun`` (``TORCHELASTIC_RUN_ID`` set) the trainer takes ``devices`` and ``num_nodes``
from the launcher (``LOCAL_WORLD_SIZE``, ``WORLD_SIZE / LOCAL_WORLD_SIZE``), so one config serves
one process and any number of nodes, and Lightning's cluster environment is pinned to
torchelastic: inside a SLURM allocation Lightning would otherwise pick up ``SLURM_NTASKS`` (one
task per node in ``docker/slurm/pretrain.sbatch``) as the world size.

Data sharding, global batch and resume position: :mod:`geomed_mim.data.sharding`.
Giant encoders: :class:`BlockFSDPStrategy`, FSDP sharded per transformer block.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lightning.fabric.plugins.environments import ClusterEnvironment, TorchElasticEnvironment
from lightning.pytorch.strategies import FSDPStrategy
from torch.nn import Module

log = logging.getLogger(__name__)


def torchrun_world() -> tuple[int, int] | None:
    """(processes on this node, nodes) when launched by torchrun, else None."""
    if not os.environ.get("TORCHELASTIC_RUN_ID"):
        return None
    local = int(os.environ["LOCAL_WORLD_SIZE"])
    world = int(os.environ["WORLD_SIZE"])
    if world % local:
        raise ValueError(
            f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={local}: start the same "
            "--nproc-per-node on every node"
        )
    return local, world // local


def torchrun_trainer_overrides(trainer_config: dict[str, Any]) -> dict[str, Any]:
    """Trainer arguments that make a config follow the torchrun launch (empty otherwise)."""
    launch = torchrun_world()
    if launch is None:
        return {}
    devices, nodes = launch
    overrides: dict[str, Any] = {"devices": devices, "num_nodes": nodes}
    for key, value in overrides.items():
        if trainer_config.get(key) not in (value, "auto", None) and int(os.environ["RANK"]) == 0:
            log.info("torchrun launch: trainer.%s %s → %s", key, trainer_config.get(key), value)
    plugins = trainer_config.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
    if not any(isinstance(p, ClusterEnvironment) for p in plugins):
        overrides["plugins"] = [*plugins, TorchElasticEnvironment()]
    return overrides


def transformer_block_classes() -> set[type[Module]]:
    """The block classes of every encoder here: FSDP's unit of sharding, one block each."""
    from timm.models.swin_transformer_v2 import SwinTransformerV2Block
    from timm.models.vision_transformer import Block

    return {Block, SwinTransformerV2Block}


class BlockFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP with each transformer block (ViT, Swin V2) wrapped as its own unit, so
    only one block's full parameters are gathered at a time. A class path a YAML config can
    name: a set of module classes does not travel through a config file. Any FSDPStrategy
    argument passes through (``sharding_strategy``, ``state_dict_type``, ...); activation
    checkpointing is the model's (``grad_checkpointing``), not FSDP's."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("auto_wrap_policy", transformer_block_classes())
        super().__init__(**kwargs)
