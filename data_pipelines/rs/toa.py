"""Raw values -> physical top-of-atmosphere units, per sensor profile.

Each profile's ``calibration.kind`` picks a calibrator:

- ``sentinel2``: reflectance = (DN + offset) / 10000; offset -1000 for processing baseline
  >= 04.00 (read from the product metadata when it is there), else 0.
- ``landsat_mtl``: OLI bands to TOA reflectance with the sun-angle correction, TIRS bands to
  brightness temperature, both from the scene's ``*_MTL.txt`` coefficients.
- ``modis_toa``: reflective bands from percent x0.01; emissive bands min-max scaled per band
  with the published kelvin ranges (SatVision-TOA).
- ``linear``: value * scale + offset, per band or for all bands.

Calibrated tiles are float32 with NaN where the raw value was nodata.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.rs.profiles import SensorProfile

CALIBRATE_CHOICES = ("toa", "none")


class CalibrationError(RuntimeError):
    """A scene lacks what its calibration needs (e.g. the Landsat MTL file)."""


@dataclass(frozen=True)
class Calibrator:
    """Per-band affine or nonlinear mapping of raw values; ``apply`` works on ``[C, h, w]``."""

    kind: str
    scale: np.ndarray  # [C] multiplier applied to the raw value
    offset: np.ndarray  # [C] added after the multiplication
    # per band: (K1, K2) for brightness temperature from radiance, or None
    thermal: tuple[tuple[float, float] | None, ...] = ()
    # per band: (min_k, max_k) to min-max scale a temperature, or None
    bt_range: tuple[tuple[float, float] | None, ...] = ()
    nodata: float | None = None
    out_dtype: str = "float32"

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrate ``[..., C, h, w]`` raw values to float32; nodata becomes NaN."""
        x = raw.astype(np.float32)
        invalid = np.isnan(x) if np.issubdtype(raw.dtype, np.floating) else None
        if self.nodata is not None:
            nod = raw == self.nodata
            invalid = nod if invalid is None else invalid | nod
        out = x * self.scale[:, None, None].astype(np.float32) + self.offset[:, None, None].astype(
            np.float32
        )
        for c, k in enumerate(self.thermal):
            if k is not None:
                k1, k2 = k
                with np.errstate(divide="ignore", invalid="ignore"):
                    out[..., c, :, :] = k2 / np.log(k1 / out[..., c, :, :] + 1.0)
        for c, r in enumerate(self.bt_range):
            if r is not None:
                lo, hi = r
                out[..., c, :, :] = (out[..., c, :, :] - lo) / (hi - lo)
        if invalid is not None:
            out[invalid] = np.nan
        return out

    def describe(self) -> dict[str, Any]:
        """What was applied, for the store attributes."""
        return {
            "kind": self.kind,
            "scale": [float(v) for v in self.scale],
            "offset": [float(v) for v in self.offset],
            "thermal_k1_k2": [list(k) if k else None for k in self.thermal],
            "bt_minmax_k": [list(r) if r else None for r in self.bt_range],
            "nodata_to": "NaN",
        }


