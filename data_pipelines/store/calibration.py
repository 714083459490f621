"""How stored tile values become physical values: the calibration an RS part records.

A compact store keeps each scene's raw integers (DN) and records, per part array, how to turn
them into top-of-atmosphere units, in CF conventions where CF has a word for it:

``scale_factor``, ``add_offset``  per band: ``value = DN * scale_factor + add_offset`` (Landsat's
                                  sun-elevation division is folded into both: it is an affine too)
``_FillValue``                    the raw nodata value (null when the profile has none)
``valid_max``                     raw values above it are flags, not data (MODIS L1B: 32767)
``calibration``                   the full record (kind, coefficients, where they came from),
                                  including the steps after the affine one that CF cannot say:
                                  ``thermal_k1_k2`` (brightness temperature
                                  ``T = K2 / ln(K1 / L + 1)``), ``bt_correction_tci_tcs``
                                  (``T = (T - tci) / tcs``) and ``bt_minmax_k``
                                  (``(T - lo) / (hi - lo)``)
``stored_values``                 ``"dn"`` (apply the above), ``"calibrated"`` (float32 values, as
                                  with ``--store-dtype float32``) or ``"raw"`` (no calibration)

:class:`StoredCalibration` is the one implementation of the formula on NumPy arrays: the build
applies it to compute statistics and float32 stores, readers apply it to compact stores, so both
give the same float32 values bit for bit. :meth:`StoredCalibration.table` packs the coefficients
per band for loaders that apply them to whole batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ATTR_SCALE_FACTOR = "scale_factor"
ATTR_ADD_OFFSET = "add_offset"
ATTR_FILL_VALUE = "_FillValue"
ATTR_VALID_MAX = "valid_max"
ATTR_STORED_VALUES = "stored_values"
ATTR_PART_CALIBRATION = "calibration"

STORED_DN = "dn"
STORED_CALIBRATED = "calibrated"
STORED_RAW = "raw"

# columns of StoredCalibration.table(): one row per band; NaN in a column = that step is skipped
# (bt_span = hi - lo, taken in float64 as the NumPy formula does, then rounded to float32)
TABLE_COLUMNS = ("scale", "offset", "k1", "k2", "tci", "tcs", "bt_lo", "bt_span")
# their numbers, for code that reads the table (the loader's batched calibration)
CAL_SCALE, CAL_OFFSET, CAL_K1, CAL_K2, CAL_TCI, CAL_TCS, CAL_BT_LO, CAL_BT_SPAN = range(
    len(TABLE_COLUMNS)
)
# the steps after the affine one, each a pair of columns: Planck inversion (k1, k2),
# temperature correction (tci, tcs), min-max scaling (bt_lo, bt_span)
THERMAL_COLUMNS = (CAL_K1, CAL_K2)
BT_CORRECTION_COLUMNS = (CAL_TCI, CAL_TCS)
BT_RANGE_COLUMNS = (CAL_BT_LO, CAL_BT_SPAN)
# the entries of StoredCalibration.invalid_values(): raw nodata, flag threshold (NaN: none)
INVALID_NODATA, INVALID_ABOVE = 0, 1

Pair = tuple[float, float] | None


def _pairs(values: Sequence[Any] | None, n: int) -> tuple[Pair, ...]:
    if not values:
        return (None,) * n
    return tuple(None if v is None else (float(v[0]), float(v[1])) for v in values)


@dataclass(frozen=True)
class StoredCalibration:
    """Per-band affine calibration, optionally followed by Planck inversion, MODIS's temperature
    correction and min-max scaling of the temperature; raw nodata and flags become NaN."""

    scale: np.ndarray  # [C] float64
    offset: np.ndarray  # [C] float64
    thermal: tuple[Pair, ...] = ()  # (K1, K2) per band, or None
    bt_correction: tuple[Pair, ...] = ()  # (tci, tcs) per band, or None
    bt_range: tuple[Pair, ...] = ()  # (min_k, max_k) per band, or None
    nodata: float | None = None
    invalid_above: float | None = None

    @property
    def bands(self) -> int:
        return len(self.scale)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrate ``[..., C, h, w]`` raw values to float32; nodata and flags become NaN."""
        x = raw.astype(np.float32)
        invalid = np.isnan(x) if np.issubdtype(raw.dtype, np.floating) else None
        for value, op in ((self.nodata, np.equal), (self.invalid_above, np.greater)):
            if value is not None:
                bad = op(raw, value)
                invalid = bad if invalid is None else invalid | bad
        scale = self.scale[:, None, None].astype(np.float32)
        out = x * scale + self.offset[:, None, None].astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            for c, k in enumerate(self.thermal):
                if k is not None:
                    k1, k2 = k
                    out[..., c, :, :] = k2 / np.log(k1 / out[..., c, :, :] + 1.0)
        for c, corr in enumerate(self.bt_correction):
            if corr is not None:
                tci, tcs = corr
                out[..., c, :, :] = (out[..., c, :, :] - tci) / tcs
        for c, r in enumerate(self.bt_range):
            if r is not None:
                lo, hi = r
                out[..., c, :, :] = (out[..., c, :, :] - lo) / (hi - lo)
        if invalid is not None:
            out[invalid] = np.nan
        return out

    def table(self) -> np.ndarray:
        """``[C, 8]`` float32 coefficients in :data:`TABLE_COLUMNS` order (NaN: step skipped)."""
        out = np.full((self.bands, len(TABLE_COLUMNS)), np.nan, dtype=np.float32)
        out[:, CAL_SCALE] = self.scale.astype(np.float32)
        out[:, CAL_OFFSET] = self.offset.astype(np.float32)
        spans = tuple(None if r is None else (r[0], r[1] - r[0]) for r in self.bt_range)
        steps = (
            (THERMAL_COLUMNS, self.thermal),
            (BT_CORRECTION_COLUMNS, self.bt_correction),
            (BT_RANGE_COLUMNS, spans),
        )
        for columns, pairs in steps:
            for c, pair in enumerate(pairs):
                if pair is not None:
                    out[c, list(columns)] = np.asarray(pair, dtype=np.float64).astype(np.float32)
        return out

    def invalid_values(self) -> np.ndarray:
        """``[2]`` float64: the raw nodata value and the flag threshold (NaN when absent)."""
        return np.array(
            [
                np.nan if self.nodata is None else self.nodata,
                np.nan if self.invalid_above is None else self.invalid_above,
            ]
        )

    def cf_attrs(self) -> dict[str, Any]:
        """The CF attributes of a part that stores DN (see the module docstring)."""
        attrs: dict[str, Any] = {
            ATTR_STORED_VALUES: STORED_DN,
            ATTR_SCALE_FACTOR: [float(v) for v in self.scale],
            ATTR_ADD_OFFSET: [float(v) for v in self.offset],
            ATTR_FILL_VALUE: self.nodata,
        }
        if self.invalid_above is not None:
            attrs[ATTR_VALID_MAX] = self.invalid_above
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoredCalibration | None:
        """The calibration of a part whose ``stored_values`` is ``"dn"``; None for any other
        part (float32 calibrated values, raw values, or a store written before compact parts)."""
        if attrs.get(ATTR_STORED_VALUES) != STORED_DN:
            return None
        scale = np.asarray(attrs[ATTR_SCALE_FACTOR], dtype=np.float64)
        record = attrs.get(ATTR_PART_CALIBRATION) or {}
        n = len(scale)
        return cls(
            scale=scale,
            offset=np.asarray(attrs[ATTR_ADD_OFFSET], dtype=np.float64),
            thermal=_pairs(record.get("thermal_k1_k2"), n),
            bt_correction=_pairs(record.get("bt_correction_tci_tcs"), n),
            bt_range=_pairs(record.get("bt_minmax_k"), n),
            nodata=attrs.get(ATTR_FILL_VALUE),
            invalid_above=attrs.get(ATTR_VALID_MAX),
        )


def identity_table(bands: int) -> np.ndarray:
    """The :meth:`StoredCalibration.table` of values that are already final (x * 1 + 0)."""
    out = np.full((bands, len(TABLE_COLUMNS)), np.nan, dtype=np.float32)
    out[:, CAL_SCALE], out[:, CAL_OFFSET] = 1.0, 0.0
    return out


NO_INVALID = np.array([np.nan, np.nan])
