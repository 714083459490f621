"""A run's files under its root: one log folder per invocation (CSV and TensorBoard together),
checkpoints in ``<root>/checkpoints`` unless a callback names its own folder."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from geomed_mim.tasks.run_dir import (
    next_log_version,
    place_checkpoints,
    run_loggers,
    run_root,
)


def test_next_version_follows_the_highest_taken_one(tmp_path):
    assert next_log_version(tmp_path / "new_root") == 0
    for name in ("version_0", "version_3", "version_x", "other"):
        (tmp_path / "logs" / name).mkdir(parents=True)
    assert next_log_version(tmp_path) == 4


def test_default_loggers_share_one_version_folder_under_the_root(tmp_path):
    csv, tb = run_loggers(None, tmp_path, 2)
    assert isinstance(csv, CSVLogger)
    assert isinstance(tb, TensorBoardLogger)
    assert csv.log_dir == tb.log_dir == str(tmp_path / "logs" / "version_2")
    assert run_loggers(True, tmp_path, 0)[0].log_dir == str(tmp_path / "logs" / "version_0")
    assert run_loggers(False, tmp_path, 0) is False


def test_configured_loggers_are_kept_and_get_the_shared_version(tmp_path):
    mine = CSVLogger(tmp_path / "elsewhere", name="x")
    pinned = TensorBoardLogger(tmp_path / "elsewhere", name="y", version=7)
    loggers = run_loggers([mine, pinned], tmp_path, 3)
    assert loggers == [mine, pinned]
    assert mine.log_dir == str(tmp_path / "elsewhere" / "x" / "version_3")
    assert pinned.version == 7  # an explicit version stands


def test_checkpoints_land_in_the_root_unless_a_callback_names_a_folder(tmp_path):
    root = tmp_path / "run"
    own = ModelCheckpoint(dirpath=tmp_path / "mine")
    unnamed = ModelCheckpoint(save_last=True)
    callbacks = place_checkpoints([unnamed, own, LearningRateMonitor()], root, None)
    assert unnamed.dirpath == os.path.realpath(root / "checkpoints")
    assert own.dirpath == os.path.realpath(tmp_path / "mine")
    assert len(callbacks) == 3  # none added when the config has one


def test_a_last_checkpoint_callback_is_added_when_the_config_has_none(tmp_path):
    (added,) = place_checkpoints([], tmp_path, None)
    assert isinstance(added, ModelCheckpoint)
    assert added.dirpath == os.path.realpath(tmp_path / "checkpoints")
    assert added.save_last
    assert place_checkpoints([], tmp_path, False) == []  # checkpointing turned off


def test_the_root_is_default_root_dir_or_the_working_directory(tmp_path, monkeypatch):
    assert run_root({"default_root_dir": "runs/x"}).as_posix() == "runs/x"
    monkeypatch.chdir(tmp_path)
    assert run_root({}) == tmp_path
