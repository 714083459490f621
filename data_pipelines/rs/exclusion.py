"""Which tiles are not worth training on, and why (one reason per excluded tile).

Checks run on the raw values (before calibration), in this order; the first that fires is
the tile's reason and is counted in ``build.json`` as ``excluded:<reason>``:

``nodata``        more than ``max_nodata_fraction`` of pixels nodata/NaN in any band (the
                  profile's ``nodata`` value, values above ``nodata_above`` such as MODIS L1B
                  flags, or QA fill)
``saturated``     more than ``max_saturated_fraction`` of pixels at the saturation value
``out_of_range``  more than ``max_out_of_range_fraction`` of valid, unsaturated pixels
                  outside the profile's ``valid_range``
``cloud``         more than ``max_cloud_fraction`` of pixels flagged cloud/cirrus by the QA
                  band or cloud mask (profiles with ``qa.cloud_flags``)
``cloud_shadow``  more than ``max_cloud_shadow_fraction`` flagged cloud shadow
                  (``qa.shadow_flags``)
``snow``          more than ``max_snow_fraction`` flagged snow/ice (``qa.snow_flags``; the
                  default 1.0 keeps snowy tiles and only records the fraction)
``constant``      every band's standard deviation (estimated on every 4th pixel) at most
                  ``min_band_std`` (raw units): flat fill, black or white tiles
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from data_pipelines.rs.profiles import SensorProfile

REASONS = ("nodata", "saturated", "out_of_range", "cloud", "cloud_shadow", "snow", "constant")
# QA flag group of the profile -> the TileQuality field it fills
_FLAG_FIELDS = {
    "cloud_flags": "cloud_fraction",
    "shadow_flags": "cloud_shadow_fraction",
    "snow_flags": "snow_fraction",
}


@dataclass(frozen=True)
class ExclusionRules:
    max_nodata_fraction: float = 0.5
    max_out_of_range_fraction: float = 0.05
    max_saturated_fraction: float = 0.05
    max_cloud_fraction: float = 0.5
    max_cloud_shadow_fraction: float = 0.5
    max_snow_fraction: float = 1.0
    min_band_std: float | None = None  # None: the profile's ``min_band_std``


@dataclass(frozen=True)
class TileQuality:
    nodata_fraction: float
    out_of_range_fraction: float
    saturated_fraction: float
    cloud_fraction: float | None
    max_band_std: float
    cloud_shadow_fraction: float | None = None
    snow_fraction: float | None = None

    def as_row(self) -> dict[str, Any]:
        """The manifest columns of the same names."""
        return asdict(self)


def qa_flag_mask(qa: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Pixels whose bit field ``(qa >> shift) & (2**bits - 1)`` is one of ``values``."""
    field = (qa.astype(np.int64) >> int(spec["shift"])) & ((1 << int(spec.get("bits", 1))) - 1)
    return np.isin(field, np.asarray(spec["values"]))


def flag_group_mask(qa: np.ndarray, profile: SensorProfile, group: str) -> np.ndarray:
    """Pixels with any flag of ``group`` (``cloud_flags``, ``shadow_flags``, ``snow_flags``)."""
    mask = np.zeros(qa.shape, dtype=bool)
    for spec in profile.qa.get(group, {}).values():
        mask |= qa_flag_mask(qa, spec)
    return mask


def invalid_pixels(raw: np.ndarray, profile: SensorProfile, qa: np.ndarray | None) -> np.ndarray:
    """``[n, h, w]``: pixels that are nodata in any band of ``raw`` ``[n, C, h, w]``."""
    invalid = np.zeros((raw.shape[0], *raw.shape[2:]), dtype=bool)
    if np.issubdtype(raw.dtype, np.floating):
        invalid |= np.isnan(raw).any(axis=1)
    if profile.nodata is not None:
        invalid |= (raw == profile.nodata).any(axis=1)
    if profile.nodata_above is not None:
        invalid |= (raw > profile.nodata_above).any(axis=1)
    if qa is not None and "fill" in profile.qa:
        invalid |= qa_flag_mask(qa, profile.qa["fill"])
    return invalid


def flag_fractions(qa: np.ndarray | None, profile: SensorProfile, n: int) -> dict[str, Any]:
    """Per QA flag group present in the profile, the flagged fraction of each tile ``[n]``."""
    out: dict[str, Any] = {}
    if qa is None:
        return out
    for group, name in _FLAG_FIELDS.items():
        if profile.qa.get(group):
            out[name] = flag_group_mask(qa, profile, group).reshape(n, -1).mean(axis=1)
    return out


def measure_batch(
    raw: np.ndarray, profile: SensorProfile, qa: np.ndarray | None
) -> list[TileQuality]:
    """Quality figures of raw tiles ``[n, C, h, w]`` (and their QA bands ``[n, h, w]``)."""
    n, C = raw.shape[:2]
    invalid = invalid_pixels(raw, profile, qa)  # [n, h, w]
    pixels = invalid[0].size
    n_valid = pixels - invalid.reshape(n, -1).sum(axis=1)  # [n]

    saturated_px = np.zeros_like(invalid)
    if profile.saturated_value is not None:
        saturated_px = (raw == profile.saturated_value).any(axis=1)
    out_of_range = np.zeros(n)
    if profile.valid_range is not None:
        lo, hi = profile.valid_range
        outside = ((raw < lo) | (raw > hi)).any(axis=1) & ~invalid & ~saturated_px
        out_of_range = outside.reshape(n, -1).sum(axis=1) / np.maximum(n_valid, 1)
    flags = flag_fractions(qa, profile, n)

    # per-band std over valid pixels, estimated on every 4th pixel in float32: a flatness test
    # needs neither every pixel nor double precision
    x = raw.reshape(n, C, -1)[:, :, ::4].astype(np.float32)
    valid = ~invalid.reshape(n, 1, -1)[:, :, ::4]
    cnt = np.maximum(valid.sum(axis=2), 1).astype(np.float32)  # [n, 1]
    if invalid.any():
        x = np.where(valid, x, 0.0)
    mean = x.sum(axis=2) / cnt  # [n, C]
    dev = x - mean[:, :, None]
    if invalid.any():
        dev = np.where(valid, dev, 0.0)
    std = np.sqrt(np.square(dev).sum(axis=2) / cnt)  # [n, C]
    max_std = np.where(n_valid > 0, std.max(axis=1), 0.0)

    nodata_frac = invalid.reshape(n, -1).mean(axis=1)
    sat_frac = saturated_px.reshape(n, -1).mean(axis=1)
    return [
        TileQuality(
            nodata_fraction=float(nodata_frac[k]),
            out_of_range_fraction=float(out_of_range[k]),
            saturated_fraction=float(sat_frac[k]),
            max_band_std=float(max_std[k]),
            **{
                name: float(flags[name][k]) if name in flags else None
                for name in _FLAG_FIELDS.values()
            },
        )
        for k in range(n)
    ]


def measure(raw: np.ndarray, profile: SensorProfile, qa: np.ndarray | None) -> TileQuality:
    """Quality figures of one raw tile ``[C, h, w]`` (and its QA band ``[h, w]``)."""
    return measure_batch(raw[None], profile, None if qa is None else qa[None])[0]


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
    shadow = q.cloud_shadow_fraction
    if shadow is not None and shadow > rules.max_cloud_shadow_fraction:
        return "cloud_shadow"
    if q.snow_fraction is not None and q.snow_fraction > rules.max_snow_fraction:
        return "snow"
    min_std = rules.min_band_std if rules.min_band_std is not None else profile.min_band_std
    if q.max_band_std <= min_std:
        return "constant"
    return None
