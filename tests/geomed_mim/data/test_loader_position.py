"""LoaderPosition: the train loader's position travels with the callback's own state."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
from torch.utils.data import Dataset

from geomed_mim.data.loader_position import LoaderPosition, ensure_loader_position
from geomed_mim.data.sharding import sharded_loader


class Numbers(Dataset):
    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> dict:
        return {"index": torch.tensor(i)}


def test_a_trainer_gets_one_position_callback():
    trainer = SimpleNamespace(callbacks=[])
    first = ensure_loader_position(trainer)
    assert isinstance(first, LoaderPosition)
    assert ensure_loader_position(trainer) is first
    assert trainer.callbacks == [first]
    assert ensure_loader_position(None) is None


def test_the_saved_position_resumes_a_loader_built_later():
    trainer = SimpleNamespace(callbacks=[], world_size=1, global_rank=0, num_training_batches=6)
    loader = sharded_loader(Numbers(), 4, trainer=trainer, seed=3)
    loader.sampler.set_epoch(2)
    full = [b["index"].tolist() for b in loader]
    position = ensure_loader_position(trainer)
    position.on_train_batch_start(trainer, None, None, batch_idx=1)  # batches 0 and 1 done
    state = position.state_dict()
    assert state == {"train_loader": {"epoch": 2, "batch": 2}}

    resumed = SimpleNamespace(callbacks=[], world_size=1, global_rank=0)
    ensure_loader_position(resumed).load_state_dict(state)  # restored before the loader exists
    again = sharded_loader(Numbers(), 4, trainer=resumed, seed=3)
    assert [b["index"].tolist() for b in again] == full[2:]
    assert ensure_loader_position(resumed).batches_done == 2


def test_a_position_no_loader_took_is_reported(caplog):
    position = LoaderPosition()
    position.load_state_dict({"train_loader": {"epoch": 1, "batch": 5}})
    with caplog.at_level(logging.WARNING):
        position.on_train_start(SimpleNamespace(), None)
    assert "restarts from its first batch" in caplog.text


def test_an_epoch_ended_early_resumes_at_the_next_epoch():
    """With ``limit_train_batches`` an epoch ends before the sampler's last batch: a checkpoint
    of its last step must resume at the next epoch's start, not skip batches of that epoch."""
    trainer = SimpleNamespace(callbacks=[], world_size=1, global_rank=0, num_training_batches=2)
    loader = sharded_loader(Numbers(), 4, trainer=trainer, seed=3)
    loader.sampler.set_epoch(4)
    position = ensure_loader_position(trainer)
    position.on_train_batch_start(trainer, None, None, batch_idx=0)
    assert position.state_dict() == {"train_loader": {"epoch": 4, "batch": 1}}
    position.on_train_batch_start(trainer, None, None, batch_idx=1)  # the limit's last batch
    assert position.state_dict() == {"train_loader": {"epoch": 5, "batch": 0}}
