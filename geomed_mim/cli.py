"""The training command line: ``pretrain`` and ``finetune_seg`` are one LightningCLI.

``python -m geomed_mim.pretrain fit --config configs/pretrain/X.yaml`` and
``python -m geomed_mim.finetune_seg fit|validate|test|predict --config configs/finetune/X.yaml``
(also the ``geomed-pretrain`` console script) differ only in the task class and in which fields
of the data module are linked into it, so a model always matches the store it trains on. Both:

* read YAML with ``class_path``/``init_args`` for the task and the data module;
* under ``torchrun`` take ``devices`` and ``num_nodes`` from the launcher
  (:mod:`geomed_mim.tasks.distributed`), one config serving any number of processes and nodes;
* add :class:`~geomed_mim.tasks.preemption.PreemptionCheckpoint` (SIGTERM/SIGUSR1 → checkpoint,
  exit ``128 + signal``) unless the config has one;
* make ``fit --ckpt_path`` default to ``last``: re-running the same command resumes from the
  newest ``last*.ckpt`` of the run's ``ModelCheckpoint`` folder (preemption, requeue, elastic
  restart); with none there, Lightning warns once and starts fresh. ``--ckpt_path null`` always
  starts fresh, ``--ckpt_path PATH`` resumes from PATH;
* write checkpoints atomically (temp file, fsync, rename:
  :class:`~geomed_mim.tasks.checkpoint_io.AtomicCheckpointIO`).

``finetune_seg predict`` writes GeoTIFF/NIfTI class maps and PNG overlays for
``--data.init_args.predict_inputs`` into ``--data.init_args.predict_output`` (use ``--ckpt_path``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO
from geomed_mim.tasks.distributed import torchrun_trainer_overrides
from geomed_mim.tasks.preemption import PreemptionCheckpoint
from geomed_mim.tasks.pretraining import MIMPretrainTask
from geomed_mim.tasks.segmentation import DATA_FIELDS as SEGMENTATION_DATA_FIELDS
from geomed_mim.tasks.segmentation import SegmentationTask


class TrainingCLI(LightningCLI):
    """LightningCLI for training on a laptop, under torchrun, SLURM or Kubernetes (see the module
    docstring); ``linked_fields`` of the data module become the task's init arguments."""

    linked_fields: tuple[str, ...] = ()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for field in self.linked_fields:
            parser.link_arguments(
                f"data.{field}", f"model.init_args.{field}", apply_on="instantiate"
            )

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
        # plain TorchCheckpointIO (the default) → our atomic writer; keep any custom one a user set
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


class PretrainCLI(TrainingCLI):
    linked_fields = ("in_chans", "img_size", "spatial_dims")


class FinetuneSegCLI(TrainingCLI):
    linked_fields = SEGMENTATION_DATA_FIELDS


def run(
    cli_class: type[TrainingCLI],
    task_class: type[LightningModule],
    args: list[str] | None = None,
    **cli_kwargs: Any,
) -> TrainingCLI:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs; no effect on CPU
    return cli_class(
        task_class,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        **cli_kwargs,
    )


def pretrain_main(args: list[str] | None = None) -> None:
    """``python -m geomed_mim.pretrain``: the task builds its own optimizer and schedule."""
    run(PretrainCLI, MIMPretrainTask, args, auto_configure_optimizers=False)


def finetune_seg_main(args: list[str] | None = None) -> None:
    """``python -m geomed_mim.finetune_seg``."""
    run(FinetuneSegCLI, SegmentationTask, args)
