"""Fixtures for the geomed_mim tests: a demo RS store built once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, subprocess_env

__all__ = ["REPO_ROOT", "subprocess_env"]


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded demo archive built into a store (80 tiles of 13 bands, 32x32)."""
    out = tmp_path_factory.mktemp("demo_store") / "store"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "geomed_mim.build_dataset",
            "--output",
            str(out),
            "--workers",
            "1",
            "--scheduler",
            "synchronous",
        ],
        check=True,
        cwd=tmp_path_factory.getbasetemp(),
        env=subprocess_env(),
        capture_output=True,
    )
    return out
