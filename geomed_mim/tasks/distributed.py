"""What every training CLI (pretrain, finetune_seg) needs to run the same way on a laptop, under
``torchrun`` (one node, several nodes, elastic) and in the cluster launchers of ``docker/``.

:class:`ClusterCLI` is a ``LightningCLI`` that

* under ``torchrun`` (``TORCHELASTIC_RUN_ID`` set) takes ``devices`` and ``num_nodes`` from the
  launcher (``LOCAL_WORLD_SIZE``, ``WORLD_SIZE / LOCAL_WORLD_SIZE``), so one config serves one
  process and any number of nodes, and pins Lightning's cluster environment to torchelastic:
  inside a SLURM allocation Lightning would otherwise pick up ``SLURM_NTASKS`` (one task per
  node in ``docker/slurm/pretrain.sbatch``) as the world size;
* adds :class:`geomed_mim.tasks.preemption.PreemptionCheckpoint` unless the config has one;
* makes ``fit --ckpt_path`` default to ``last``: re-running the same command resumes from the
  newest ``last*.ckpt`` of the run's ``ModelCheckpoint`` folder (preemption, requeue, elastic
  restart); with none there, Lightning warns once and starts fresh. ``--ckpt_path null`` always
  starts fresh, ``--ckpt_path PATH`` resumes from PATH.

Data sharding, global batch and resume position: :mod:`geomed_mim.data.sharding`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lightning.fabric.plugins.environments import ClusterEnvironment, TorchElasticEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from geomed_mim.tasks.preemption import PreemptionCheckpoint

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


class ClusterCLI(LightningCLI):
    """LightningCLI for training under torchrun / SLURM / Kubernetes (see the module docstring)."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "fit":
            parser.set_defaults(ckpt_path="last")  # the same command resumes
        return parser

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={}) or {}
        kwargs = {**torchrun_trainer_overrides(config), **kwargs}
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(cb, PreemptionCheckpoint) for cb in trainer.callbacks):
            trainer.callbacks.append(PreemptionCheckpoint())
        return trainer
