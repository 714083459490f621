"""Per-band statistics merged across tasks (parallel Welford / Chan et al.).

Every tile contributes per-band (count, mean, M2, min, max) computed where the value is finite;
tiles are merged pairwise with Chan's update, which is exact and order-independent up to
floating-point rounding, so a 1-worker and an N-worker build agree. Percentiles come from a
deterministic sample of values (``BandSample``), so they are approximate on large archives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.store.calibration import StoredCalibration
from data_pipelines.store.index import build_sample_index
from data_pipelines.store.layout import ATTR_BAND_STATS, ATTR_BANDS, store_path

PERCENTILES = (1, 2, 50, 98, 99)
SAMPLE_PER_PART = 256  # values per band a task keeps for the percentile estimate
MAX_SAMPLE = 200_000  # values per band used for the final percentiles


@dataclass
class BandMoments:
    """Running per-band count, mean, sum of squared deviations, min and max."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray

    @classmethod
    def empty(cls, n_bands: int) -> BandMoments:
        return cls(
            count=np.zeros(n_bands),
            mean=np.zeros(n_bands),
            m2=np.zeros(n_bands),
            minimum=np.full(n_bands, np.inf),
            maximum=np.full(n_bands, -np.inf),
        )

    @classmethod
    def of_tile(cls, tile: np.ndarray) -> BandMoments:
        """Moments of a ``[C, h, w]`` tile over its finite values."""
        return cls(*(a[0] for a in tile_moments(tile[None])))

    def merge(self, other: BandMoments) -> BandMoments:
        """Chan et al. pairwise update."""
        n = self.count + other.count
        delta = other.mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(n > 0, other.count / np.maximum(n, 1), 0.0)
        mean = self.mean + delta * frac
        m2 = self.m2 + other.m2 + delta * delta * self.count * frac
        return BandMoments(
            n,
            mean,
            m2,
            np.minimum(self.minimum, other.minimum),
            np.maximum(self.maximum, other.maximum),
        )

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (what normalization uses)."""
        return np.sqrt(np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), 0.0))


def tile_moments(tiles: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-tile, per-band (count, mean, M2, min, max) of ``[n, C, h, w]``, each ``[n, C]``.

    Sums are accumulated in float64 without a float64 copy of the tiles."""
    n, C = tiles.shape[:2]
    x = tiles.reshape(n, C, -1)
    if np.issubdtype(tiles.dtype, np.floating) and not np.isfinite(tiles).all():
        finite = np.isfinite(x)
        count = finite.sum(axis=2).astype(np.float64)
        safe = np.where(finite, x, 0)
        mean = safe.sum(axis=2, dtype=np.float64) / np.maximum(count, 1)
        dev = np.where(finite, safe - mean[:, :, None], 0.0)
        minimum = np.where(finite, x, np.inf).min(axis=2).astype(np.float64)
        maximum = np.where(finite, x, -np.inf).max(axis=2).astype(np.float64)
    else:
        count = np.full((n, C), float(x.shape[2]))
        mean = x.mean(axis=2, dtype=np.float64)
        dev = x - mean[:, :, None].astype(x.dtype if x.dtype.kind == "f" else np.float64)
        minimum, maximum = x.min(axis=2).astype(np.float64), x.max(axis=2).astype(np.float64)
    m2 = np.square(dev).sum(axis=2, dtype=np.float64)
    return count, mean, m2, minimum, maximum


