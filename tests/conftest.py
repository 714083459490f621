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


def share_the_cores_between_workers() -> None:
    """Under pytest-xdist, each worker (and the CLIs it starts) takes its share of the cores
    instead of all of them: two workers on two cores each running two-thread torch would
    contend for every core. A thread count the user set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


share_the_cores_between_workers()


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
