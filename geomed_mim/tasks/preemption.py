"""Preemption: SIGTERM / SIGUSR1 → an atomic checkpoint at the next step boundary, then exit.

Clusters warn a job before they kill it: Kubernetes and Docker send SIGTERM (then SIGKILL after
the grace period), SLURM sends the signal chosen with ``#SBATCH --signal`` (SIGUSR1 in our
sbatch script) before the time limit, ``torchrun`` forwards SIGTERM to its workers and kills
them 30 s later. :class:`PreemptionCheckpoint` turns either signal into:

1. the handler only records the signal (no I/O, no collective inside a signal handler);
2. at the end of the next optimizer step, all ranks agree (one all-reduce of the signal number),
   ``last.ckpt`` is written through the trainer, i.e. atomically (temp file, fsync, rename,
   :class:`geomed_mim.tasks.checkpoint_io.AtomicCheckpointIO`), with the data loader's position
   (:mod:`geomed_mim.data.loader_position`);
3. the process exits without a traceback, with status ``128 + signal`` (143 for SIGTERM, 138 for
   SIGUSR1), which is what a process killed by that signal reports: schedulers (Kubernetes'
   PyTorchJob ``restartPolicy: ExitCode``, torchrun, SLURM requeue) treat it as "interrupted,
   retry", never as "finished".

Restarting the same command (``fit`` defaults to ``--ckpt_path last``, see
:mod:`geomed_mim.cli`) resumes from that checkpoint: the same optimizer step, learning rate, epoch
and position in the epoch.

Lightning's own SIGTERM handling (in ``Trainer``) is replaced while training runs: it issues a
``broadcast`` from inside the signal handler, which can interleave with DDP's gradient
all-reduces on another rank, and it does not save anything.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from geomed_mim.data.loader_position import ensure_loader_position

log = logging.getLogger(__name__)


def claim_as_last(trainer: Trainer, path: Path) -> None:
    """Tell the ModelCheckpoint that saves ``last.ckpt`` in ``path``'s folder that ``path`` is
    its newest last checkpoint. Its state is saved inside the checkpoint: a run resumed from it
    then overwrites ``last.ckpt`` instead of leaving it stale beside a new ``last-v1.ckpt``."""
    folder = path.parent.resolve()
    for cb in trainer.checkpoint_callbacks:
        saves_last_here = (
            isinstance(cb, ModelCheckpoint)
            and cb.save_last
            and cb.dirpath is not None
            and Path(cb.dirpath).resolve() == folder
        )
        if saves_last_here:
            cb.last_model_path = str(path)


class PreemptionCheckpoint(Callback):
    """Save ``last.ckpt`` and exit when the job receives one of ``signals``.

    Args:
        signals: signal names to handle.
        dirpath: where to write; default: the first ``ModelCheckpoint``'s folder (so that
            ``ckpt_path: last`` finds it), else ``<default_root_dir>/checkpoints``.
        filename: checkpoint file name.
        exit_code: process exit status after saving; default ``128 + signal number``.
        check_every_n_steps: how often (optimizer steps) ranks agree on whether a signal came;
            one tiny all-reduce each time.
    """

    def __init__(
        self,
        signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
        dirpath: str | None = None,
        filename: str = "last.ckpt",
        exit_code: int | None = None,
        check_every_n_steps: int = 1,
    ) -> None:
        self.signals = [signal.Signals[name] if isinstance(name, str) else name for name in signals]
        self.dirpath = dirpath
        self.filename = filename
        self.exit_code = exit_code
        self.check_every_n_steps = max(int(check_every_n_steps), 1)
        self.received: int = 0
        self._previous: dict[int, Any] = {}

    # -- signal handling -----------------------------------------------------------------------
    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            self.received = int(signum)
        # a plain write: logging from a signal handler can deadlock on the logging lock
        os.write(2, f"[pid {os.getpid()}] got signal {signum}: checkpoint at step end\n".encode())

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionCheckpoint: not in the main thread, signals not handled")
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # the loader position must be in the trainer before the checkpoint is restored
        ensure_loader_position(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after Trainer registered its own handlers (right before the fit loop), so ours win
        self.received = 0
        self._install()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    # -- the step boundary ---------------------------------------------------------------------
    def checkpoint_path(self, trainer: Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath) / self.filename
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return Path(cb.dirpath) / self.filename
        return Path(trainer.default_root_dir) / "checkpoints" / self.filename

    def _at_step_boundary(self, trainer: Trainer, batch_idx: int) -> bool:
        accumulate = trainer.accumulate_grad_batches
        last = batch_idx + 1 >= trainer.num_training_batches
        if not ((batch_idx + 1) % accumulate == 0 or last):
            return False  # mid-accumulation: the partial gradient would be lost
        return trainer.global_step % self.check_every_n_steps == 0 or last

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._at_step_boundary(trainer, batch_idx):
            return
        flag = torch.tensor([self.received], dtype=torch.int64, device=pl_module.device)
        signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if not signum:
            return
        path = self.checkpoint_path(trainer)
        if trainer.is_global_zero:
            log.warning(
                "signal %s: saving %s at step %d before exiting",
                signal.Signals(signum).name,
                path,
                trainer.global_step,
            )
        claim_as_last(trainer, path)
        trainer.save_checkpoint(path)  # atomic (AtomicCheckpointIO); barrier inside
        code = self.exit_code if self.exit_code is not None else 128 + signum
        if trainer.is_global_zero:
            log.warning("checkpoint written; exiting with status %d (resume: same command)", code)
        raise SIGTERMException(code)
