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


def test_a_checkpoint_the_file_size_limit_refuses_leaves_the_previous_one(tmp_path):
    """A real EFBIG part-way through the write (this process's file size limit, lowered for
    the one write; Python ignores SIGXFSZ, so the write fails instead of killing it): an
    OutputWriteError naming the checkpoint, the previous checkpoint intact, no temp file."""
    import errno
    import resource

    from data_pipelines.errors import OutputWriteError

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(OutputWriteError) as refused:
            io.save_checkpoint({"step": torch.tensor(2), "weights": torch.zeros(100_000)}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert refused.value.errno == errno.EFBIG
    assert refused.value.filename == str(path)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_failed_checkpoint_write_ends_the_command_with_one_line(capsys):
    import errno

    from data_pipelines.errors import EXIT_OUTPUT_ERROR, OutputWriteError
    from geomed_mim.usage import usage_errors_exit

    with pytest.raises(SystemExit) as stopped, usage_errors_exit():
        raise OutputWriteError(errno.ENOSPC, "No space left on device", "/runs/a/last.ckpt")
    assert stopped.value.code == EXIT_OUTPUT_ERROR
    assert capsys.readouterr().err == (
        "error: --trainer.default_root_dir: writing checkpoint failed: No space left on device "
        "[ENOSPC] (/runs/a/last.ckpt); free space or fix the output's filesystem (or choose "
        "another --trainer.default_root_dir), then re-run the same command to resume\n"
    )
