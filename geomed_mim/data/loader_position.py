"""Where training is in the epoch, kept with the checkpoint through Lightning's public hooks.

A :class:`~geomed_mim.data.sharding.ResumableDataLoader` resumes mid-epoch from ``(epoch, batch)``:
the epoch and the number of the epoch's batches the training loop has finished. The loader cannot
count those itself (Lightning and the workers fetch ahead), and Lightning hands a loader its saved
state only when it builds the train loader after the checkpoint is restored, which a task that
reads ``trainer.estimated_stepping_batches`` in ``configure_optimizers`` (every warmup-cosine
schedule) defeats: the loader is built first, and a resumed run would replay the epoch's first
batches.

:class:`LoaderPosition` closes both gaps with public surface only:

* ``on_train_batch_start`` receives the batch's index in the epoch (resumed runs included), so
  ``batch_idx + 1`` is the count finished by the time any checkpoint of that step is written;
* as a callback its ``state_dict`` is saved in every checkpoint and its ``load_state_dict`` runs
  before ``configure_optimizers``, so the position is waiting when the loader is built, however
  early; :func:`~geomed_mim.data.sharding.sharded_loader` hands it to the loader it builds.

The callback has to be in the trainer when the checkpoint is restored:
``PreemptionCheckpoint.setup`` adds it (the training CLI always has that callback), and
``sharded_loader`` adds it to a trainer that lacks it (a fresh run then saves positions;
Lightning warns on resume if a checkpoint holds a position the trainer has no callback for).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger(__name__)


class PositionedLoader(Protocol):
    def state_dict(self) -> dict[str, int]: ...
    def load_state_dict(self, state: dict[str, int]) -> None: ...


class LoaderPosition(Callback):
    """Counts the train batches finished in the epoch; saves and restores the train loader's
    ``(epoch, batch)`` with the checkpoint."""

    def __init__(self) -> None:
        self.batches_done = 0
        self.loader: PositionedLoader | None = None
        self.restored: dict[str, int] | None = None  # from a checkpoint, not yet given a loader

    def attach(self, loader: PositionedLoader) -> None:
        """Follow ``loader`` (the train loader); a restored position is applied to it now."""
        self.loader = loader
        if self.restored is not None:
            loader.load_state_dict(self.restored)
            self.batches_done = int(self.restored["batch"])
            self.restored = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.batches_done = 0  # not called when a run resumes mid-epoch

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        done = batch_idx + 1  # finished when this step's checkpoints are written
        if done >= trainer.num_training_batches and self.loader is not None:
            # the epoch's last batch (``limit_train_batches`` may end an epoch early): a
            # checkpoint written from here on resumes at the next epoch's start
            done = len(self.loader)
        self.batches_done = done

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.restored is not None:  # say so rather than silently replay the epoch's start
            log.warning(
                "the checkpoint holds a train-loader position (epoch %d, batch %d) but the train "
                "loader is not a resumable sharded loader: the epoch restarts from its first batch",
                self.restored["epoch"],
                self.restored["batch"],
            )
            self.restored = None

    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self.loader.state_dict()} if self.loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict.get("train_loader")


def ensure_loader_position(trainer: Any) -> LoaderPosition | None:
    """The trainer's :class:`LoaderPosition`, added to its callbacks if it has none; ``None``
    without a trainer."""
    if trainer is None:
        return None
    for callback in trainer.callbacks:
        if isinstance(callback, LoaderPosition):
            return callback
    position = LoaderPosition()
    trainer.callbacks.append(position)
    return position
