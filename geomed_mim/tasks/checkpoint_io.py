"""Checkpoint writing that a crash, a kill or a full disk can never leave half-written.

A write that fails (no space, quota, read-only) raises an
:class:`~data_pipelines.errors.OutputWriteError` naming the checkpoint; the previous checkpoint at
that path is untouched, and the command line reports it in one line
(:func:`geomed_mim.usage.usage_errors_exit`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from data_pipelines.errors import OutputWriteError, output_writes
from data_pipelines.store import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local paths: serialize to memory, write a temp file in the same folder, fsync, rename.

    Remote (fsspec) paths fall back to Lightning's transaction-based writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        try:
            if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
                with output_writes():
                    return super().save_checkpoint(checkpoint, path, storage_options)
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            atomic_write_bytes(path, buffer.getvalue())
        except OutputWriteError as e:  # name the checkpoint, not the temp file beside it
            raise OutputWriteError(e.errno, e.strerror, str(path)) from e
        return None
