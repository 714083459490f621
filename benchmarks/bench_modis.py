"""MODIS L1B path throughput against reading the same SDS once with pyhdf.

The archive: N copies (renamed, one per 5-minute slot) of one full-size MOD021KM granule
(203 scans: 2030 x 1354 at 1 km, all four EV_* datasets, uncertainty indexes and 5-km
geolocation) written with pyhdf in the collection 6.1 layout by the writer the tests use.

Floor, measured in the same run: for every granule, each SDS the build reads (the 14 bands'
EV_* band ranges and their *_Uncert_Indexes) read once, whole, with pyhdf. The build
(``--profile modis_toa14``, 128-px tiles, calibrate=toa, one process) does that read strip by
strip plus calibration (Planck inversion), exclusion, hashing, statistics, the zarr write and
the manifest; build / floor is its overhead over the unavoidable HDF4 decode.

    python benchmarks/bench_modis.py [--granules 8] [--quick]

``--quick`` (a 26-scan granule, 2 copies) only checks that the script runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stores import timed_build  # noqa: E402

from data_pipelines.counts import EXCLUDED, SAMPLES_WRITTEN  # noqa: E402
from data_pipelines.rs.products.modis import band_sources  # noqa: E402
from data_pipelines.rs.profiles import load_profile  # noqa: E402
from tests.data_pipelines.rs.products.modis_files import write_mod021km  # noqa: E402


def make_archive(root: Path, n: int, scans: int, frames: int) -> Path:
    archive = root / "granules"
    archive.mkdir(parents=True)
    first = write_mod021km(archive, scans=scans, frames=frames, when="A2021123.1000")
    for i in range(1, n):
        minutes = 5 * i
        when = f"A2021123.{10 + minutes // 60:02d}{minutes % 60:02d}"
        shutil.copy(first.path, archive / first.path.name.replace("A2021123.1000", when))
    return archive


def read_floor(archive: Path) -> tuple[float, float]:
    """Seconds to read every SDS band range the build needs, once, whole; and the MB decoded."""
    from pyhdf.SD import SD, SDC

    profile = load_profile("modis_toa14").for_product("modis_l1b")
    t0 = time.perf_counter()
    decoded = 0
    for path in sorted(archive.glob("*.hdf")):
        sd = SD(str(path), SDC.READ)
        ranges: dict[str, list[int]] = {}
        for s in band_sources(sd, profile, path.name):
            ranges.setdefault(s.sds, []).append(s.index)
        for name, idx in ranges.items():
            for sds_name in (name, f"{name}_Uncert_Indexes"):
                sds = sd.select(sds_name)
                shape = sds.info()[2]
                lo, n = min(idx), max(idx) - min(idx) + 1
                decoded += sds.get(start=[lo, 0, 0], count=[n, shape[1], shape[2]]).nbytes
        sd.end()
    return time.perf_counter() - t0, decoded / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--granules", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny granules: checks the script runs")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    n, scans, frames = (2, 26, 262) if args.quick else (args.granules, 203, 1354)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        archive = make_archive(root, n, scans, frames)
        hdf_mb = sum(f.stat().st_size for f in archive.glob("*.hdf")) / 2**20
        print(
            f"archive: {n} MOD021KM granules of {10 * scans}x{frames} px at 1 km, "
            f"{hdf_mb:.0f} MB of HDF4; 128-px tiles; {os.cpu_count()} CPU cores"
        )
        read_floor(archive)  # warm the page cache: both runs below read from memory
        t_floor, decoded_mb = min(read_floor(archive) for _ in range(2))
        t_build, report = timed_build(
            archive,
            root / "store",
            profile="modis_toa14",
            tile_size=128,
            workers=1,
            scheduler="synchronous",
        )
        counts = report.counts
        tiles = counts.total(SAMPLES_WRITTEN)
        print()
        print("| run | s | granules/s | MB decoded/s | tiles/s | / floor |")
        print("|---|---|---|---|---|---|")
        print(f"| floor: pyhdf reads the SDS once | {t_floor:.2f} | {n / t_floor:.2f} | "
              f"{decoded_mb / t_floor:.0f} | | 1.00 |")  # fmt: skip
        print(f"| build, modis_toa14, calibrate=toa | {t_build:.2f} | {n / t_build:.2f} | "
              f"{decoded_mb / t_build:.0f} | {tiles / t_build:.0f} | "
              f"{t_build / t_floor:.2f} |")  # fmt: skip
        print(f"\ntiles written {tiles}, excluded "
              f"{sum(counts.by_reason(EXCLUDED).values())}, "
              f"quarantined {len(report.quarantined)}")  # fmt: skip


if __name__ == "__main__":
    main()
