"""The errors a build reports to the user, shared by every modality.

A config or input mistake stops the build before any work, with a message that names the flag
and the fix; an input that fails inside its task is quarantined with a one-line reason
(:func:`first_line`). Errors that belong to one reader (a DICOM series, a GeoTIFF scene) live
next to that reader.
"""

from __future__ import annotations


class BuildConfigError(ValueError):
    """A setting that cannot work; raised before any input is read."""


class BuildLockedError(RuntimeError):
    """Another build is writing to the same output folder."""


class InputError(ValueError):
    """The --input value cannot be used (missing folder, nothing matched)."""


class LabelError(ValueError):
    """A label setting, class table or label file that cannot be used."""


def first_line(e: BaseException) -> str:
    """The first non-blank line of an error's message (its type name when the message is empty):
    a quarantine reason is one line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
