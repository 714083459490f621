"""Where a training run writes: everything under the run's root folder.

The root is ``trainer.default_root_dir`` (the shipped configs set ``runs/<config name>``)::

    <root>/checkpoints/last.ckpt            every ModelCheckpoint without its own dirpath
    <root>/logs/version_<N>/                one folder per invocation (a resumed run adds one):
        metrics.csv, events.out.tfevents.*  CSV and TensorBoard logs side by side
        config.yaml, hparams.yaml           the full configuration, the task's arguments
        previews/step_*.png                 reconstruction previews (pretraining)
    <root>/predictions/                     ``finetune_seg predict`` output (by default)

so a new root is a new run, and nothing of one run lands in another's folder. Configs name no
checkpoint or log folder of their own: the command line puts them here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

CHECKPOINTS_DIRNAME = "checkpoints"
LOGS_DIRNAME = "logs"
PREDICTIONS_DIRNAME = "predictions"
_VERSION = re.compile(r"^version_(\d+)$")


def run_root(trainer_config: dict[str, Any]) -> Path:
    """The run's root folder: ``default_root_dir``, else the working directory (Lightning's)."""
    return Path(trainer_config.get("default_root_dir") or os.getcwd())


def checkpoint_dir(root: Path) -> Path:
    return root / CHECKPOINTS_DIRNAME


def next_log_version(root: Path) -> int:
    """The first ``logs/version_<N>`` not taken yet (0 for a new root)."""
    logs = root / LOGS_DIRNAME
    taken = [int(m.group(1)) for p in logs.glob("version_*") if (m := _VERSION.match(p.name))]
    return max(taken, default=-1) + 1


def run_loggers(logger: Any, root: Path, version: int) -> Any:
    """The ``Trainer(logger=...)`` value: unset (None) or ``True`` → CSV + TensorBoard in
    ``<root>/logs/version_<version>``; ``False`` stays off; loggers a user configured are kept,
    and the CSV/TensorBoard ones without an explicit version share ``version``, so that they
    write one folder."""
    if logger is None or logger is True:
        return [
            CSVLogger(root, name=LOGS_DIRNAME, version=version),
            TensorBoardLogger(root, name=LOGS_DIRNAME, version=version, default_hp_metric=False),
        ]
    if logger is False:
        return False
    loggers = list(logger) if isinstance(logger, list | tuple) else [logger]
    for each in loggers:
        if isinstance(each, CSVLogger | TensorBoardLogger) and each._version is None:
            each._version = version
    return loggers


def place_checkpoints(callbacks: list[Any], root: Path, checkpointing: bool | None) -> list[Any]:
    """Callbacks with every ``ModelCheckpoint`` that names no folder writing to
    ``<root>/checkpoints`` (a ``last.ckpt`` one is added when checkpointing is on and the config
    has none; Lightning's default would write into the logger's version folder)."""
    callbacks = list(callbacks)
    checkpoints = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    folder = os.path.realpath(checkpoint_dir(root))  # as ModelCheckpoint(dirpath=...) keeps it
    for cb in checkpoints:
        if cb.dirpath is None:
            cb.dirpath = folder
    if not checkpoints and checkpointing is not False:
        callbacks.append(ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0))
    return callbacks


def shown(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it (for messages)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
