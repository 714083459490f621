"""Checkpoint writing that a crash or kill can never leave half-written."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from data_pipelines.store import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local paths: serialize to memory, write a temp file in the same folder, fsync, rename.

    Remote (fsspec) paths fall back to Lightning's transaction-based writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        return None
