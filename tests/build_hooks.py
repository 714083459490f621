"""Crash and interrupt hooks for build tests: callbacks the build runner calls after each
committed part, and a command line that runs ``build_dataset`` with them.

``python -m tests.build_hooks ARGS`` is ``python -m geomed_mim.build_dataset ARGS`` with the hooks
named by the environment: ``GEOMED_BUILD_STOP_AFTER_PARTS=N`` ends the process at once
(``os._exit``, no cleanup, like a kill) right after the N-th part of this run was committed;
``GEOMED_BUILD_PAUSE_AFTER_PARTS=N`` waits there (as if the next part took minutes), so that a
test can send a real Ctrl-C (SIGINT) while the build is known to be mid-way.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from data_pipelines.errors import BuildConfigError

STOP_AFTER_PARTS_ENV = "GEOMED_BUILD_STOP_AFTER_PARTS"
STOPPED_EXIT_CODE = 75  # the exit status of a build stopped by StopAfterParts
PAUSE_AFTER_PARTS_ENV = "GEOMED_BUILD_PAUSE_AFTER_PARTS"
PAUSE_SECONDS = 300.0  # how long PauseAfterParts waits for the test's signal


def stop_after_parts(count: int) -> Callable[[int], None]:
    """End the process hard after the ``count``-th committed part."""

    def after_commit(committed: int) -> None:
        if committed >= count:
            os._exit(STOPPED_EXIT_CODE)  # as abrupt as a kill: nothing is cleaned up

    return after_commit


def pause_after_parts(count: int) -> Callable[[int], None]:
    """Wait for a signal after the ``count``-th committed part."""

    def after_commit(committed: int) -> None:
        if committed == count:
            time.sleep(PAUSE_SECONDS)

    return after_commit


def part_count_from_env(name: str) -> int | None:
    """The part count an environment variable names, or None."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise BuildConfigError(f"{name}: {value!r} is not a positive part count")
    return n


def hooks_from_env() -> Callable[[int], None] | None:
    """The callback the environment asks for (stop or pause), or None."""
    stop_after = part_count_from_env(STOP_AFTER_PARTS_ENV)
    pause_after = part_count_from_env(PAUSE_AFTER_PARTS_ENV)
    hooks = [stop_after_parts(stop_after)] if stop_after is not None else []
    hooks += [pause_after_parts(pause_after)] if pause_after is not None else []
    if not hooks:
        return None

    def after_commit(committed: int) -> None:
        for hook in hooks:
            hook(committed)

    return after_commit


if __name__ == "__main__":
    from geomed_mim.build_dataset import main

    sys.exit(main(sys.argv[1:], on_part_committed=hooks_from_env()))
