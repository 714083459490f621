"""Atomic checkpoint writes (the training CLI installs them: tests/geomed_mim/test_cli.py)."""

from __future__ import annotations

import os

import pytest
import torch

from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint survives
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temp debris
