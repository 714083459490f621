"""Settings every build shares, and their checks.

The RS and CT configs extend :class:`BuildConfig`; the CLI flags and the data YAML files use
the same names. ``validate`` reads no input: a setting that cannot work stops the build before
any work, with a message that names the flag and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_pipelines import parallel
from data_pipelines.classes import ClassTable, load_class_table
from data_pipelines.errors import BuildConfigError, LabelError


@dataclass
class BuildConfig:
    """Where to read and write, how to split, where to run."""

    input: str | list[str]
    output: str
    classes: str | None = None  # class table YAML of a labeled store
    val_fraction: float = 0.05
    compression_level: int = 5
    workers: int = 1
    scheduler: str = parallel.LOCAL
    strict: bool = False
    overwrite: bool = False

    def validate_shared(self) -> None:
        """Raise BuildConfigError for a shared setting that cannot work."""
        if self.workers < 1:
            raise BuildConfigError(f"--workers: must be at least 1 (got {self.workers})")
        check_fraction("val-fraction", self.val_fraction)
        if not 0 <= self.compression_level <= 9:
            raise BuildConfigError(f"--compression-level: {self.compression_level} not in [0, 9]")
        if not self.output:
            raise BuildConfigError("--output: give the folder to write the dataset into")
        if "://" in str(self.output):
            raise BuildConfigError(
                f"--output: {self.output} is a URL; a build writes a local folder (the "
                f"build_dataset command stages object-store outputs locally and publishes them)"
            )


def checked_class_table(path: str) -> ClassTable:
    """The class table at ``path``; a table that cannot be used is a config error."""
    try:
        return load_class_table(path)
    except LabelError as e:
        raise BuildConfigError(str(e)) from None


def check_fraction(flag: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise BuildConfigError(f"--{flag}: {value} is not in [0, 1]")
