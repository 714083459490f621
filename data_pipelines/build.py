"""The build runner shared by every modality: lock, resume, run tasks, quarantine, record.

A modality (``rs.pipeline``, ``ct.pipeline``) supplies a list of tasks and a module-level task
function; the runner decides which tasks still have to run, runs them where ``parallel`` says,
sets failures aside with a one-line reason, assembles the manifest from the parts' fragments
and writes ``build.json``. Re-running the same command after a crash or a kill finishes the
rest and gives the same manifest as an uninterrupted build.

The stages of :func:`run_build`: :func:`prepare_output` (settings check, store group) →
:func:`run_pending` (tasks, quarantine) → :func:`collect_fragments` (manifest rows and counts
of every finished part) → ``finalize`` (the modality's archive-wide steps) →
:func:`write_records` (manifest, quarantine list, build record).

A caller may pass ``on_part_committed``, called with the number of parts this run has committed
so far right after each commit (progress reporting; the crash and interrupt tests end or pause
the process there, while the build is known to be mid-way).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from data_pipelines import parallel
from data_pipelines.counts import (
    EXCLUDED,
    SAMPLES_WRITTEN,
    SCENES_SMALLER_THAN_TILE,
    BuildCounts,
    Count,
    units_done,
    units_quarantined,
)
from data_pipelines.errors import (
    BuildConfigError,
    BuildLockedError,
    OutputWriteError,
    first_line,
    output_writes,
)
from data_pipelines.store.layout import (
    BUILD_RECORD_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    PARTS_DIRNAME,
    PREVIEW_NAME,
    QUARANTINE_NAME,
    SETTINGS_NAME,
    STORE_DIRNAME,
    fragment_path,
)
from data_pipelines.store.write import (
    atomic_write_bytes,
    atomic_write_json,
    delete_part_array,
    dir_size,
    open_root,
    read_fragment,
    write_manifest,
)

# called with the count of parts this run has committed, right after each commit
PartCommitted = Callable[[int], None]


def assign_split(key: str, val_fraction: float) -> str:
    """Deterministic train/val split by a hash of ``key`` (a scene, case or patient id), so all
    samples of one key land on the same side."""
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


@dataclass(frozen=True)
class BuildTask:
    part: str  # output array name under ``group`` and fragment name
    source: str  # input path(s), for the quarantine record
    payload: Any  # picklable argument of the task function


@dataclass
class Quarantined:
    """An input set aside: its quarantine.jsonl line, in this field order."""

    source: str  # the input path(s)
    part: str
    reason: str  # one line
    error: str  # the error's type name

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def reason_kind(why: str) -> str:
    """The kind of a reason, for counting: its text before any parenthesized detail."""
    return why.split(" (", 1)[0]


def ignored_by_reason(ignored: list[tuple[str, str]]) -> dict[str, int]:
    """How many files were ignored for each kind of reason, most frequent first."""
    counts = Counter(reason_kind(why) for _, why in ignored)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


@dataclass
class BuildReport:
    out_dir: Path
    counts: BuildCounts
    quarantined: list[Quarantined]
    ignored: list[tuple[str, str]]
    seconds: float
    output_bytes: int
    manifest_rows: int
    resumed_parts: int
    ran_parts: int
    scheduler: str
    extra: dict[str, Any] = field(default_factory=dict)
    total_parts: int = 0  # inputs planned (finished earlier, run now, or quarantined)

    @property
    def samples_written(self) -> int:
        return self.counts.total(SAMPLES_WRITTEN)

    def why_nothing_written(self) -> str | None:
        """One line saying why the build wrote no sample; None when it wrote some."""
        if self.samples_written > 0:
            return None
        if self.total_parts == 0:
            if self.ignored:
                kinds = describe_counts(ignored_by_reason(self.ignored))
                return f"no usable input: {len(self.ignored)} file(s) ignored ({kinds})"
            return "no input found under --input"
        if len(self.quarantined) == self.total_parts:
            first = self.quarantined[0]
            return (
                f"all {self.total_parts} input(s) were quarantined (e.g. {first.source}: "
                f"{first.reason}); see quarantine.jsonl"
            )
        excluded = self.counts.by_reason(EXCLUDED)
        parts = []
        if excluded:
            parts.append(
                f"all {sum(excluded.values())} tiles were excluded ({describe_counts(excluded)})"
            )
        if smaller := self.counts.total(SCENES_SMALLER_THAN_TILE):
            parts.append(f"{smaller} scene(s) smaller than one tile")
        if self.quarantined:
            parts.append(f"{len(self.quarantined)} of {self.total_parts} input(s) quarantined")
        return "; ".join(parts) or "no input produced a sample"


def package_versions() -> dict[str, str]:
    names = ["geomed_mim", "numpy", "rasterio", "zarr", "dask", "distributed", "pyarrow", "torch"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    try:
        import rasterio

        out["gdal"] = rasterio.__gdal_version__
    except Exception:  # GDAL version is informative only
        pass
    return out


class OutputLock:
    """An advisory lock on the output folder, released when the process ends (even on kill)."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise BuildLockedError(
                f"--output: {self.path.parent} is being written by another build (pid {holder}); "
                f"wait for it to finish or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def reset_output(out_dir: Path) -> None:
    """Remove what a previous build wrote (only our own files and folders)."""
    for name in (STORE_DIRNAME, PARTS_DIRNAME):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in (MANIFEST_NAME, BUILD_RECORD_NAME, QUARANTINE_NAME, PREVIEW_NAME):
        (out_dir / name).unlink(missing_ok=True)


