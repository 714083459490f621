"""How every command ends on an error the user can fix: one line, its exit status.

Code anywhere below a command raises a :class:`~data_pipelines.errors.UserError` (here:
:class:`UsageError` for a command-line mistake); the command's entry point runs under
:class:`UserErrors`, which prints ``error: <message>`` on stderr (once, by rank 0 under
``torchrun``) and ends with the error's exit status, with no traceback: 2 for a setting or an
input that cannot work, 1 for a build that wrote nothing, 74 for a write the environment refused
(a full disk: an :class:`~data_pipelines.errors.OutputWriteError`, named by the flag that chose
where to write). The statuses are defined once, in :mod:`data_pipelines.errors`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

from data_pipelines.errors import UserError

RUN_ROOT_FLAG = "--trainer.default_root_dir"  # where a training run writes its checkpoints


class UsageError(UserError, ValueError):
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


class UserErrors:
    """The one handler of every entry point: a :class:`UserError` raised in the body becomes
    ``error: <message>`` on stderr and the error's exit status.

    ``output`` and ``output_flag`` name where the command writes (an output error says which
    flag to change). With ``system_exit=True`` the status ends the process (``SystemExit``); with
    ``system_exit=False`` (a ``main`` that returns its status) the error is swallowed and the status
    kept in :attr:`status`.
    """

    def __init__(
        self,
        *,
        output: str | Path | None = None,
        output_flag: str = "--output",
        system_exit: bool = True,
    ) -> None:
        self.output, self.output_flag = output, output_flag
        self.system_exit = system_exit
        self.status: int | None = None

    def __enter__(self) -> UserErrors:
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if not isinstance(error, UserError):
            return False
        print_usage_error(error.describe(self.output, flag=self.output_flag))
        self.status = error.exit_status
        if self.system_exit:
            raise SystemExit(error.exit_status) from None
        return True


def usage_errors_exit() -> UserErrors:
    """:class:`UserErrors` for the training commands, whose output is the run's checkpoints."""
    return UserErrors(output="checkpoint", output_flag=RUN_ROOT_FLAG)
