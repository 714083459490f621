"""Faults of the output (a full disk, a file size limit, a read-only store) stop the build with
one line naming --output and the errno: exit status 74, no build.json, nothing quarantined for
them, and the same command resumes once the fault is gone. Real faults only: a per-process file
size limit (RLIMIT_FSIZE, so a write raises EFBIG) and, when running as root, a small tmpfs."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from data_pipelines.errors import EXIT_OUTPUT_ERROR
from tests.conftest import subprocess_env

BUILD = [sys.executable, "-m", "geomed_mim.build_dataset"]
NOT_ROOT = "mounting a small tmpfs needs root"


def file_size_limit(limit_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn``: files the child writes may not grow past ``limit_bytes``; a write
    beyond it fails with EFBIG instead of killing the process (SIGXFSZ ignored)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))

    return apply


def run(args: list[str], preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*BUILD, *args],
        env={**subprocess_env(), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec,
    )


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of stderr (the progress bar writes there too)."""
    return [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.startswith("error:")]


def assert_stopped_by_output_fault(
    proc: subprocess.CompletedProcess, out: Path, errno_name: str
) -> None:
    assert proc.returncode == EXIT_OUTPUT_ERROR, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"error: --output: writing {out} failed: ")
    assert f"[{errno_name}]" in errors[0]
    assert errors[0].endswith("re-run the same command to resume")
    assert not (out / "build.json").exists()
    assert not (out / "quarantine.jsonl").exists()
    assert "quarantined" not in proc.stderr


def test_file_size_limit_stops_the_build_and_the_rerun_completes(tmp_path: Path) -> None:
    """Every part's shard is larger than the limit: the first write fails with EFBIG. Without
    the fault handling the build would quarantine all five scenes as bad inputs."""
    out = tmp_path / "out"
    limited = run(["--output", str(out), "--workers", "1"], file_size_limit(100_000))
    assert_stopped_by_output_fault(limited, out, "EFBIG")
    assert not list((out / "parts").glob("*.parquet"))  # it stopped at the first part

    again = run(["--output", str(out), "--workers", "1"])
    assert again.returncode == 0, again.stderr
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


def test_full_disk_part_way_stops_the_build_and_the_rerun_resumes(small_tmpfs: Path) -> None:
    """The disk fills after some scenes were committed (dask workers write them): ENOSPC stops
    the build; after making room the same command resumes the committed scenes."""
    out = small_tmpfs / "out"
    full = run(["--output", str(out), "--workers", "2"])
    assert_stopped_by_output_fault(full, out, "ENOSPC")
    committed = len(list((out / "parts").glob("*.parquet")))
    assert 1 <= committed < 5, full.stderr

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    again = run(["--output", str(out), "--workers", "1"])
    assert again.returncode == 0, again.stderr
    record = json.loads((out / "build.json").read_text())
    assert record["parts"] == {"total": 5, "resumed": committed, "ran": 5 - committed}
    assert record["quarantined"] == []
    assert (out / "quarantine.jsonl").read_text() == ""


def test_stats_on_an_unwritable_store_is_one_line(tmp_path: Path) -> None:
    """``stats`` writes the statistics into the store: a write the file size limit refuses is
    one line naming --output and EFBIG; the store's statistics are left as they were."""
    out = tmp_path / "out"
    assert run(["--output", str(out), "--workers", "1"]).returncode == 0
    store_meta = out / "store.zarr" / "zarr.json"
    before = store_meta.read_bytes()
    proc = run(["stats", "--output", str(out)], file_size_limit(64))
    assert proc.returncode == EXIT_OUTPUT_ERROR, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"error: --output: writing {out} failed: File too large [EFBIG]")
    assert store_meta.read_bytes() == before