def check_settings(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Resume only a build made with the same settings; otherwise say how to proceed."""
    path = out_dir / PARTS_DIRNAME / SETTINGS_NAME
    if overwrite:
        reset_output(out_dir)
    elif path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(
            k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k)
        )
        if changed:
            details = ", ".join(f"{k}: {previous.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise BuildConfigError(
                f"--output: {out_dir} holds a build made with other settings ({details}); "
                f"re-run with the same settings to resume, pass --overwrite to start again, "
                f"or choose another --output"
            )
    elif (out_dir / STORE_DIRNAME).exists():
        raise BuildConfigError(
            f"--output: {out_dir} already holds a store that was not made by this tool version; "
            f"pass --overwrite or choose another --output"
        )
    atomic_write_json(path, settings)


# -- the stages of a build ----------------------------------------------------------------------


def prepare_output(
    out_dir: Path,
    settings: dict[str, Any],
    overwrite: bool,
    groups: tuple[str, ...],
    store_attrs: dict[str, Any],
) -> None:
    """Check that ``out_dir`` may be (re)used, create the store's groups, record its attributes."""
    check_settings(out_dir, settings, overwrite)
    root = open_root(out_dir, groups=groups)
    root.attrs.update(store_attrs)


def run_pending(
    out_dir: Path,
    pending: list[BuildTask],
    total: int,
    task_fn: Callable[[Any], dict[str, Any]],
    groups: tuple[str, ...],
    scheduler: str,
    workers: int,
    unit: str,
    on_part_committed: PartCommitted | None = None,
) -> list[Quarantined]:
    """Run the tasks not finished yet; a failed task's arrays are removed and it is quarantined.

    An :class:`OutputWriteError` (the output could not be written) is no fault of the task's input:
    it is raised at once, which shuts the workers down; committed parts stay for a re-run.
    Returns the quarantined tasks sorted by source (completion order is not deterministic).
    """
    quarantined: list[Quarantined] = []
    counts = BuildCounts()
    committed = 0
    bar = tqdm(
        total=total,
        initial=total - len(pending),
        desc=f"building {out_dir.name}",
        unit=unit,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    results = parallel.map_unordered(
        task_fn, [t.payload for t in pending], scheduler=scheduler, workers=workers
    )
    # closing: an interrupt (Ctrl-C) shuts the workers down before it is reported
    with bar, contextlib.closing(results):
        for i, result in results:
            task = pending[i]
            if isinstance(result, BaseException):
                for g in groups:
                    delete_part_array(out_dir, g, task.part)
                if isinstance(result, OutputWriteError):
                    raise result
                error_type = getattr(result, "error_type", type(result).__name__)
                q = Quarantined(task.source, task.part, first_line(result), error_type)
                quarantined.append(q)
                bar.write(f"quarantined {task.source}: {q.reason}")
            else:
                counts.update(BuildCounts.from_json(result.get("counts", {})))
                bar.set_postfix(samples=counts.total(SAMPLES_WRITTEN), refresh=False)
                committed += 1
                if on_part_committed is not None:
                    on_part_committed(committed)
            bar.update(1)
    return sorted(quarantined, key=lambda q: q.source)


def collect_fragments(
    out_dir: Path, tasks: list[BuildTask]
) -> tuple[pa.Table, list[dict[str, Any]], BuildCounts, Counter]:
    """The manifest rows, summaries, counts and task timings of every finished part, resumed
    or not, in task order."""
    tables, summaries, counts, timings = [], [], BuildCounts(), Counter()
    for t in tasks:
        frag = read_fragment(out_dir, t.part)
        if frag is None:
            continue
        table, summary = frag
        if table.num_columns:
            tables.append(table)
        summaries.append(summary)
        counts.update(BuildCounts.from_json(summary.get("counts", {})))
        timings.update(summary.get("timings", {}))
    manifest = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    return manifest, summaries, counts, timings


def write_records(
    report: BuildReport,
    manifest: pa.Table,
    config: dict[str, Any],
    total: int,
    run_seconds: float,
    timings: Counter,
) -> None:
    """Write the manifest, the quarantine list and ``build.json`` (each atomically)."""
    out_dir, seconds, counts = report.out_dir, report.seconds, report.counts
    write_manifest(out_dir, manifest)
    atomic_write_bytes(
        out_dir / QUARANTINE_NAME,
        "".join(json.dumps(q.to_json()) + "\n" for q in report.quarantined).encode(),
    )
    atomic_write_json(
        out_dir / BUILD_RECORD_NAME,
        {
            "config": config,
            "versions": package_versions(),
            "counts": counts.to_json(),
            "quarantined": [q.to_json() for q in report.quarantined],
            "ignored_files": [{"path": p, "why": w} for p, w in report.ignored],
            "ignored_by_reason": ignored_by_reason(report.ignored),
            "parts": {"total": total, "resumed": report.resumed_parts, "ran": report.ran_parts},
            "scheduler": report.scheduler,
            "timings_s": {
                "total": round(seconds, 3),
                "tasks": round(run_seconds, 3),
                **{f"task_{k}_sum": round(v, 3) for k, v in sorted(timings.items())},
            },
            "throughput": {
                "samples_per_s": round(counts.total(SAMPLES_WRITTEN) / max(seconds, 1e-9), 2),
                "output_mb_per_s": round(report.output_bytes / 2**20 / max(seconds, 1e-9), 3),
            },
            "output_bytes": report.output_bytes,
        },
    )


def run_build(
    *,
    out_dir: str | Path,
    tasks: list[BuildTask],
    task_fn: Callable[[Any], dict[str, Any]],
    group: str,
    store_attrs: dict[str, Any],
    settings: dict[str, Any],
    config: dict[str, Any],
    finalize: Callable[[Path, pa.Table, list[dict[str, Any]]], tuple[pa.Table, Mapping]],
    workers: int = 1,
    scheduler: str = parallel.LOCAL,
    overwrite: bool = False,
    ignored: list[tuple[str, str]] | None = None,
    unit: str = "input",
    extra_groups: tuple[str, ...] = (),
    on_part_committed: PartCommitted | None = None,
) -> BuildReport:
    """Run ``task_fn`` over ``tasks`` into ``out_dir`` and write manifest and build record.

    ``task_fn(payload)`` writes its part array and fragment (counts in their flat JSON form)
    and returns a summary of counts (:class:`~data_pipelines.counts.BuildCounts`, or the JSON
    form). ``finalize(out_dir, table, summaries)`` turns the concatenated fragments into the
    manifest and archive-wide counts (dedup, splits, statistics, preview), still under the
    output lock.
    ``extra_groups`` are further groups a task writes its part into (labels), created up front
    and cleaned like ``group`` when the task fails. ``on_part_committed(n)`` is called right
    after the n-th part of this run was committed.
    """
    out_dir = Path(out_dir)
    groups = (group, *extra_groups)
    started = time.perf_counter()
    # every stage but the tasks works on the output alone, so an OSError there is an
    # OutputWriteError; the tasks' own output faults come back from run_pending
    with contextlib.ExitStack() as locked:
        with output_writes():
            locked.enter_context(OutputLock(out_dir))
            prepare_output(out_dir, settings, overwrite, groups, store_attrs)
            pending = [t for t in tasks if not fragment_path(out_dir, t.part).is_file()]
        quarantined = run_pending(
            out_dir,
            pending,
            len(tasks),
            task_fn,
            groups,
            scheduler,
            workers,
            unit,
            on_part_committed,
        )
        run_seconds = time.perf_counter() - started
        with output_writes():
            manifest, summaries, counts, timings = collect_fragments(out_dir, tasks)
            counts[Count(units_done(unit))] = len(summaries)
            counts[Count(units_quarantined(unit))] = len(quarantined)
            manifest, archive_counts = finalize(out_dir, manifest, summaries)
        counts.update(BuildCounts.from_json(archive_counts))
        report = BuildReport(
            out_dir=out_dir,
            counts=counts,
            quarantined=quarantined,
            ignored=list(ignored or []),
            seconds=0.0,
            output_bytes=dir_size(out_dir / STORE_DIRNAME),
            manifest_rows=manifest.num_rows,
            resumed_parts=len(tasks) - len(pending),
            ran_parts=len(pending),
            scheduler=parallel.describe_scheduler(scheduler, workers),
            total_parts=len(tasks),
        )
        report.seconds = time.perf_counter() - started
        with output_writes():
            write_records(report, manifest, config, len(tasks), run_seconds, timings)
    return report
