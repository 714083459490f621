"""Peak memory of a build over one scene much larger than the memory the build uses.

Writes a large tiled, deflate-compressed GeoTIFF (default 3 bands x 20000 x 20000 uint16 =
2.4 GB of pixels; smooth terrain-like content generated block by block), then builds it in a
subprocess and reports the subprocess's peak resident memory (``ru_maxrss``) against the
scene's decoded size. The reader holds one strip of ``tile_size`` rows at a time and the writer
one shard, so memory is bounded by the strip width, not by the scene.

    python benchmarks/bench_large_scene_memory.py [--size 20000] [--tile-size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

PROFILE = """name: big3
description: synthetic 3-band uint16 scene for the memory benchmark
raw_dtype: uint16
nodata: 0
valid_range: [1, 65534]
saturated_value: 65535
min_band_std: 2.0
preview_rgb: [R, G, B]
bands:
  - {name: R, kind: reflectance}
  - {name: G, kind: reflectance}
  - {name: B, kind: reflectance}
calibration: {kind: linear, scale: 1.0e-4, offset: 0.0}
"""


def write_big_geotiff(path: Path, size: int, block: int = 1024) -> None:
    profile = {
        "driver": "GTiff", "dtype": "uint16", "count": 3, "width": size, "height": size,
        "crs": "EPSG:32633", "transform": rasterio.transform.from_origin(400000, 5000000, 10, 10),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
        "BIGTIFF": "YES",
    }  # fmt: skip
    yy, xx = np.mgrid[0:block, 0:block].astype(np.float32)
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                base = 3000 + 1500 * np.sin((yy[:h, :w] + r) / 150.0) * np.cos(
                    (xx[:h, :w] + c) / 210.0
                )
                noise = rng.normal(0, 60, size=(3, h, w))
                data = base[None] * np.array([1.0, 1.1, 0.9])[:, None, None] + noise
                dst.write(data.clip(1, 65000).astype(np.uint16), window=Window(c, r, w, h))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--tile-size", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        (root / "scene").mkdir()
        scene = root / "scene" / "big.tif"
        t0 = time.perf_counter()
        write_big_geotiff(scene, args.size)
        t_write = time.perf_counter() - t0
        (root / "big3.yaml").write_text(PROFILE)
        cmd = [
            sys.executable, "-m", "geomed_mim.build_dataset", "--input", str(root / "scene"),
            "--output", str(root / "out"), "--profile", str(root / "big3.yaml"),
            "--tile-size", str(args.tile_size), "--workers", "1", "--no_preview",
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
        )
        t_build = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        decoded_mb = 3 * args.size * args.size * 2 / 2**20
        strip_mb = 3 * args.tile_size * args.size * 2 / 2**20
        counts = json.loads((root / "out" / "build.json").read_text())["counts"]
        print(
            f"scene: 3 bands x {args.size} x {args.size} uint16, "
            f"{scene.stat().st_size / 2**20:.0f} MB on disk (written in {t_write:.0f} s), "
            f"{decoded_mb:.0f} MB decoded"
        )
        print(
            f"{'decoded scene MB':>16} | {'one strip MB':>12} | {'peak RSS MB':>11} | "
            f"{'peak / scene':>12} | {'tiles':>6} | {'build s':>7}"
        )
        print(
            f"{decoded_mb:>16.0f} | {strip_mb:>12.1f} | {peak_mb:>11.0f} | "
            f"{peak_mb / decoded_mb:>12.3f} | {counts['samples_written']:>6} | {t_build:>7.1f}"
        )


if __name__ == "__main__":
    main()
