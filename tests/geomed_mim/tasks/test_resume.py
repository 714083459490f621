"""Automatic resume picks up only this run's own ``last.ckpt``; anything else is refused in one
line naming the folder and the two ways out."""

from __future__ import annotations

import os
import time

import pytest
import torch

from geomed_mim.tasks.resume import hparam_differences, last_checkpoint, resolve_resume
from geomed_mim.usage import UsageError

HPARAMS = {
    "_class_path": "geomed_mim.tasks.segmentation.SegmentationTask",
    "init_from": None,
    "lr": 1e-3,
    "encoder": {"embed_dim": 192, "depth": 4},
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


def save_checkpoint(path, hparams, step=12, epoch=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": hparams}
    torch.save({**ckpt, "global_step": step, "epoch": epoch}, path)
    return path


def test_no_checkpoint_and_null_start_a_new_run(tmp_path):
    folder = tmp_path / "checkpoints"
    assert resolve_resume("last", [folder], HPARAMS)[0] is None
    save_checkpoint(folder / "last.ckpt", HPARAMS)
    path, line = resolve_resume(None, [folder], HPARAMS)
    assert path is None
    assert line.startswith("new run")


def test_the_same_run_resumes_and_says_so(tmp_path):
    ckpt = save_checkpoint(tmp_path / "checkpoints" / "last.ckpt", HPARAMS)
    # tuples and lists, the instantiator entry: the same run
    current = {**HPARAMS, "_instantiator": "other", "encoder": {"depth": 4, "embed_dim": 192}}
    path, line = resolve_resume("last", [tmp_path / "checkpoints"], current)
    assert path == str(ckpt)
    assert "resuming" in line
    assert "step 12, epoch 3" in line
    assert "--ckpt_path null" in line
    assert "\n" not in line


def test_another_runs_checkpoint_is_a_one_line_error_naming_both_fixes(tmp_path):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder / "last.ckpt", HPARAMS)
    pretrained = {**HPARAMS, "init_from": "runs/demo_cpu/checkpoints/last.ckpt"}
    with pytest.raises(UsageError) as err:
        resolve_resume("last", [folder], pretrained)
    message = str(err.value)
    assert "\n" not in message
    assert str(folder) in message or "checkpoints" in message
    assert "init_from: null → " in message
    assert "--ckpt_path null" in message
    assert "--trainer.default_root_dir" in message


def test_what_a_run_shows_may_change_between_commands():
    saved = {**HPARAMS, "preview_every_n_steps": 40, "preview_samples": 4}
    assert hparam_differences(saved, {**saved, "preview_every_n_steps": 0}) == []
    assert hparam_differences(saved, {**saved, "lr": 2e-3}) == ["lr: 0.001 → 0.002"]


def test_the_newest_last_checkpoint_wins(tmp_path):
    old = save_checkpoint(tmp_path / "last.ckpt", HPARAMS)
    new = save_checkpoint(tmp_path / "last-v1.ckpt", HPARAMS)
    stamp = time.time()
    os.utime(old, (stamp - 60, stamp - 60))
    assert last_checkpoint([tmp_path]) == new
    (tmp_path / "epoch=1.ckpt").write_bytes(b"")  # not a last checkpoint
    assert last_checkpoint([tmp_path]) == new


def test_a_named_checkpoint_must_exist_and_be_a_checkpoint(tmp_path):
    with pytest.raises(UsageError, match=r"--ckpt_path .*missing\.ckpt: no such file"):
        resolve_resume(str(tmp_path / "missing.ckpt"), [], HPARAMS)
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(UsageError, match="not a checkpoint this project wrote"):
        resolve_resume(str(junk), [], HPARAMS)
    named = save_checkpoint(tmp_path / "epoch=3.ckpt", {**HPARAMS, "lr": 5.0})
    path, line = resolve_resume(str(named), [], HPARAMS)  # by hand: the user's choice
    assert path == str(named)
    assert "as --ckpt_path asks" in line
