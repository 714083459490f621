"""Near-duplicate detection: how far apart real near-duplicates and distinct tiles hash, and
how fast the archive-wide Hamming search is.

Part 1 (radius choice) hashes real tiles from the demo archive and ../shared/data:
  - planted near-duplicates: the same tile re-encoded (gain/offset change per band, sensor-like
    noise, 8-bit requantization), as a re-processed copy of a scene would be;
  - the same place on another date (the 5 Sentinel-2 demo scenes are one site, 5 dates);
  - distinct places (tiles of different scenes/sensors/locations).
Part 2 (scale) searches 1M 64-bit hashes with planted near-duplicates via multi-index hashing,
and checks recall against exhaustive search for a sample of queries.

    python benchmarks/bench_near_dup.py [--n 1000000] [--queries 2000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import rasterio

from data_pipelines.dedup import (
    hamming,
    near_pairs_exhaustive,
    near_pairs_mih,
    perceptual_hash,
)
from geomed_mim.resources import demo_data_dir

SHARED = Path(
    os.environ.get("GEOMED_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def tiles_of(arr: np.ndarray, size: int) -> list[np.ndarray]:
    _C, H, W = arr.shape
    return [
        arr[:, r : r + size, c : c + size]
        for r in range(0, H - size + 1, size)
        for c in range(0, W - size + 1, size)
    ]


def reencode(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = tile.astype(np.float64)
    gain = rng.uniform(0.9, 1.1, size=(x.shape[0], 1, 1))
    offset = rng.uniform(-50, 50, size=(x.shape[0], 1, 1))
    x = x * gain + offset + rng.normal(0, 0.01 * x.std() + 1, size=x.shape)
    lo, hi = x.min(), x.max()
    return np.round((x - lo) / (hi - lo) * 255).astype(np.uint8)  # 8-bit requantization


def radius_study(size: int = 32) -> None:
    rng = np.random.default_rng(0)
    by_place: dict[str, list[np.ndarray]] = {}
    s2 = sorted((demo_data_dir() / "sentinel2_l1c" / "scenes").glob("*.tif"))
    dates = [rasterio.open(p).read() for p in s2]
    for k in range(len(tiles_of(dates[0], size))):
        by_place[f"s2_site/{k}"] = [tiles_of(d, size)[k] for d in dates]
    ls = sorted((demo_data_dir() / "landsat8_l1").glob("l8_B[0-9]*.tif"))
    l8 = np.stack([rasterio.open(p).read(1) for p in ls])
    for k, t in enumerate(tiles_of(l8, size)):
        by_place[f"l8/{k}"] = [t]
    rgb = SHARED / "rs" / "rasterio_rgb_byte" / "RGB.byte.tif"
    if rgb.is_file():
        for k, t in enumerate(tiles_of(rasterio.open(rgb).read(), size)):
            if (t == 0).mean() < 0.1:
                by_place[f"rgb/{k}"] = [t]
    first = [v[0] for v in by_place.values()]
    h_first = np.array([perceptual_hash(t) for t in first], dtype=np.uint64)
    planted = np.array(
        [
            hamming(np.uint64(perceptual_hash(t)), np.uint64(perceptual_hash(reencode(t, rng))))
            for t in first
        ]
    )
    other_date = np.array(
        [
            hamming(np.uint64(perceptual_hash(v[0])), np.uint64(perceptual_hash(v[j])))
            for v in by_place.values()
            for j in range(1, len(v))
        ]
    )
    iu = np.triu_indices(len(h_first), 1)
    distinct = hamming(h_first[:, None], h_first[None, :])[iu]
    print(
        f"tiles: {len(first)} places ({size}x{size} px); pairs: planted {len(planted)}, "
        f"other-date {len(other_date)}, distinct {len(distinct)}"
    )
    print(
        f"{'radius':>6} | {'planted found':>13} | {'same site, other date':>21} | "
        f"{'distinct flagged':>16}"
    )
    for r in range(0, 11):
        print(
            f"{r:>6} | {np.mean(planted <= r):>13.3f} | {np.mean(other_date <= r):>21.3f} | "
            f"{np.mean(distinct <= r):>16.5f}"
        )
    print(f"planted distance percentiles 50/90/99: {np.percentile(planted, [50, 90, 99])}")
    print(f"distinct distance min / 0.1 %: {distinct.min()} / {np.percentile(distinct, 0.1)}")


def scale_study(n: int, queries: int, radius: int) -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, size=n, dtype=np.int64).view(np.uint64) ^ (
        rng.integers(0, 2, size=n).astype(np.uint64) << np.uint64(63)
    )
    n_planted = n // 20
    src = rng.choice(n - n_planted, n_planted, replace=False)
    planted = base[src].copy()
    flips = rng.integers(0, radius + 1, size=n_planted)
    for i in range(n_planted):
        for b in rng.choice(64, flips[i], replace=False):
            planted[i] ^= np.uint64(1) << np.uint64(int(b))
    hashes = base.copy()
    hashes[n - n_planted :] = planted  # the last 5 % are near-copies of earlier items
    t0 = time.perf_counter()
    pairs = near_pairs_mih(hashes, radius)
    seconds = time.perf_counter() - t0
    found = set(map(tuple, pairs.tolist()))
    planted_hit = np.mean([(int(s), n - n_planted + i) in found for i, s in enumerate(src)])
    # exhaustive oracle for a sample of query items
    q = rng.choice(n, queries, replace=False)
    t1 = time.perf_counter()
    truth = 0
    hit = 0
    for start in range(0, queries, 256):
        qs = q[start : start + 256]
        d = hamming(hashes[qs][:, None], hashes[None, :])
        for row, i in enumerate(qs):
            for j in np.nonzero(d[row] <= radius)[0]:
                if j == i:
                    continue
                truth += 1
                hit += (min(i, j), max(i, j)) in found
    oracle_s = time.perf_counter() - t1
    print(
        f"{'hashes':>9} | {'radius':>6} | {'MIH search s':>12} | {'pairs':>8} | "
        f"{'planted recall':>14} | {'recall vs exhaustive':>20} | {'exhaustive s (sample)':>21}"
    )
    print(
        f"{n:>9} | {radius:>6} | {seconds:>12.1f} | {len(pairs):>8} | {planted_hit:>14.4f} | "
        f"{hit / max(truth, 1):>14.4f} ({truth:>3}) | {oracle_s:>21.1f}"
    )
    small = hashes[:3000]
    same = set(map(tuple, near_pairs_mih(small, radius).tolist())) == set(
        map(tuple, near_pairs_exhaustive(small, radius).tolist())
    )
    print(f"MIH pairs == exhaustive pairs on 3000 hashes: {same}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--radius", type=int, default=4)
    ap.add_argument("--skip-scale", action="store_true")
    args = ap.parse_args()
    radius_study()
    if not args.skip_scale:
        scale_study(args.n, args.queries, args.radius)


if __name__ == "__main__":
    main()
