"""A small CT store built from the embedded demo (always present) for the loader tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ct_demo_store(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two demo scans (with labels) plus a byte copy of one, built at 1.5 mm; all train."""
    from data_pipelines.ct.config import CTBuildConfig
    from data_pipelines.ct.pipeline import build_ct

    src = tmp_path_factory.mktemp("ct_demo_in")
    for f in (demo_data / "ct").glob("*.nii.gz"):
        (src / f.name).symlink_to(f)
    shutil.copy(demo_data / "ct" / "abdomen_3mm.nii.gz", src / "copy_of_abdomen.nii.gz")
    out = tmp_path_factory.mktemp("ct_demo_store") / "store"
    report = build_ct(CTBuildConfig(input=str(src), output=str(out), val_fraction=0.0))
    assert not report.quarantined
    return out
