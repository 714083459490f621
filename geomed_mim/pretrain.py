"""Pretraining CLI: ``python -m geomed_mim.pretrain fit --config configs/pretrain/X.yaml``.

A LightningCLI (YAML with class_path/init_args for the model task and the data module). The data
module's band count, image size and spatial dims are linked into the task, so a model always
matches the store it trains on. Checkpoints are written atomically (temp file + rename).
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO
from geomed_mim.tasks.distributed import ClusterCLI
from geomed_mim.tasks.pretrain import MIMPretrainTask


class PretrainCLI(ClusterCLI):  # torchrun launch settings, preemption checkpoint
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for field in ("in_chans", "img_size", "spatial_dims"):
            parser.link_arguments(
                f"data.{field}", f"model.init_args.{field}", apply_on="instantiate"
            )

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # plain TorchCheckpointIO (the default) → our atomic writer; keep any custom one a user set
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs; no effect on CPU
    PretrainCLI(
        MIMPretrainTask,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
