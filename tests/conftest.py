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
