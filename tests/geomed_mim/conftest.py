"""Fixtures for the geomed_mim tests: a demo RS store built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict[str, str]:
    """The environment of a child process that imports this checkout first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    return env


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """Environment for subprocesses (CLI runs) that import this checkout."""
    return subprocess_env()


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
