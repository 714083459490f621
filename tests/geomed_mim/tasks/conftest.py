"""Fixtures for the training-task tests: a real CT store built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.geomed_mim.conftest import build_store


@pytest.fixture(scope="session")
def ct_demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded CT demo (two scans) built at 1.5 mm by the build command, in process."""
    out = tmp_path_factory.mktemp("ct_demo_store") / "store"
    build_store("--modality", "ct", "--input", "demo:ct", "--output", str(out))
    return out
