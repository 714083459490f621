"""The build runner on a small modality of its own: resume, lock, quarantine, fragments, stop."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from data_pipelines import parallel
from data_pipelines.build import BuildTask, OutputLock, assign_split, run_build
from data_pipelines.errors import BuildConfigError, BuildLockedError
from data_pipelines.store.write import PartWriter, write_fragment
from tests.build_hooks import (
    STOP_AFTER_PARTS_ENV,
    STOPPED_EXIT_CODE,
    hooks_from_env,
    stop_after_parts,
)

PARTS = ["p0", "p1", "p2", "p3", "p4"]


@dataclass(frozen=True)
class ToyJob:
    out_dir: str
    part: str
    samples: int
    fail: str | None = None


def toy_task(job: ToyJob) -> dict[str, Any]:
    """Writes ``samples`` rows [part number, i] to ``tiles/<part>`` and commits its fragment."""
    if job.fail:
        raise ValueError(f"{job.fail}\nsecond line of the message")
    writer = PartWriter(job.out_dir, "tiles", job.part, (2,), np.int32)
    rows = []
    for i in range(job.samples):
        index = writer.append(np.array([int(job.part[1:]), i], dtype=np.int32))
        rows.append({"id": f"{job.part}/{i}", "array": f"tiles/{job.part}", "index": index})
    writer.close()
    counts = {"samples_written": job.samples}
    write_fragment(job.out_dir, job.part, rows, {"counts": counts, "timings": {"total": 0.5}})
    return {"counts": counts}


def _finalize(out: Path, table: pa.Table, summaries: list[dict]) -> tuple[pa.Table, dict]:
    return table, {"finalized_parts": len(summaries)}


def _tasks(out: Path, fail: dict[str, str] | None = None) -> list[BuildTask]:
    fail = fail or {}
    return [
        BuildTask(part=p, source=f"in/{p}.raw", payload=ToyJob(str(out), p, i + 1, fail.get(p)))
        for i, p in enumerate(PARTS)
    ]


def _build(out: Path, tasks: list[BuildTask] | None = None, **kwargs: Any):
    options = {"settings": {"toy": 1}, "scheduler": parallel.SYNCHRONOUS, **kwargs}
    return run_build(
        out_dir=out,
        tasks=tasks if tasks is not None else _tasks(out),
        task_fn=toy_task,
        group="tiles",
        store_attrs={"modality": "toy"},
        config={"what": "toy"},
        finalize=_finalize,
        unit="part",
        **options,
    )


def _arrays(out: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(out / "store.zarr" / "tiles"), mode="r")
    return {name: group[name][:] for name in sorted(group.array_keys())}


def test_build_writes_manifest_record_and_arrays(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = _build(out)
    manifest = pq.read_table(out / "manifest.parquet")
    # fragments concatenated in task order, whatever order the tasks finished in
    assert manifest.column("id").to_pylist() == [f"{p}/{i}" for k, p in enumerate(PARTS)
                                                 for i in range(k + 1)]  # fmt: skip
    assert report.samples_written == 15 == report.manifest_rows
    record = json.loads((out / "build.json").read_text())
    assert record["counts"] == {"finalized_parts": 5, "parts_done": 5, "parts_quarantined": 0,
                                "samples_written": 15}  # fmt: skip
    assert record["parts"] == {"total": 5, "resumed": 0, "ran": 5}
    assert record["config"] == {"what": "toy"}
    assert record["timings_s"]["task_total_sum"] == 2.5
    assert (out / "quarantine.jsonl").read_text() == ""
    assert _arrays(out)["p2"].tolist() == [[2, 0], [2, 1], [2, 2]]
    assert zarr.open_group(str(out / "store.zarr"), mode="r").attrs["modality"] == "toy"


def test_resume_runs_only_parts_without_fragments_and_rewrites_debris(tmp_path: Path) -> None:
    reference, out = tmp_path / "reference", tmp_path / "out"
    _build(reference)
    _build(out)
    # a killed run: two parts never committed; one of them left a half-written array behind
    for part in ("p1", "p3"):
        (out / "parts" / f"{part}.parquet").unlink()
    PartWriter(out, "tiles", "p3", (2,), np.int32).append(np.array([9, 9], dtype=np.int32))
    (out / "manifest.parquet").unlink()

    report = _build(out)
    assert (report.resumed_parts, report.ran_parts) == (3, 2)
    assert json.loads((out / "build.json").read_text())["parts"] == {"total": 5, "resumed": 3,
                                                                      "ran": 2}  # fmt: skip
    assert pq.read_table(out / "manifest.parquet").equals(
        pq.read_table(reference / "manifest.parquet")
    )
    got, want = _arrays(out), _arrays(reference)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_failed_task_is_quarantined_with_one_line_and_its_array_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = _build(out, _tasks(out, fail={"p1": "cannot decode"}))
    assert [q.to_json() for q in report.quarantined] == [
        {"source": "in/p1.raw", "part": "p1", "reason": "cannot decode", "error": "ValueError"}
    ]
    lines = (out / "quarantine.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [q.to_json() for q in report.quarantined]
    assert "p1" not in _arrays(out)
    assert not (out / "parts" / "p1.parquet").exists()
    assert report.counts["parts_quarantined"] == 1
    assert report.counts["parts_done"] == 4
    # a re-run retries the quarantined input (and only it)
    report = _build(out)
    assert (report.resumed_parts, report.ran_parts, report.quarantined) == (4, 1, [])
    assert _arrays(out)["p1"].tolist() == [[1, 0], [1, 1]]


def test_a_locked_output_is_refused_with_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputLock(out), pytest.raises(BuildLockedError, match=rf"pid {os.getpid()}"):
        _build(out)
    assert not (out / "store.zarr").exists()
    _build(out)  # released: the next build runs


def test_other_settings_refuse_to_resume_until_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(out)
    with pytest.raises(BuildConfigError, match=r"other settings \(toy: 1 -> 2\).*--overwrite"):
        _build(out, settings={"toy": 2})
    report = _build(out, settings={"toy": 2}, overwrite=True)
    assert (report.resumed_parts, report.ran_parts) == (0, 5)


def test_a_store_of_unknown_origin_is_not_mixed_into(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "store.zarr").mkdir(parents=True)
    with pytest.raises(BuildConfigError, match="not made by this tool version"):
        _build(out)


def _build_with_stop(out: Path, stop_after: str) -> None:
    _build(out, on_part_committed=stop_after_parts(int(stop_after)))


def test_stop_after_parts_exits_hard_and_the_rerun_equals_an_uninterrupted_build(
    tmp_path: Path,
) -> None:
    reference, out = tmp_path / "reference", tmp_path / "out"
    _build(reference)
    child = multiprocessing.get_context("fork").Process(target=_build_with_stop, args=(out, "2"))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == STOPPED_EXIT_CODE
    assert sorted(p.name for p in (out / "parts").glob("p*.parquet")) == ["p0.parquet",
                                                                          "p1.parquet"]  # fmt: skip
    assert not (out / "manifest.parquet").exists()
    assert not (out / "build.json").exists()

    report = _build(out)
    assert (report.resumed_parts, report.ran_parts) == (2, 3)
    assert pq.read_table(out / "manifest.parquet").equals(
        pq.read_table(reference / "manifest.parquet")
    )
    assert _arrays(out).keys() == _arrays(reference).keys()


def test_stop_after_parts_must_be_a_positive_count(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(STOP_AFTER_PARTS_ENV, "two")
    with pytest.raises(BuildConfigError, match=STOP_AFTER_PARTS_ENV):
        _build(tmp_path / "out", on_part_committed=hooks_from_env())


def test_split_is_a_stable_hash_of_the_key() -> None:
    keys = [f"scene_{i}" for i in range(2000)]
    splits = [assign_split(k, 0.25) for k in keys]
    assert splits == [assign_split(k, 0.25) for k in keys]
    assert 0.2 < splits.count("val") / len(keys) < 0.3
    assert {assign_split(k, 0.0) for k in keys} == {"train"}
    assert {assign_split(k, 1.0) for k in keys} == {"val"}
