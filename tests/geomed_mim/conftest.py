"""Fixtures for the geomed_mim tests: a demo RS store built once per session."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, subprocess_env

__all__ = [
    "REPO_ROOT",
    "build_config_store",
    "build_printing",
    "build_store",
    "subprocess_env",
    "usage_error_line",
]


def build_store(*args: str) -> None:
    """Run the build command in this process (one worker, no dask cluster); the CLI's own
    subprocess runs are tested in tests/geomed_mim/test_build_dataset.py."""
    from geomed_mim.build_dataset import main as build_dataset

    assert build_dataset([*args, "--workers", "1", "--scheduler", "synchronous"]) == 0


def build_printing(*args: str) -> tuple[int, str]:
    """The build command run in this process on ``args`` as given: its exit code and what it
    printed."""
    from geomed_mim.build_dataset import main as build_dataset

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = build_dataset(list(args))
    return rc, printed.getvalue()


def build_config_store(
    tmp_path_factory: pytest.TempPathFactory, folder: str, config: str, *args: str
) -> Path:
    """``<new tmp folder>/store`` built from ``configs/data/<config>`` (extra CLI ``args``)."""
    out = tmp_path_factory.mktemp(folder) / "store"
    build_store("--config", str(REPO_ROOT / "configs/data" / config), "--output", str(out), *args)
    return out


def usage_error_line(main, args: list[str], capsys, alone: bool = True) -> str:
    """The one error line a command prints before exiting 2, with no traceback. ``alone``: it is
    the only line on stderr; otherwise the one ``error:`` line among others (warnings)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if (ln.strip() if alone else ln.startswith("error:"))]
    return line


@pytest.fixture
def caney(monkeypatch: pytest.MonkeyPatch):
    """pytorch-caney's SimMIM modules (SatVision-TOA's code), with its one CUDA assumption
    patched for the test: the attention moves a constant to ``logit_scale.get_device()``, which
    is -1 on the CPU."""
    import torch

    mim = pytest.importorskip("pytorch_caney.models.mim.mim")
    monkeypatch.setattr(torch.Tensor, "get_device", lambda self: self.device)
    return mim


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded demo archive built into a store (80 tiles of 13 bands, 32x32)."""
    out = tmp_path_factory.mktemp("demo_store") / "store"
    build_store("--output", str(out))
    return out


@pytest.fixture(scope="session")
def lulc_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The labeled Sentinel-2 demo store (5 scenes, 80 tiles, land-cover mask)."""
    return build_config_store(tmp_path_factory, "finetune_lulc", "demo_lulc.yaml")


@pytest.fixture(scope="session")
def ct_organs_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The labeled CT demo store (one abdominal case, liver / spleen / kidney)."""
    return build_config_store(tmp_path_factory, "ct_organs", "demo_ct_organs.yaml")
