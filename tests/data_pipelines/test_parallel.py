"""Where build tasks run: in this process or on a real dask cluster, with the same results."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

from data_pipelines import parallel

# cluster workers cannot import a test module: its task functions travel by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class BadInputError(ValueError):
    """An error type of the caller's own, as a task would raise for a bad input."""


def square_or_fail(x: int) -> dict[str, int]:
    if x % 4 == 3:
        raise BadInputError(f"input {x} is bad\nwith detail")
    return {"x": x, "square": x * x}


def worker_settings(_: int) -> dict[str, object]:
    import zarr

    return {
        "pid": os.getpid(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "blosc": os.environ.get("BLOSC_NTHREADS"),
        "zarr_threads": zarr.config.get("threading.max_workers"),
    }


def die_on_two(x: int) -> int:
    if x == 2:
        os._exit(1)  # a worker killed mid-task (segfault, out of memory)
    return x


def _collect(items: list[int], fn=square_or_fail, **kwargs) -> dict[int, object]:
    results = dict(parallel.map_unordered(fn, items, **kwargs))
    assert sorted(results) == list(range(len(items)))  # every item reported exactly once
    return results


def test_synchronous_runs_in_this_process_and_yields_errors() -> None:
    results = _collect(list(range(8)), scheduler=parallel.SYNCHRONOUS)
    assert results[2] == {"x": 2, "square": 4}
    assert isinstance(results[3], BadInputError)
    assert isinstance(results[7], BadInputError)
    assert sum(isinstance(r, BaseException) for r in results.values()) == 2
    assert list(parallel.map_unordered(square_or_fail, [], scheduler=parallel.LOCAL)) == []


def test_one_local_worker_is_synchronous() -> None:
    assert parallel.describe_scheduler(parallel.LOCAL, 1) == "in-process (synchronous)"
    pids = _collect([0, 1], fn=worker_settings, scheduler=parallel.LOCAL, workers=1)
    assert {r["pid"] for r in pids.values()} == {os.getpid()}


@pytest.mark.slow
def test_local_cluster_gives_the_synchronous_results_and_error_types() -> None:
    items = list(range(12))
    sync = _collect(items, scheduler=parallel.SYNCHRONOUS)
    dask_results = _collect(items, scheduler=parallel.LOCAL, workers=2)
    for i in items:
        if isinstance(sync[i], BaseException):
            err = dask_results[i]
            # the task's own error class is carried back by name, with its message
            assert isinstance(err, RuntimeError)
            assert err.error_type == "BadInputError"
            assert str(err) == str(sync[i])
        else:
            assert dask_results[i] == sync[i]
    assert parallel.describe_scheduler(parallel.LOCAL, 2) == (
        "dask LocalCluster, 2 processes x 1 thread"
    )


@pytest.mark.slow
def test_cluster_workers_run_single_threaded_outside_this_process() -> None:
    results = _collect(list(range(6)), fn=worker_settings, scheduler=parallel.LOCAL, workers=2)
    settings = list(results.values())
    assert os.getpid() not in {s["pid"] for s in settings}
    assert {(s["omp"], s["blosc"], s["zarr_threads"]) for s in settings} == {("1", "1", 1)}


@pytest.mark.slow
def test_an_existing_scheduler_is_used_by_address() -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
    ) as cluster:
        address = cluster.scheduler_address
        results = _collect(list(range(8)), scheduler=address)
    assert results[5] == {"x": 5, "square": 25}
    assert results[3].error_type == "BadInputError"
    assert parallel.describe_scheduler(address, 4) == f"dask scheduler at {address}"


@pytest.mark.slow
def test_a_dead_worker_fails_only_its_task() -> None:
    # dask's own retries as shipped (a task is given up after it killed allowed-failures + 1
    # workers): a task that lost its worker to another task's crash is simply run again
    results = _collect(list(range(4)), fn=die_on_two, scheduler=parallel.LOCAL, workers=2)
    assert isinstance(results[2], parallel.TaskCrashedError)
    assert str(results[2]) == (
        "the worker process died while running this task (it crashed or ran out of memory)"
    )
    assert [results[i] for i in (0, 1, 3)] == [0, 1, 3]
