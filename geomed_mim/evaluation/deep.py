"""One deep run of the protocol: an encoder (pretrained or scratch), probed or fine-tuned on a
label budget with one seed, then scored on the validation split.

It is the fine-tuning task as users run it (:class:`~geomed_mim.tasks.segmentation.
SegmentationTask` on the same data module), with a plain Lightning trainer that writes nothing
(no checkpoints, no logs): the protocol keeps only the scores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything

from geomed_mim.tasks.segmentation import SegmentationTask

MODES = {  # mode → the task's arguments that make it
    "probe": {"freeze_encoder": True, "head": "linear"},
    "finetune": {"freeze_encoder": False, "head": "unetr"},
}
SCRATCH = "scratch"


@dataclass(frozen=True)
class DeepRun:
    encoder: str  # "scratch", a pretraining checkpoint or an export folder
    mode: str  # "probe" | "finetune"
    budget: float
    seed: int
    epochs: int


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """No "GPU available" banner or "max_epochs reached" line for each of the many trainers."""
    banner = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = banner.level
    banner.setLevel(logging.WARNING)
    try:
        yield
    finally:
        banner.setLevel(level)


def run_deep(
    run: DeepRun, datamodule: LightningDataModule, task_args: dict[str, Any], accelerator: str
) -> dict[str, float]:
    """Train ``run`` on ``datamodule`` (already holding the run's budget and seed) and return
    its validation scores: ``miou``, ``mdice``, ``accuracy``, ``iou_<class>``, ``dice_<class>``."""
    seed_everything(run.seed, workers=True, verbose=False)
    init_from = None if run.encoder == SCRATCH else run.encoder
    task = SegmentationTask.for_data(
        datamodule, init_from=init_from, **{**task_args, **MODES[run.mode]}
    )
    with quiet_lightning():
        trainer = Trainer(
            accelerator=accelerator,
            devices=1,
            max_epochs=run.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            check_val_every_n_epoch=run.epochs,  # validate once, at the end
            default_root_dir=None,
        )
        trainer.fit(task, datamodule=datamodule)
        (metrics,) = trainer.validate(task, datamodule=datamodule, verbose=False)
    return {
        k.removeprefix("val/"): float(v.item() if isinstance(v, torch.Tensor) else v)
        for k, v in metrics.items()
        if k.startswith("val/") and k != "val/loss"
    }
