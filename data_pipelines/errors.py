"""The errors the commands report to the user, and their exit statuses.

Every error a user can act on is a :class:`UserError`: it carries its exit status and a one-line
message naming the flag and the fix. Each command's entry point runs under one handler
(:class:`geomed_mim.usage.UserErrors`) that prints ``error: <message>`` and ends with that status,
with no traceback; the exit statuses below are the only definitions of them.

A config or input mistake stops the build before any work, with a message that names the flag
and the fix; an input that fails inside its task is quarantined with a one-line reason
(:func:`first_line`). A failed write of the build's own output (disk full, quota, read-only,
an I/O error) is no input's fault: it is an :class:`OutputWriteError`, which stops the build at once
and is never quarantined. Errors that belong to one reader (a DICOM series, a GeoTIFF scene)
live next to that reader.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# the exit statuses of every command
EXIT_OK = 0
EXIT_NOTHING_WRITTEN = 1  # a build wrote nothing, or --strict found quarantined/ignored inputs
EXIT_USAGE = 2  # a setting or an input that cannot work
# the output could not be written (sysexits.h's EX_IOERR): distinct from a user mistake
EXIT_OUTPUT_ERROR = 74
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """An error the user can fix, with a message that says how. ``exit_status`` is the status
    the command ends with; a subclass keeps its older base (``ValueError``, ``OSError`` ...) as
    a second base so that callers catching that keep working."""

    exit_status: int = EXIT_USAGE

    def describe(self, output: str | Path | None = None, flag: str = "--output") -> str:
        """The message for the user; ``output`` and ``flag`` name where the command writes
        (only an error about the output uses them)."""
        return str(self)


class BuildConfigError(UserError, ValueError):
    """A setting that cannot work; raised before any input is read."""


class BuildLockedError(UserError, RuntimeError):
    """Another build is writing to the same output folder."""


class InputError(UserError, ValueError):
    """The --input value cannot be used (missing folder, nothing matched)."""


class LabelError(UserError, ValueError):
    """A label setting, class table or label file that cannot be used."""


class NothingWrittenError(UserError):
    """A build that finished without writing a sample (or, with ``--strict``, with inputs set
    aside): the output exists but cannot be trained on."""

    exit_status = EXIT_NOTHING_WRITTEN


def first_line(e: BaseException) -> str:
    """The first non-blank line of an error's message (its type name when the message is empty):
    a quarantine reason is one line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class OutputWriteError(UserError, OSError):
    """Writing (or reading back) the build's own output failed: no space, quota, file size
    limit, read-only filesystem, an I/O error. The environment's fault, not an input's, so the
    build stops instead of quarantining the input it was writing; what was committed stays and a
    re-run resumes. Keeps the ``errno``, ``strerror`` and ``filename`` of the error it wraps
    (and pickles with them, to come back from a worker process)."""

    exit_status = EXIT_OUTPUT_ERROR

    def describe(self, output: str | Path | None = None, flag: str = "--output") -> str:
        """One line naming ``flag`` (the setting that chose where to write), what was being
        written, the errno and what to do."""
        code = errno.errorcode.get(self.errno, "") if isinstance(self.errno, int) else ""
        why = self.strerror or (str(self.args[0]) if self.args else "write failed")
        where = f" ({self.filename})" if self.filename else ""
        target = f"writing {output}" if output is not None else "writing the output"
        return (
            f"{flag}: {target} failed: {why}" + (f" [{code}]" if code else "") + f"{where}; "
            f"free space or fix the output's filesystem (or choose another {flag}), then "
            f"re-run the same command to resume"
        )


@contextmanager
def output_writes() -> Iterator[None]:
    """The body writes the build's output: an ``OSError`` it raises becomes an
    :class:`OutputWriteError` (with the same errno), never an input's quarantine reason."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as e:
        raise OutputWriteError(e.errno, e.strerror or first_line(e), e.filename) from e
