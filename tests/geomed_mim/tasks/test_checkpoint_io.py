"""Atomic checkpoint writes, and the CLI installs them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO

REPO_ROOT = Path(__file__).resolve().parents[3]


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


def test_cli_uses_atomic_checkpoint_io(demo_store):
    from lightning.pytorch import LightningDataModule

    from geomed_mim.pretrain import PretrainCLI, main  # noqa: F401  (main: the entry point)
    from geomed_mim.tasks.pretrain import MIMPretrainTask

    cli = PretrainCLI(
        MIMPretrainTask,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        auto_configure_optimizers=False,
        args=[
            "--config",
            str(REPO_ROOT / "configs/pretrain/demo_cpu.yaml"),
            "--data.init_args.store",
            str(demo_store),
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
        ],
    )
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert cli.model.model.encoder.in_chans == 13  # linked from the store's band list
