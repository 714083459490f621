"""Where configs and the embedded demo archive live, for editable and wheel installs alike."""

from __future__ import annotations

from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def configs_dir() -> Path:
    """The ``configs/`` folder: the repo's own in a checkout, the wheel's copy otherwise."""
    in_repo = _REPO_ROOT / "configs"
    if in_repo.is_dir():
        return in_repo
    import geomed_mim

    return Path(geomed_mim.__file__).resolve().parent / "_configs"


def demo_data_dir() -> Path:
    """The demo archive shipped inside the ``geomed_mim`` package."""
    import geomed_mim

    return Path(geomed_mim.__file__).resolve().parent / "demo_data"
