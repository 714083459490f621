"""Where the shipped configs (sensor profiles, class tables, data configs) live.

In a checkout that is the repository's own ``configs/``; an installed wheel carries a copy
inside this package (``data_pipelines/_configs``), so profiles resolve by name either way.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def configs_dir() -> Path:
    """The ``configs/`` folder: the repo's own in a checkout, the wheel's copy otherwise."""
    in_repo = _PACKAGE_DIR.parent / "configs"
    if in_repo.is_dir():
        return in_repo
    return _PACKAGE_DIR / "_configs"
