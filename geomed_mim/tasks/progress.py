"""What a user sees while a model trains, and the summary when it is done.

On a terminal Lightning's progress bar shows the step, the loss and the validation figures. In a
log file (no terminal: batch jobs, containers, CI) the bar is off and :class:`TrainingProgress`
prints one line per epoch instead (and one every ``every_s`` seconds inside long epochs)::

    epoch 10/40  step 40  train/loss 0.71  val/loss 0.650 (predict-zeros 0.995, 0.65x)  231 images/s

Either way the run ends with a short summary: steps, time, throughput, the last and best
validation figures, and where the checkpoints and logs went. Only rank 0 prints; nothing here
calls a collective.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from geomed_mim.tasks.run_dir import shown

# the figures a line shows, in this order, when logged; True: higher is better
SHOWN_METRICS: dict[str, bool] = {
    "val/loss": False,
    "val/miou": True,
    "val/mdice": True,
    "val/accuracy": True,
}
TRAIN_LOSS = ("train/loss_epoch", "train/loss")
BASELINE = "val/baseline_loss"


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def scalar(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    value = float(value.item() if isinstance(value, torch.Tensor) else value)
    return None if math.isnan(value) else value


def batch_images(batch: Any) -> int:
    """Images in a batch: a dict's ``image`` tensor, else the first tensor found."""
    if isinstance(batch, Mapping) and isinstance(batch.get("image"), torch.Tensor):
        return int(batch["image"].shape[0])
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    return 0