@dataclass
class BandSample:
    """A deterministic strided sample of values per band, for percentile estimates."""

    n_bands: int
    limit: int = SAMPLE_PER_PART
    values: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.values:
            self.values = [[] for _ in range(self.n_bands)]

    def add_tiles(self, tiles: np.ndarray, per_tile: int = 16) -> None:
        """The same values as ``add_tile`` on each of ``tiles`` ``[n, C, h, w]``, vectorized."""
        n, C = tiles.shape[:2]
        flat = tiles.reshape(n, C, -1)
        step = max(1, flat.shape[2] // per_tile)
        picked = flat[:, :, ::step][:, :, :per_tile]  # [n, C, k] (finite filter below)
        for c in range(self.n_bands):
            v = picked[:, c].ravel()
            self.values[c].extend(v[np.isfinite(v)].tolist())

    def add_tile(self, tile: np.ndarray, per_tile: int = 16) -> None:
        flat = tile.reshape(tile.shape[0], -1)
        step = max(1, flat.shape[1] // per_tile)
        for c in range(self.n_bands):
            v = flat[c, ::step]
            v = v[np.isfinite(v)]
            self.values[c].extend(float(x) for x in v[:per_tile])

    def finish(self) -> list[list[float]]:
        """Thin each band's values to ``limit`` evenly spaced ones."""
        out = []
        for v in self.values:
            if len(v) > self.limit:
                idx = np.linspace(0, len(v) - 1, self.limit).round().astype(int)
                v = [v[i] for i in idx]
            out.append(v)
        return out


def percentiles_from_samples(samples: list[list[list[float]]], n_bands: int) -> dict[str, list]:
    """Merge per-part samples and compute the reported percentiles per band."""
    out: dict[str, list] = {f"p{p}": [] for p in PERCENTILES}
    for c in range(n_bands):
        vals = (
            np.concatenate([np.asarray(s[c], dtype=np.float64) for s in samples if s])
            if samples
            else np.zeros(0)
        )
        if len(vals) > MAX_SAMPLE:
            vals = vals[np.linspace(0, len(vals) - 1, MAX_SAMPLE).round().astype(int)]
        for p in PERCENTILES:
            out[f"p{p}"].append(float(np.percentile(vals, p)) if len(vals) else None)
    return out


def stats_attrs(
    bands: list[str], moments: BandMoments, percentiles: dict[str, list], values: str, over: str
) -> dict[str, Any]:
    """The ``band_stats`` store attribute."""
    finite = moments.count > 0
    return {
        "bands": bands,
        "values": values,
        "computed_over": over,
        "count": [int(c) for c in moments.count],
        "mean": [float(m) if f else None for m, f in zip(moments.mean, finite, strict=True)],
        "std": [float(s) if f else None for s, f in zip(moments.std, finite, strict=True)],
        "min": [float(m) if f else None for m, f in zip(moments.minimum, finite, strict=True)],
        "max": [float(m) if f else None for m, f in zip(moments.maximum, finite, strict=True)],
        "percentiles": percentiles,
    }


def recompute_store_stats(out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Re-read every kept, non-duplicate sample of a built store and rewrite ``band_stats``
    (in physical units: compact parts are calibrated as they are read).

        Moments are exact; percentiles use an evenly strided sample of up to ``MAX_SAMPLE`` values
        per band.
    """
    import zarr
    from tqdm.auto import tqdm

    index = build_sample_index(out_dir, split=None)
    order = np.argsort(index.array, kind="stable")
    bounds = np.searchsorted(index.array[order], np.arange(len(index.paths) + 1))
    root = zarr.open_group(str(store_path(out_dir)), mode="r+")
    bands = list(root.attrs[ATTR_BANDS])
    total = BandMoments.empty(len(bands))
    sample = BandSample(len(bands), limit=MAX_SAMPLE)
    parts = sorted(range(len(index.paths)), key=lambda k: index.paths[k])
    for k in tqdm(parts, desc="band statistics", unit="part", disable=not progress):
        arr = root[index.paths[k]]
        calibration = StoredCalibration.from_attrs(dict(arr.attrs))  # compact part: DN
        idx = np.sort(index.tile[order[bounds[k] : bounds[k + 1]]])
        for start in range(0, len(idx), 256):
            block = np.asarray(arr.get_orthogonal_selection((idx[start : start + 256],)))
            if calibration is not None:
                block = calibration.apply(block)
            for tile in block:
                total = total.merge(BandMoments.of_tile(tile))
                sample.add_tile(tile, per_tile=64)
    percentiles = percentiles_from_samples([sample.finish()], len(bands))
    previous = dict(root.attrs.get(ATTR_BAND_STATS, {}))
    attrs = stats_attrs(
        bands,
        total,
        percentiles,
        values=previous.get("values", "as stored"),
        over="kept, non-duplicate tiles (recomputed by `build_dataset stats`)",
    )
    root.attrs[ATTR_BAND_STATS] = attrs
    return attrs
