"""User mistakes on the command lines: one line naming the flag and the fix, exit status 2.

Code anywhere below a command raises :class:`UsageError`; the command's ``main`` turns it into
``error: <message>`` on stderr (printed once, by rank 0 under ``torchrun``) and exit status 2,
with no traceback. A write that the environment refused (a checkpoint on a full disk: an
:class:`~data_pipelines.errors.OutputWriteError`) is one line too, with exit status 74.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from data_pipelines.errors import EXIT_OUTPUT_ERROR, OutputWriteError

EXIT_USAGE = 2
RUN_ROOT_FLAG = "--trainer.default_root_dir"  # where a training run writes its checkpoints


class UsageError(ValueError):
    """A setting or an input that cannot work, with what to do instead (one line)."""


def one_line(message: str) -> str:
    """``message`` with its lines joined: the error is always one line."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def is_rank_zero() -> bool:
    """True in a plain process and on global rank 0 of a ``torchrun`` launch."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def print_usage_error(message: str) -> None:
    if is_rank_zero():
        print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


@contextmanager
def usage_errors_exit() -> Iterator[None]:
    """Run the body; a :class:`UsageError` becomes one line on stderr and ``SystemExit(2)``,
    an :class:`OutputWriteError` one line and ``SystemExit(74)``."""
    try:
        yield
    except UsageError as e:
        print_usage_error(str(e))
        raise SystemExit(EXIT_USAGE) from None
    except OutputWriteError as e:
        print_usage_error(e.describe("checkpoint", flag=RUN_ROOT_FLAG))
        raise SystemExit(EXIT_OUTPUT_ERROR) from None


def run_with_usage_errors(fn: Callable[[], None]) -> None:
    """``fn()`` under :func:`usage_errors_exit`."""
    with usage_errors_exit():
        fn()