class TrainingProgress(Callback):
    """Per-epoch lines (``print_epochs``: when there is no progress bar) and the final summary.

    Args:
        print_epochs: print one line per epoch (the CLI turns it on when stderr is no terminal).
        every_s: also print a line inside an epoch when this many seconds passed since the last.
    """

    def __init__(self, print_epochs: bool = True, every_s: float = 120.0) -> None:
        self.print_epochs = print_epochs
        self.every_s = every_s
        self.best: dict[str, tuple[float, int]] = {}
        self.last: dict[str, float] = {}
        self.baseline: float | None = None
        self._images = 0
        self._train_s = 0.0
        self._epoch_images = 0
        self._epoch_started = 0.0
        self._fit_started = 0.0
        self._last_line = 0.0
        self._start_step: int | None = None
        self._validated = False

    @staticmethod
    def emit(trainer: Trainer, line: str) -> None:
        if trainer.is_global_zero:
            print(line, file=sys.stdout, flush=True)

    # -- counting ----------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = self._last_line = time.perf_counter()
        self._start_step = None  # set when training starts (after a checkpoint is restored)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start_step = trainer.global_step  # a resumed run counts from where it resumed

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_images = 0
        self._epoch_started = time.perf_counter()
        self._validated = False

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._epoch_images += batch_images(batch) * trainer.world_size
        now = time.perf_counter()
        if not self.print_epochs:  # the progress bar shows it (images, not batches, per second)
            ips = self.throughput(now)
            pl_module.log("images/s", ips, prog_bar=True, logger=False, on_epoch=False)
        if self.print_epochs and self.every_s and now - self._last_line >= self.every_s:
            total = trainer.num_training_batches
            self.emit(trainer, self.line(trainer, f"{idx + 1}/{total} batches", now))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validated = True
        metrics = trainer.callback_metrics
        for key, higher in SHOWN_METRICS.items():
            value = scalar(metrics, key)
            if value is None:
                continue
            self.last[key] = value
            best = self.best.get(key)
            if best is None or (value > best[0] if higher else value < best[0]):
                self.best[key] = (value, trainer.current_epoch)
        self.baseline = scalar(metrics, BASELINE) or self.baseline

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        now = time.perf_counter()
        self._images += self._epoch_images
        self._train_s += now - self._epoch_started
        for key in TRAIN_LOSS:
            value = scalar(trainer.callback_metrics, key)
            if value is not None:
                self.last["train/loss"] = value
                break
        if self.print_epochs:
            max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 0
            epoch = f"epoch {trainer.current_epoch + 1}" + (f"/{max_epochs}" if max_epochs else "")
            self.emit(trainer, self.line(trainer, epoch, now))

    # -- lines -------------------------------------------------------------------------------
    def baseline_text(self, trainer: Trainer, loss: float) -> str:
        """``predict-zeros 0.995, 0.47x``: the trivial baseline and the loss as its multiple."""
        ratio = loss / max(self.baseline or 0.0, 1e-12)
        return f"{baseline_label(trainer)} {self.baseline:.3f}, {ratio:.2f}x"

    def throughput(self, now: float) -> float:
        seconds = self._train_s + max(now - self._epoch_started, 0.0)
        return (self._images + self._epoch_images) / max(seconds, 1e-9)

    def line(self, trainer: Trainer, where: str, now: float) -> str:
        self._last_line = now
        parts = [where, f"step {trainer.global_step}"]
        metrics = trainer.callback_metrics
        loss = next((v for k in TRAIN_LOSS if (v := scalar(metrics, k)) is not None), None)
        if loss is not None:
            parts.append(f"train/loss {loss:.3f}")
        if self._validated:
            for key in SHOWN_METRICS:
                value = scalar(metrics, key)
                if value is not None:
                    parts.append(f"{key} {value:.3f}")
                    if key == "val/loss" and self.baseline is not None:
                        parts[-1] += f" ({self.baseline_text(trainer, value)})"
        parts.append(f"{self.throughput(now):.0f} images/s")
        parts.append(format_duration(now - self._fit_started))
        return "  ".join(parts)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for line in self.summary(trainer, time.perf_counter()):
            self.emit(trainer, line)

    def summary(self, trainer: Trainer, now: float) -> list[str]:
        # no training start: the restored checkpoint had nothing left to train
        start = trainer.global_step if self._start_step is None else self._start_step
        steps = trainer.global_step - start
        resumed = f" (resumed at step {start})" if start else ""
        lines = [
            f"done: {steps} steps{resumed} in {format_duration(now - self._fit_started)}, "
            f"{self.throughput(now):.0f} images/s"
        ]
        if steps == 0 and start:
            lines[0] += (
                "; the checkpoint had already reached the end of training (a larger "
                "--trainer.max_epochs trains on, a new --trainer.default_root_dir starts anew)"
            )
        figures = []
        if "train/loss" in self.last:
            figures.append(f"train/loss {self.last['train/loss']:.3f}")
        for key in SHOWN_METRICS:
            if key in self.last:
                value, epoch = self.best[key]
                figures.append(f"{key} {self.last[key]:.3f} (best {value:.3f}, epoch {epoch + 1})")
        if self.baseline is not None:
            name = baseline_label(trainer)
            figures.append(f"{name} baseline {self.baseline:.3f}")
            if "val/loss" in self.last:
                ratio = self.last["val/loss"] / max(self.baseline, 1e-12)
                figures.append(f"val/loss / baseline {ratio:.2f}")
        if figures:
            lines.append("  last: " + "; ".join(figures))
        lines += [f"  {line}" for line in output_lines(trainer)]
        return lines


def baseline_label(trainer: Trainer) -> str:
    """The name the task gives its ``val/baseline_loss`` (``predict-zeros``, ``crop-mean``)."""
    module = getattr(trainer, "lightning_module", None)
    return str(getattr(module, "baseline_name", "baseline"))


def output_lines(trainer: Trainer) -> list[str]:
    """Where the run's checkpoints and logs are."""
    lines = []
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            names = sorted(p.name for p in Path(cb.dirpath).glob("*.ckpt"))
            listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            lines.append(f"checkpoints: {shown(cb.dirpath)} ({listed or 'none written'})")
    for logger in trainer.loggers:
        folder = getattr(logger, "log_dir", None)
        line = f"logs: {shown(folder)}" if folder else ""
        if line and Path(folder).is_dir() and line not in lines:
            lines.append(line)
    return lines
