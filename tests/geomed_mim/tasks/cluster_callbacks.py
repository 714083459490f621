"""Test-only callbacks loaded by the CLI runs of test_distributed.py (class_path in a config).

Not collected by pytest (no test_ prefix); the child processes import it through PYTHONPATH.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from geomed_mim.tasks.preemption import PreemptionCheckpoint


class SaveRankParameters(Callback):
    """Every rank writes its own parameters to ``<dirpath>/rank<r>.pt`` when training ends, and
    (with ``start_dirpath``) those it started from to ``<start_dirpath>/rank<r>.pt``."""

    def __init__(self, dirpath: str, start_dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.start_dirpath = start_dirpath

    @staticmethod
    def save(trainer, pl_module, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        state["__global_step__"] = torch.tensor(trainer.global_step)
        torch.save(state, Path(folder) / f"rank{trainer.global_rank}.pt")

    def on_train_start(self, trainer, pl_module) -> None:
        if self.start_dirpath:
            self.save(trainer, pl_module, self.start_dirpath)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer, pl_module, self.dirpath)


class WaitForSignalAtStep(Callback):
    """At the end of optimizer step ``step`` every rank writes ``<dirpath>/at_step.rank<r>`` and
    waits (up to ``timeout`` s) until its PreemptionCheckpoint has received a signal, which the
    test sends from outside (to the torchrun agent). Makes "killed after k steps" deterministic.
    """

    def __init__(self, step: int, dirpath: str, timeout: float = 120.0) -> None:
        self.step = step
        self.dirpath = dirpath
        self.timeout = timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        (pre,) = [cb for cb in trainer.callbacks if isinstance(cb, PreemptionCheckpoint)]
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        (Path(self.dirpath) / f"at_step.rank{trainer.global_rank}").write_text(str(self.step))
        deadline = time.monotonic() + self.timeout
        while not pre.received and time.monotonic() < deadline:
            time.sleep(0.05)