def parse_mtl(path: str | Path) -> dict[str, str]:
    """``KEY = VALUE`` pairs of a Landsat MTL file (groups flattened, quotes stripped)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = re.match(r"\s*([A-Z0-9_]+)\s*=\s*(.+?)\s*$", line)
        if m and m.group(1) not in ("GROUP", "END_GROUP"):
            out[m.group(1)] = m.group(2).strip('"')
    return out


def _landsat_band_number(name: str) -> int:
    m = re.match(r"^B0*(\d+)$", name, re.IGNORECASE)
    if not m:
        raise CalibrationError(f"band {name!r} is not a Landsat band name like B4")
    return int(m.group(1))


def landsat_calibrator(profile: SensorProfile, mtl_path: str | Path) -> Calibrator:
    mtl = parse_mtl(mtl_path)

    def get(key: str) -> float:
        if key not in mtl:
            raise CalibrationError(f"{Path(mtl_path).name} has no {key}")
        return float(mtl[key])

    sin_elev = math.sin(math.radians(get("SUN_ELEVATION")))
    scale, offset, thermal = [], [], []
    for band in profile.bands:
        n = _landsat_band_number(band.name)
        if band.kind == "emissive":
            scale.append(get(f"RADIANCE_MULT_BAND_{n}"))
            offset.append(get(f"RADIANCE_ADD_BAND_{n}"))
            thermal.append((get(f"K1_CONSTANT_BAND_{n}"), get(f"K2_CONSTANT_BAND_{n}")))
        else:
            scale.append(get(f"REFLECTANCE_MULT_BAND_{n}") / sin_elev)
            offset.append(get(f"REFLECTANCE_ADD_BAND_{n}") / sin_elev)
            thermal.append(None)
    return Calibrator(
        kind="landsat_mtl",
        scale=np.array(scale),
        offset=np.array(offset),
        thermal=tuple(thermal),
        bt_range=(None,) * len(profile.bands),
        nodata=profile.nodata,
    )


def sentinel2_offset(tags: dict[str, str], configured: Any) -> float:
    """The DN offset: configured number, or from product metadata ('auto'), else 0."""
    if configured not in (None, "auto"):
        return float(configured)
    for key in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"):
        for k, v in tags.items():
            if k.upper().startswith(key):
                return float(v)
    baseline = tags.get("PROCESSING_BASELINE")
    if baseline is not None:
        try:
            return -1000.0 if float(baseline) >= 4.0 else 0.0
        except ValueError:
            pass
    return 0.0


def make_calibrator(
    profile: SensorProfile,
    mode: str = "toa",
    tags: dict[str, str] | None = None,
    metadata_files: tuple[str, ...] = (),
) -> Calibrator | None:
    """The calibrator for one scene, or None for raw values (``mode='none'``)."""
    if mode == "none":
        return None
    if mode != "toa":
        raise ValueError(f"--calibrate: {mode!r} is not one of {CALIBRATE_CHOICES}")
    cal = profile.calibration
    kind = cal.get("kind", "none")
    C = len(profile.bands)
    if kind == "none":
        return None
    if kind == "sentinel2":
        dn_offset = sentinel2_offset(tags or {}, cal.get("offset", "auto"))
        scale = float(cal.get("scale", 1e-4))
        return Calibrator(
            kind="sentinel2",
            scale=np.full(C, scale),
            offset=np.full(C, dn_offset * scale),
            nodata=profile.nodata,
        )
    if kind == "landsat_mtl":
        if not metadata_files:
            raise CalibrationError(
                f"no {profile.metadata_file or '*_MTL.txt'} next to the band files; "
                f"{profile.name} TOA calibration needs it (or use --calibrate none)"
            )
        return landsat_calibrator(profile, metadata_files[0])
    if kind == "modis_toa":
        refl = float(cal.get("reflectance_scale", 0.01))
        scale, bt_range = [], []
        for b in profile.bands:
            if b.kind == "emissive":
                scale.append(1.0)
                bt_range.append((float(b.extra["bt_min_k"]), float(b.extra["bt_max_k"])))
            else:
                scale.append(refl)
                bt_range.append(None)
        return Calibrator(
            kind="modis_toa",
            scale=np.array(scale),
            offset=np.zeros(C),
            bt_range=tuple(bt_range),
            nodata=profile.nodata,
        )
    if kind == "linear":
        scale = np.broadcast_to(np.asarray(cal.get("scale", 1.0), dtype=float), (C,)).copy()
        offset = np.broadcast_to(np.asarray(cal.get("offset", 0.0), dtype=float), (C,)).copy()
        return Calibrator(kind="linear", scale=scale, offset=offset, nodata=profile.nodata)
    raise CalibrationError(f"profile {profile.name}: unknown calibration kind {kind!r}")
