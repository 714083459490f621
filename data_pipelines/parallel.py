"""Where build tasks run: in this process, on a dask LocalCluster, or on an existing scheduler.

Heavy reads go to processes with one thread each (GDAL handles are not thread-safe and the
GIL would serialize decoding), one task per input scene/volume, never one per tile.

The LocalCluster listens on 127.0.0.1 only. An existing scheduler is reached at its address;
a ``tls://`` address uses the TLS settings of dask's configuration
(``distributed.comm.tls.ca-file``, ``.client.cert``, ``.client.key``; the build command's
``--tls-*`` flags set them), and a scheduler that cannot be reached is one line naming
``--scheduler``.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from data_pipelines.errors import BuildConfigError, OutputWriteError, first_line

T = TypeVar("T")
R = TypeVar("R")

SYNCHRONOUS = "synchronous"
LOCAL = "local"
LOCAL_HOST = "127.0.0.1"  # the LocalCluster is never reachable from other machines
TLS_CONFIG_KEYS = {  # dask config key -> the build command's flag that sets it
    "distributed.comm.tls.ca-file": "--tls-ca-file",
    "distributed.comm.tls.client.cert": "--tls-cert",
    "distributed.comm.tls.client.key": "--tls-key",
}


class TaskCrashedError(RuntimeError):
    """A task's worker died (segfault, out of memory) or the task raised unexpectedly."""


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def describe_scheduler(scheduler: str, workers: int) -> str:
    if runs_in_process(scheduler, workers):
        return "in-process (synchronous)"
    if scheduler == LOCAL:
        return f"dask LocalCluster, {workers} processes x 1 thread"
    return f"dask scheduler at {scheduler}"


# one thread per worker process: BLAS, blosc, GDAL and zarr's codec pool would otherwise each
# start a thread per core in every worker and oversubscribe the machine
_SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "GDAL_NUM_THREADS": "1",
    "BLOSC_NTHREADS": "1",
}


def limit_worker_threads() -> None:
    """Run in each worker: keep codecs and I/O on the worker's single thread."""
    import numcodecs.blosc
    import zarr

    os.environ.update(_SINGLE_THREAD_ENV)
    numcodecs.blosc.set_nthreads(1)
    zarr.config.set({"threading.max_workers": 1})


def _silence_on_interrupt(signum: int, frame: object) -> None:
    """A worker's SIGINT handler: the parent is closing the cluster, so the errors this worker
    would log while it goes (a heartbeat to a scheduler already gone, with its traceback) say
    nothing; all of its logging stops. No KeyboardInterrupt is raised."""
    logging.disable(logging.CRITICAL)


def ignore_interrupts() -> None:
    """Run in each LocalCluster worker: Ctrl-C reaches the whole process group, but only the
    parent handles it (it closes the cluster, which cancels the running tasks), so workers print
    nothing: no KeyboardInterrupt, no warning per cancelled task and no error about the closed
    connection to the scheduler (a task's own errors come back to the parent as data, never
    through this log)."""
    signal.signal(signal.SIGINT, _silence_on_interrupt)
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)


