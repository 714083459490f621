"""Shared test fixtures.

Tests that read the project's real sample data use ``shared_data``; on a clone without
``../shared/data`` they skip with the reason, and the core suite still runs from the repo alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GEOMED_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


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
def shared_data() -> Path:
    """``../shared/data`` (or $GEOMED_SHARED_DATA); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"sample data not found at {SHARED_DATA} (set GEOMED_SHARED_DATA to run this)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The demo archive embedded in the package (always present)."""
    from geomed_mim.resources import demo_data_dir

    return demo_data_dir()
