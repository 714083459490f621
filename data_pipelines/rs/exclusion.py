"""Which tiles are not worth training on, and why (one reason per excluded tile).

Checks run on the raw values (before calibration), in this order; the first that fires is
the tile's reason and is counted in ``build.json`` as ``excluded:<reason>``:

``nodata``        more than ``max_nodata_fraction`` of pixels nodata/NaN in any band
``saturated``     more than ``max_saturated_fraction`` of pixels at the saturation value
``out_of_range``  more than ``max_out_of_range_fraction`` of valid, unsaturated pixels
                  outside the profile's ``valid_range``
``cloud``         more than ``max_cloud_fraction`` of pixels flagged cloud/cirrus by the QA
                  band (profiles with ``qa``)
``constant``      every band's standard deviation at most ``min_band_std`` (raw units):
                  flat fill, black or white tiles
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipelines.rs.profiles import SensorProfile

REASONS = ("nodata", "saturated", "out_of_range", "cloud", "constant")


@dataclass(frozen=True)
class ExclusionRules:
    max_nodata_fraction: float = 0.5
    max_out_of_range_fraction: float = 0.05
    max_saturated_fraction: float = 0.05
    max_cloud_fraction: float = 0.5
    min_band_std: float | None = None  # None: the profile's ``min_band_std``


@dataclass(frozen=True)
class TileQuality:
    nodata_fraction: float
    out_of_range_fraction: float
    saturated_fraction: float
    cloud_fraction: float | None
    max_band_std: float

    def as_row(self) -> dict[str, Any]:
        return {
            "nodata_fraction": self.nodata_fraction,
            "out_of_range_fraction": self.out_of_range_fraction,
            "saturated_fraction": self.saturated_fraction,
            "cloud_fraction": self.cloud_fraction,
            "max_band_std": self.max_band_std,
        }


def qa_flag_mask(qa: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Pixels whose bit field ``(qa >> shift) & (2**bits - 1)`` is one of ``values``."""
    field = (qa.astype(np.int64) >> int(spec["shift"])) & ((1 << int(spec.get("bits", 1))) - 1)
    return np.isin(field, np.asarray(spec["values"]))


def cloud_mask(qa: np.ndarray, profile: SensorProfile) -> np.ndarray:
    flags = profile.qa.get("cloud_flags", {})
    mask = np.zeros(qa.shape, dtype=bool)
    for spec in flags.values():
        mask |= qa_flag_mask(qa, spec)
    return mask


def measure(raw: np.ndarray, profile: SensorProfile, qa: np.ndarray | None) -> TileQuality:
    """Quality figures of a raw tile ``[C, h, w]`` (and its QA band ``[h, w]``)."""
    invalid = np.zeros(raw.shape[1:], dtype=bool)
    is_float = np.issubdtype(raw.dtype, np.floating)
    if is_float:
        invalid |= np.isnan(raw).any(axis=0)
    if profile.nodata is not None:
        invalid |= (raw == profile.nodata).any(axis=0)
    if qa is not None and "fill" in profile.qa:
        invalid |= qa_flag_mask(qa, profile.qa["fill"])
    n_valid = int((~invalid).sum())

    saturated_px = np.zeros(raw.shape[1:], dtype=bool)
    if profile.saturated_value is not None:
        saturated_px = (raw == profile.saturated_value).any(axis=0)
    out_of_range = 0.0
    if profile.valid_range is not None and n_valid:
        lo, hi = profile.valid_range
        outside = ((raw < lo) | (raw > hi)).any(axis=0) & ~invalid & ~saturated_px
        out_of_range = float(outside.sum()) / n_valid
    cloud = None
    if qa is not None and profile.qa.get("cloud_flags"):
        cloud = float(cloud_mask(qa, profile).mean())
    if n_valid:
        valid_vals = raw[:, ~invalid].astype(np.float64)  # [C, n_valid]
        max_std = float(valid_vals.std(axis=1).max())
    else:
        max_std = 0.0
    return TileQuality(
        nodata_fraction=float(invalid.mean()),
        out_of_range_fraction=out_of_range,
        saturated_fraction=float(saturated_px.mean()),
        cloud_fraction=cloud,
        max_band_std=max_std,
    )


def exclusion_reason(q: TileQuality, rules: ExclusionRules, profile: SensorProfile) -> str | None:
    """The first rule the tile breaks, or None to keep it."""
    if q.nodata_fraction > rules.max_nodata_fraction:
        return "nodata"
    if q.saturated_fraction > rules.max_saturated_fraction:
        return "saturated"
    if q.out_of_range_fraction > rules.max_out_of_range_fraction:
        return "out_of_range"
    if q.cloud_fraction is not None and q.cloud_fraction > rules.max_cloud_fraction:
        return "cloud"
    min_std = rules.min_band_std if rules.min_band_std is not None else profile.min_band_std
    if q.max_band_std <= min_std:
        return "constant"
    return None
