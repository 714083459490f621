"""One deep run of the protocol: an encoder (pretrained or scratch), probed or fine-tuned on a
label budget with one seed for a fixed number of optimizer steps, then scored on the
validation split with the state that scored best on the select split (held-out training
locations), or the last state when there is none.

It is the fine-tuning task as users run it (:class:`~geomed_mim.tasks.segmentation.
SegmentationTask` on the same data module), with a plain Lightning trainer that writes nothing
(no checkpoints, no logs): the protocol keeps only the scores.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import (
    Callback,
    LightningDataModule,
    LightningModule,
    Trainer,
    seed_everything,
)

from geomed_mim.models.swin_sources import source_family
from geomed_mim.tasks.segmentation import SegmentationTask

MODES = {  # mode → the task's arguments that make it (for a ViT encoder)
    "probe": {"freeze_encoder": True, "head": "linear"},
    "attentive": {"freeze_encoder": True, "head": "attentive"},  # a light block, then linear
    "finetune": {"freeze_encoder": False, "head": "unetr"},
}
# a Swin encoder's full decoder (its family's first head): the FPN on Swin V2, SwinUNETR's in 3-D
SWIN_MODES = {
    "swinv2": {"probe": {"head": "linear"}, "finetune": {"head": "fpn"}},
    "swin3d": {"finetune": {"head": "unetr"}},
}


def mode_arguments(mode: str, family: str) -> dict[str, Any]:
    """The task's arguments of ``mode`` for an encoder of ``family`` (see :data:`MODES`)."""
    if family == "vit":
        return dict(MODES[mode])
    return {**MODES[mode], **SWIN_MODES[family][mode]}


@functools.lru_cache(maxsize=64)
def family_of(source: str) -> str:
    """``vit`` for ``scratch``, else the family the checkpoint or folder records (read once per
    source: a checkpoint is loaded whole to find it)."""
    return "vit" if source == SCRATCH else source_family(source)


def family_modes(family: str) -> list[str]:
    """The modes an encoder of ``family`` runs."""
    return list(MODES) if family == "vit" else list(SWIN_MODES[family])


SCRATCH = "scratch"


@dataclass(frozen=True)
class DeepRun:
    encoder: str  # "scratch", a pretraining checkpoint or an export folder
    mode: str  # "probe" | "attentive" | "finetune"
    budget: float
    seed: int
    steps: int  # optimizer steps, the same at every budget
    check_every: int  # steps between scores on the select split


class KeepBest(Callback):
    """Scores on the select split (Lightning's validation during fit) keep the state with the
    best ``metric`` (the first of equals), and its step; a frozen encoder stays in eval mode
    after each check, as in probing's epochs."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.best = -math.inf
        self.step = 0
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[tuple[int, float]] = []
        self.listening = True  # off for the final score on the validation split

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self.listening:
            return
        value = float(trainer.callback_metrics.get(f"val/{self.metric}", math.nan))
        self.history.append((trainer.global_step, value))
        if value > self.best:  # NaN never wins
            self.best, self.step = value, trainer.global_step
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in
                          pl_module.state_dict().items()}  # fmt: skip

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, i: int) -> None:
        # Lightning puts the whole module back in train mode after each check
        if getattr(pl_module, "freeze_encoder", False):
            pl_module.net.encoder.eval()


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """No "GPU available" banner or "max_steps reached" line for each of the many trainers."""
    banner = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = banner.level
    banner.setLevel(logging.WARNING)
    try:
        yield
    finally:
        banner.setLevel(level)


@contextmanager
def validating_on(datamodule: Any, dataset: Any) -> Iterator[None]:
    """The data module's validation loader serves ``dataset`` meanwhile (the select split
    during fit), keeping its batch transform, which Lightning runs through the data module."""
    saved = datamodule.val_dataset
    datamodule.val_dataset = dataset
    try:
        yield
    finally:
        datamodule.val_dataset = saved


def trainer_for(
    run: DeepRun, accelerator: str, keep: KeepBest | None, callbacks: Sequence[Callback] = ()
) -> Trainer:
    """A trainer that writes nothing and stops after ``run.steps`` optimizer steps, scoring
    the select split every ``run.check_every`` steps when there is one."""
    return Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=run.steps,
        max_epochs=-1,  # steps decide, however few batches a budget holds
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=min(run.check_every, run.steps) if keep else None,
        check_val_every_n_epoch=None if keep else 1,
        callbacks=[*callbacks, *([keep] if keep else [])],
        default_root_dir=None,
    )


def fit_and_select(
    run: DeepRun,
    task: LightningModule,
    datamodule: LightningDataModule,
    accelerator: str,
    metric: str = "miou",
    callbacks: Sequence[Callback] = (),
) -> tuple[Trainer, KeepBest | None]:
    """Train ``task`` for ``run.steps`` optimizer steps; with a select split
    (``datamodule.select_dataset``), score it every ``run.check_every`` steps and at the end and
    load the state with the best ``metric`` into ``task``. Returns the trainer and the
    :class:`KeepBest` (None without a select split)."""
    select = getattr(datamodule, "select_dataset", None)
    keep = KeepBest(metric) if select is not None else None
    trainer = trainer_for(run, accelerator, keep, callbacks)
    with validating_on(datamodule, select):
        trainer.fit(task, datamodule=datamodule)
        if keep is not None and (not keep.history or keep.history[-1][0] != trainer.global_step):
            trainer.validate(task, datamodule=datamodule, verbose=False)  # the last state
    if keep is not None and keep.state is not None:
        keep.listening = False  # from here on, validation is the validation split
        task.load_state_dict(keep.state)
    return trainer, keep


def run_deep(
    run: DeepRun, datamodule: LightningDataModule, task_args: dict[str, Any], accelerator: str
) -> dict[str, float]:
    """Train ``run`` on ``datamodule`` (already holding the run's budget and seed) with
    :func:`fit_and_select` and return the kept state's validation scores (``miou``, ``mdice``,
    ``accuracy``, ``iou_<class>``, ``dice_<class>``) and ``step``, the step it is from."""
    seed_everything(run.seed, workers=True, verbose=False)
    init_from = None if run.encoder == SCRATCH else run.encoder
    task = SegmentationTask.for_data(
        datamodule,
        init_from=init_from,
        **{**task_args, **mode_arguments(run.mode, family_of(run.encoder))},
    )
    with quiet_lightning():
        trainer, keep = fit_and_select(run, task, datamodule, accelerator)
        (metrics,) = trainer.validate(task, datamodule=datamodule, verbose=False)
    scores = {
        k.removeprefix("val/"): float(v.item() if isinstance(v, torch.Tensor) else v)
        for k, v in metrics.items()
        if k.startswith("val/") and k != "val/loss"
    }
    kept = keep is not None and keep.state is not None
    return {**scores, "step": keep.step if kept else trainer.global_step}
