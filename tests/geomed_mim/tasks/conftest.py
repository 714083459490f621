"""Fixtures for the training-task tests: a real CT store built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomed_mim.build_dataset import main as build_dataset


@pytest.fixture(scope="session")
def ct_demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded CT demo (two scans) built at 1.5 mm by the build command, in process."""
    out = tmp_path_factory.mktemp("ct_demo_store") / "store"
    args = ["--modality", "ct", "--input", "demo:ct", "--output", str(out)]
    assert build_dataset([*args, "--workers", "1", "--scheduler", "synchronous"]) == 0
    return out
