"""Settings every build shares, and their checks.

The RS and CT configs extend :class:`BuildConfig`; the CLI flags and the data YAML files use
the same names, and each field's docstring (the string below it) is its flag's help
(:func:`field_help`). ``validate`` reads no input: a setting that cannot work stops the build before
any work, with a message that names the flag and the fix.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import textwrap
from dataclasses import dataclass, is_dataclass

from data_pipelines import parallel
from data_pipelines.classes import ClassTable, load_class_table
from data_pipelines.errors import BuildConfigError, LabelError


@dataclass
class BuildConfig:
    """Where to read and write, how to split, where to run."""

    input: str | list[str]
    """Folder of rasters or provider products (searched recursively: MOD021KM/MYD021KM .hdf,
    Sentinel-2 .SAFE folders or zips, Landsat Collection 1/2 scenes), a glob such as
    'scenes/**/*.tif', a raster or product file, a STAC Item, ItemCollection, Catalog or Collection
    JSON (path or http(s)/s3 URL; remote COG assets are read by range), or demo:NAME for the
    embedded demo (demo:sentinel2_l1c, demo:landsat8_l1, demo:ct). Default: the demo archive."""
    output: str
    """Folder to write store.zarr, manifest.parquet, build.json and quarantine.jsonl into.
    Re-running into the same folder resumes. An object-store URL (s3://bucket/prefix) builds in a
    local staging folder ($GEOMED_STAGING_DIR) and publishes the finished build there, build.json
    last."""
    classes: str | None = None
    """Class table for --labels: YAML with ignore_index and classes: [{id, name, color}] (e.g.
    configs/data/classes/eolearn_lulc.yaml); ids not in the table become ignore_index. CT: a class
    may list source_ids (the label map's ids that become it, e.g.
    configs/data/classes/totalseg_abdomen.yaml); the remap is done at build time and recorded as the
    store's 'classes' attribute."""
    val_fraction: float = 0.05
    """Fraction of scenes (not tiles) assigned to the 'val' split; RS with --split-by location: of
    location blocks."""
    compression_level: int = 5
    """zstd level 0-9."""
    workers: int = 1
    """Worker processes of the local dask cluster (1 = run in this process)."""
    scheduler: str = parallel.LOCAL
    """'local' (a LocalCluster of --workers processes on 127.0.0.1), 'synchronous' (this process,
    for debugging) or the address of a running dask scheduler (tls://HOST:PORT with --tls-*, or
    tcp://HOST:PORT on an isolated network; see docs/cluster.md)."""
    strict: bool = False
    """Exit with status 1 when any input had to be quarantined or any file was ignored, localizers,
    scouts and derived DICOM copies aside (an ordinary export has them); a build that writes nothing
    exits 1 in any case."""
    overwrite: bool = False
    """Delete a previous build in --output instead of resuming it."""

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


@functools.cache  # parsing a class's source once per process
def field_help(config_class: type) -> dict[str, str]:
    """Each field's docstring, the string literal right below it in the class body (as Sphinx
    and jsonargparse read attribute docstrings), as one line; base classes first, a subclass's
    own text winning."""
    helps: dict[str, str] = {}
    for cls in reversed(config_class.__mro__):
        if not is_dataclass(cls):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for node, after in itertools.pairwise(body):
            documented = (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            )
            if documented:
                helps[node.target.id] = " ".join(after.value.value.split())
    return helps