@contextmanager
def _client(scheduler: str, workers: int) -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    if scheduler == LOCAL:
        # silence the cluster's INFO chatter; warnings and errors still come through
        for name in ("distributed", "distributed.worker", "distributed.scheduler"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # one task per worker at a time: a task is a whole scene or volume, so queuing a
        # second one on a worker gains nothing and, when that worker dies (a crash, out of
        # memory), would count the waiting task as a casualty too
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            cluster = LocalCluster(
                n_workers=workers,
                host=LOCAL_HOST,
                threads_per_worker=1,
                processes=True,
                # None still binds dask's default :8787, and a second cluster on the machine
                # (another build, a parallel test) then warns on stderr; any free local port
                dashboard_address=f"{LOCAL_HOST}:0",
                silence_logs=logging.WARNING,
                env=_SINGLE_THREAD_ENV,
            )
        client = Client(cluster)
        client.run(limit_worker_threads)
        client.run(ignore_interrupts)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
    else:
        client = connect(scheduler)
        client.run(limit_worker_threads)
        try:
            yield client
        finally:
            client.close()


def scheduler_security(scheduler: str) -> Any:
    """The ``distributed.Security`` to reach ``scheduler`` with: dask's TLS configuration for a
    ``tls://`` address (BuildConfigError naming the flags when it lacks a setting), None for
    any other address."""
    import dask
    from distributed.security import Security

    if not scheduler.lower().startswith("tls://"):
        return None
    missing = [flag for key, flag in TLS_CONFIG_KEYS.items() if not dask.config.get(key, None)]
    if missing:
        raise BuildConfigError(
            f"--scheduler: {scheduler} is a TLS address, but no {', '.join(missing)} is given; "
            f"pass the CA certificate and this client's certificate and key (or set "
            f"distributed.comm.tls.* in the dask configuration)"
        )
    return Security(require_encryption=True)


def use_tls_files(scheduler: str, files: dict[str, str | None]) -> None:
    """The build command's ``--tls-ca-file/--tls-cert/--tls-key`` (flag -> PEM path or None)
    into dask's configuration, which the client of a ``tls://`` scheduler reads
    (:func:`scheduler_security`)."""
    import dask

    given = {key: (flag, files.get(flag)) for key, flag in TLS_CONFIG_KEYS.items()}
    for flag, path in given.values():
        if path is None:
            continue
        if not str(scheduler).lower().startswith("tls://"):
            raise BuildConfigError(
                f"{flag}: only a --scheduler tls://HOST:PORT address uses it (got "
                f"--scheduler {scheduler})"
            )
        if not Path(path).is_file():
            raise BuildConfigError(f"{flag}: {path} is not a file; give the PEM file")
    dask.config.set({key: path for key, (_, path) in given.items() if path is not None})


def connect(scheduler: str) -> Any:
    """A client of the running scheduler at ``scheduler``; one line naming ``--scheduler`` when
    it cannot be reached (refused, timed out, a TLS handshake that failed)."""
    from distributed import Client

    security = scheduler_security(scheduler)
    try:
        return Client(scheduler, security=security)
    except (OSError, TimeoutError, ValueError) as e:
        raise BuildConfigError(
            f"--scheduler: cannot connect to {scheduler} ({first_line(e)}); check that the "
            f"scheduler runs there and speaks this protocol (tls:// needs --tls-ca-file, "
            f"--tls-cert, --tls-key)"
        ) from None


class TaskFailure:
    """An exception raised inside a task, carried back as plain data.

    Tasks report their own errors this way instead of raising through dask, so the worker logs
    stay quiet and the error type survives even when its class is not importable in the parent.
    """

    def __init__(self, error_type: str, message: str):
        self.error_type = error_type
        self.message = message

    def to_exception(self) -> Exception:
        exc = RuntimeError(self.message)
        exc.error_type = self.error_type  # type: ignore[attr-defined]
        return exc


def _run_captured(fn: Callable[[T], R], item: T) -> R | TaskFailure | OutputWriteError:
    try:
        return fn(item)
    except OutputWriteError as e:  # our own class, importable wherever fn is: it travels as it is
        return e
    except Exception as e:
        return TaskFailure(type(e).__name__, str(e))


def _task_error(exc: BaseException) -> Exception:
    """The error a failed future reports, as one a quarantine line can explain."""
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return TaskCrashedError(
            "the worker process died while running this task (it crashed or ran out of memory)"
        )
    return exc if isinstance(exc, Exception) else TaskCrashedError(str(exc))


def runs_in_process(scheduler: str, workers: int) -> bool:
    return scheduler == SYNCHRONOUS or (scheduler == LOCAL and workers <= 1)


# the client of the innermost ``session``, by scheduler
_sessions: dict[str, Any] = {}


@contextmanager
def session(scheduler: str = LOCAL, workers: int = 1) -> Iterator[None]:
    """Keep one cluster (or scheduler connection) for every ``map_unordered`` call inside, so
    that e.g. reading DICOM headers and building the volumes start the workers once."""
    if runs_in_process(scheduler, workers) or scheduler in _sessions:
        yield
        return
    with _client(scheduler, workers) as client:
        _sessions[scheduler] = client
        try:
            yield
        finally:
            _sessions.pop(scheduler, None)


def _map_on(client: Any, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, Any]]:
    from distributed import as_completed

    futures = client.map(_run_captured, [fn] * len(items), list(items), pure=False)
    index = {f.key: i for i, f in enumerate(futures)}
    for future in as_completed(futures):
        i = index[future.key]
        if future.status == "error":
            yield i, _task_error(future.exception())
        else:
            result = future.result()
            yield i, result.to_exception() if isinstance(result, TaskFailure) else result
        future.release()


def map_unordered(
    fn: Callable[[T], R],
    items: Sequence[T],
    scheduler: str = LOCAL,
    workers: int = 1,
) -> Iterator[tuple[int, R | BaseException]]:
    """Run ``fn`` on every item; yield ``(item_index, result or exception)`` as tasks finish.

    An exception is yielded, not raised, so one bad input never stops the others.
    ``fn`` must be a module-level function (it is pickled to worker processes). Inside a
    ``session`` for the same scheduler, its cluster is used. Close the iterator (e.g. with
    ``contextlib.closing``) when stopping early: that shuts down a cluster it started at once,
    not when the generator happens to be collected.
    """
    if not items:
        return
    if runs_in_process(scheduler, workers):
        for i, item in enumerate(items):
            try:
                yield i, fn(item)
            except Exception as e:
                yield i, e
        return
    if scheduler in _sessions:
        yield from _map_on(_sessions[scheduler], fn, items)
        return
    with _client(scheduler, workers) as client:
        yield from _map_on(client, fn, items)
