"""Faults of the output (a full disk, a file size limit, a read-only store) stop the build with
one line naming --output and the errno: exit status 74, no build.json, nothing quarantined for
them, and the same command resumes once the fault is gone. Real faults only: this process's file
size limit (RLIMIT_FSIZE, lowered for one command; Python ignores SIGXFSZ, so a write past it
fails with EFBIG) and, when running as root, a small tmpfs that fills up."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from data_pipelines.errors import EXIT_OUTPUT_ERROR
from geomed_mim.build_dataset import main

NOT_ROOT = "mounting a small tmpfs needs root"


@contextlib.contextmanager
def file_size_limit(limit_bytes: int) -> Iterator[None]:
    """Files this process writes may not grow past ``limit_bytes`` inside the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def run(
    args: list[str], capsys: pytest.CaptureFixture[str], limit: int | None = None
) -> tuple[int, str]:
    """(exit status, stderr) of the command, under a file size limit when ``limit`` is given."""
    limited = file_size_limit(limit) if limit else contextlib.nullcontext()
    with limited, contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, capsys.readouterr().err


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of stderr (the progress bar writes there too)."""
    return [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.startswith("error:")]


def assert_stopped_by_output_fault(code: int, stderr: str, out: Path, errno_name: str) -> None:
    assert code == EXIT_OUTPUT_ERROR, stderr
    assert "Traceback" not in stderr
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr
    assert errors[0].startswith(f"error: --output: writing {out} failed: ")
    assert f"[{errno_name}]" in errors[0]
    assert errors[0].endswith("re-run the same command to resume")
    assert not (out / "build.json").exists()
    assert not (out / "quarantine.jsonl").exists()
    assert "quarantined" not in stderr


def test_file_size_limit_stops_the_build_and_the_rerun_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every part's shard is larger than the limit: the first write fails with EFBIG. Without
    the fault handling the build would quarantine all five scenes as bad inputs."""
    out = tmp_path / "out"
    flags = ["--output", str(out), "--workers", "1"]
    assert_stopped_by_output_fault(*run(flags, capsys, limit=100_000), out, "EFBIG")
    assert not list((out / "parts").glob("*.parquet"))  # it stopped at the first part

    code, stderr = run(flags, capsys)
    assert code == 0, stderr
    record = json.loads((out / "build.json").read_text())
    assert record["parts"] == {"total": 5, "resumed": 0, "ran": 5}
    assert record["quarantined"] == []


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 700 KiB tmpfs: room for about two of the demo's five scenes."""
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_part_way_stops_the_build_and_the_rerun_resumes(
    small_tmpfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk fills after some scenes were committed by dask worker processes: ENOSPC comes
    back from a worker and stops the build; after making room the same command resumes the
    committed scenes."""
    out = small_tmpfs / "out"
    code, stderr = run(["--output", str(out), "--workers", "2"], capsys)
    assert_stopped_by_output_fault(code, stderr, out, "ENOSPC")
    committed = len(list((out / "parts").glob("*.parquet")))
    assert 1 <= committed < 5, stderr

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    code, stderr = run(["--output", str(out), "--workers", "1"], capsys)
    assert code == 0, stderr
    record = json.loads((out / "build.json").read_text())
    assert record["parts"] == {"total": 5, "resumed": committed, "ran": 5 - committed}
    assert record["quarantined"] == []
    assert (out / "quarantine.jsonl").read_text() == ""


def test_stats_on_an_unwritable_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``stats`` writes the statistics into the store: a write the file size limit refuses is
    one line naming --output and EFBIG; the store's metadata is left as it was."""
    out = tmp_path / "out"
    assert run(["--output", str(out), "--workers", "1"], capsys)[0] == 0
    store_meta = out / "store.zarr" / "zarr.json"
    before = store_meta.read_bytes()
    code, stderr = run(["stats", "--output", str(out)], capsys, limit=64)
    assert code == EXIT_OUTPUT_ERROR, stderr
    assert "Traceback" not in stderr
    (line,) = error_lines(stderr)
    assert line.startswith(f"error: --output: writing {out} failed: File too large [EFBIG]")
    assert store_meta.read_bytes() == before


def test_ct_build_stops_on_the_file_size_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CT builder writes its volumes through the same stage: EFBIG is one line, not a
    quarantined scan (resuming is the shared runner's, tested with the RS builds above)."""
    out = tmp_path / "ct"
    flags = ["--modality", "ct", "--input", "demo:ct/abdomen_3mm.nii.gz", "--labels", "none"]
    flags += ["--spacing", "3", "--output", str(out), "--workers", "1"]  # one small volume
    assert_stopped_by_output_fault(*run(flags, capsys, limit=100_000), out, "EFBIG")
    assert not list((out / "parts").glob("*.parquet"))
