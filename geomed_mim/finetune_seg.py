"""Segmentation fine-tuning CLI: ``python -m geomed_mim.finetune_seg fit|validate|test|predict
--config configs/finetune/X.yaml``.

A LightningCLI like ``geomed_mim.pretrain``: the data module's band count, image size, spatial
dims, band names, class table and normalization are linked into the task, so the head always
matches the labeled store. ``predict`` writes GeoTIFF/NIfTI class maps and PNG overlays for
``--data.init_args.predict_inputs`` into ``--data.init_args.predict_output`` (use ``--ckpt_path``).
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO
from geomed_mim.tasks.distributed import ClusterCLI
from geomed_mim.tasks.finetune_seg import SegmentationTask

LINKED_FIELDS = ("in_chans", "img_size", "spatial_dims", "bands", "classes", "mean", "std")


class FinetuneSegCLI(ClusterCLI):  # torchrun launch settings, preemption checkpoint, resume
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for field in LINKED_FIELDS:
            parser.link_arguments(
                f"data.{field}", f"model.init_args.{field}", apply_on="instantiate"
            )

    def instantiate_trainer(self, **kwargs) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_float32_matmul_precision("high")
    FinetuneSegCLI(
        SegmentationTask,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
