"""Raw values -> physical top-of-atmosphere units, per sensor profile.

Each profile's ``calibration.kind`` picks a calibrator; provider products bring their own
coefficients (read by ``rs.products``) and plain rasters use the profile's:

- ``sentinel2``: reflectance = (DN + offset) / quantification. From a ``.SAFE`` product: the
  per-band ``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET`` and the quantification value of its
  ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` (a product whose offsets cannot be determined is not
  calibrated). From a plain raster: offset -1000 for processing baseline >= 04.00 (read from
  its metadata tags when there), else 0; quantification 10000.
- ``landsat_mtl``: Level-1 OLI bands to TOA reflectance with the sun-angle correction, TIRS
  bands to brightness temperature, from the scene's MTL (pre-collection, Collection 1 or 2;
  text or JSON).
- ``landsat_c2_l2``: Collection 2 Level-2 surface reflectance (``SR_B*``: DN x 2.75e-5 - 0.2)
  and surface temperature (``ST_B10``: DN x 0.00341802 + 149.0 K), from the MTL's LEVEL2
  groups, or these published constants when the MTL is absent.
- ``modis_toa``: MODIS L1B granules: reflectance = reflectance_scales x (DN -
  reflectance_offsets); emissive bands: radiance = radiance_scales x (DN - radiance_offsets),
  brightness temperature by inverting Planck at the band's effective central wavenumber with
  the temperature correction slope/intercept, exactly as SatPy's ``modis_l1b`` reader does, then
  min-max scaled with the profile's kelvin ranges. Pre-calibrated 14-band rasters: reflective
  bands from percent x0.01, emissive bands (kelvin) min-max scaled.
- ``linear``: value * scale + offset, per band or for all bands.

Calibrated tiles are float32 with NaN where the raw value was nodata; the formula itself is
``data_pipelines.store.calibration.StoredCalibration.apply``, which readers of compact stores
(raw DN plus the recorded coefficients) apply too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.errors import UserError
from data_pipelines.rs.products import ProductInfo
from data_pipelines.rs.products.registry import product_entry
from data_pipelines.rs.profiles import SensorProfile
from data_pipelines.store.calibration import StoredCalibration

CALIBRATE_CHOICES = ("toa", "none")

# -- MODIS emissive bands: the constants of SatPy's modis_l1b reader (one table for Terra and
# Aqua, as SatPy uses it; SatVision-TOA was calibrated through SatPy). Band order of
# EV_1KM_Emissive.
MODIS_EMISSIVE_BANDS = (
    "20", "21", "22", "23", "24", "25", "27", "28", "29", "30", "31", "32", "33", "34", "35", "36",
)  # fmt: skip
# effective central wavenumber [cm^-1]
MODIS_CWN = (
    2.641775e3, 2.505277e3, 2.518028e3, 2.465428e3, 2.235815e3, 2.200346e3, 1.477967e3,
    1.362737e3, 1.173190e3, 1.027715e3, 9.080884e2, 8.315399e2, 7.483394e2, 7.308963e2,
    7.188681e2, 7.045367e2,
)  # fmt: skip
# temperature correction slope (unitless) and intercept [K]: T = (T_planck - tci) / tcs
MODIS_TCS = (
    9.993411e-1, 9.998646e-1, 9.998584e-1, 9.998682e-1, 9.998819e-1, 9.998845e-1, 9.994877e-1,
    9.994918e-1, 9.995495e-1, 9.997398e-1, 9.995608e-1, 9.997256e-1, 9.999160e-1, 9.999167e-1,
    9.999191e-1, 9.999281e-1,
)  # fmt: skip
MODIS_TCI = (
    4.770532e-1, 9.262664e-2, 9.757996e-2, 8.929242e-2, 7.310901e-2, 7.060415e-2, 2.204921e-1,
    2.046087e-1, 1.599191e-1, 8.253401e-2, 1.302699e-1, 7.181833e-2, 1.972608e-2, 1.913568e-2,
    1.817817e-2, 1.583042e-2,
)  # fmt: skip
PLANCK_H = 6.6260755e-34  # J s
LIGHT_C = 2.9979246e8  # m / s
BOLTZMANN_K = 1.380658e-23  # J / K

# Landsat Collection 2 Level-2 scaling, fixed by the product definition (used when no MTL)
LANDSAT_C2_SR_SCALE, LANDSAT_C2_SR_OFFSET = 2.75e-5, -0.2
LANDSAT_C2_ST_SCALE, LANDSAT_C2_ST_OFFSET = 0.00341802, 149.0


class CalibrationError(UserError, RuntimeError):
    """A scene lacks what its calibration needs (e.g. the Landsat MTL file)."""


@dataclass(frozen=True)
class Calibrator:
    """Per-band affine or nonlinear mapping of raw values; ``apply`` works on ``[C, h, w]``."""

    kind: str
    scale: np.ndarray  # [C] multiplier applied to the raw value
    offset: np.ndarray  # [C] added after the multiplication
    # per band: (K1, K2) for brightness temperature from radiance, T = K2 / ln(K1 / L + 1)
    thermal: tuple[tuple[float, float] | None, ...] = ()
    # per band: (tci, tcs) MODIS temperature correction after Planck: T = (T - tci) / tcs
    bt_correction: tuple[tuple[float, float] | None, ...] = ()
    # per band: (min_k, max_k) to min-max scale a temperature, or None
    bt_range: tuple[tuple[float, float] | None, ...] = ()
    nodata: float | None = None
    invalid_above: float | None = None  # raw values above this are flags: NaN
    source: dict[str, Any] | None = None  # where the coefficients came from (for the record)

    def stored(self) -> StoredCalibration:
        """The calibration as a store records it (the one implementation of the formula)."""
        return StoredCalibration(
            scale=np.asarray(self.scale, dtype=np.float64),
            offset=np.asarray(self.offset, dtype=np.float64),
            thermal=tuple(self.thermal) or (None,) * len(self.scale),
            bt_correction=tuple(self.bt_correction) or (None,) * len(self.scale),
            bt_range=tuple(self.bt_range) or (None,) * len(self.scale),
            nodata=self.nodata,
            invalid_above=self.invalid_above,
        )

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrate ``[..., C, h, w]`` raw values to float32; nodata becomes NaN."""
        return self.stored().apply(raw)

    def describe(self) -> dict[str, Any]:
        """What was applied, for the store attributes."""
        out = {
            "kind": self.kind,
            "scale": [float(v) for v in self.scale],
            "offset": [float(v) for v in self.offset],
            "thermal_k1_k2": [list(k) if k else None for k in self.thermal],
            "bt_minmax_k": [list(r) if r else None for r in self.bt_range],
            "nodata_to": "NaN",
        }
        if any(self.bt_correction):
            out["bt_correction_tci_tcs"] = [list(c) if c else None for c in self.bt_correction]
        if self.invalid_above is not None:
            out["invalid_above"] = self.invalid_above
        if self.source:
            out["source"] = self.source
        return out


# -- Landsat -------------------------------------------------------------------------------------


def read_mtl(path: str | Path) -> dict[str, dict[str, str]]:
    """The groups of a Landsat MTL file (ODL text or USGS JSON): ``{group: {KEY: value}}``.

    Values are strings, quotes stripped. Groups are kept apart because a Collection 2 Level-2
    MTL repeats Level-1 keys (``REFLECTANCE_MULT_BAND_n``) in another group.
    """
    path = Path(path)
    text = path.read_text(errors="replace")
    if path.suffix.lower() == ".json":
        groups: dict[str, dict[str, str]] = {}
        _json_groups(json.loads(text), "", groups)
        return groups
    groups = {}
    stack = [""]
    for line in text.splitlines():
        m = re.match(r"\s*([A-Z0-9_]+)\s*=\s*(.+?)\s*$", line)
        if not m:
            continue
        key, value = m.group(1), m.group(2).strip('"')
        if key == "GROUP":
            stack.append(value)
        elif key == "END_GROUP":
            if len(stack) > 1:
                stack.pop()
        else:
            groups.setdefault(stack[-1], {})[key] = value
    return groups


def _json_groups(node: Any, name: str, out: dict[str, dict[str, str]]) -> None:
    for key, value in node.items():
        if isinstance(value, dict):
            _json_groups(value, key, out)
        else:
            out.setdefault(name, {})[key] = str(value)


def level1_values(groups: dict[str, dict[str, str]]) -> dict[str, str]:
    """The Level-1 view of an MTL: every group but the Level-2 ones, flattened."""
    flat: dict[str, str] = {}
    for name, values in groups.items():
        if not name.startswith("LEVEL2_"):
            for k, v in values.items():
                flat.setdefault(k, v)
    return flat


def _landsat_band_number(name: str) -> int:
    m = re.match(r"^B0*(\d+)$", name, re.IGNORECASE)
    if not m:
        raise CalibrationError(f"band {name!r} is not a Landsat band name like B4")
    return int(m.group(1))


def _getter(values: dict[str, str], where: str):
    def get(key: str) -> float:
        if key not in values:
            raise CalibrationError(f"{where} has no {key}")
        try:
            return float(values[key])
        except ValueError:
            raise CalibrationError(f"{where}: {key} = {values[key]!r} is not a number") from None

    return get


def landsat_calibrator(profile: SensorProfile, mtl_path: str | Path) -> Calibrator:
    """Level-1 TOA reflectance and brightness temperature (pre-collection, C1 and C2 MTLs)."""
    get = _getter(level1_values(read_mtl(mtl_path)), Path(mtl_path).name)
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
        source={"mtl": Path(mtl_path).name},
    )


def landsat_c2_l2_calibrator(profile: SensorProfile, mtl_path: str | Path | None) -> Calibrator:
    """Collection 2 Level-2 surface reflectance and surface temperature."""
    groups = read_mtl(mtl_path) if mtl_path else {}
    where = Path(mtl_path).name if mtl_path else ""
    sr = groups.get("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS")
    st = groups.get("LEVEL2_SURFACE_TEMPERATURE_PARAMETERS")
    if mtl_path and (sr is None or st is None):
        raise CalibrationError(
            f"{where} has no LEVEL2_SURFACE_REFLECTANCE/TEMPERATURE_PARAMETERS groups: not a "
            f"Collection 2 Level-2 MTL"
        )
    scale, offset = [], []
    for band in profile.bands:
        n = _landsat_band_number(band.name)
        if band.kind == "emissive":  # (MTL group, its keys, the definition without an MTL)
            group, keys, mult_add = (
                st,
                (f"TEMPERATURE_MULT_BAND_ST_B{n}", f"TEMPERATURE_ADD_BAND_ST_B{n}"),
                (LANDSAT_C2_ST_SCALE, LANDSAT_C2_ST_OFFSET),
            )
        else:
            group, keys, mult_add = (
                sr,
                (f"REFLECTANCE_MULT_BAND_{n}", f"REFLECTANCE_ADD_BAND_{n}"),
                (LANDSAT_C2_SR_SCALE, LANDSAT_C2_SR_OFFSET),
            )
        if group is not None:
            get = _getter(group, where)
            mult_add = (get(keys[0]), get(keys[1]))
        scale.append(mult_add[0])
        offset.append(mult_add[1])
    return Calibrator(
        kind="landsat_c2_l2",
        scale=np.array(scale),
        offset=np.array(offset),
        nodata=profile.nodata,
        source={"mtl": where} if mtl_path else {"constants": "Collection 2 Level-2 definition"},
    )


# -- Sentinel-2 ----------------------------------------------------------------------------------


def sentinel2_offset(tags: dict[str, str], configured: Any) -> float:
    """The DN offset of a plain raster: configured number, or from its metadata tags ('auto'),
    else 0."""
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


def sentinel2_product_calibrator(profile: SensorProfile, product: ProductInfo) -> Calibrator:
    """(DN + offset) / quantification with the product's own per-band values."""
    cal = product.calibration
    if cal.get("problem"):
        raise CalibrationError(cal["problem"])
    q = float(cal["quantification"])
    offsets = cal["offsets"]
    return Calibrator(
        kind="sentinel2",
        scale=np.full(len(profile.bands), 1.0 / q),
        offset=np.array([float(offsets[b]) / q for b in profile.band_names]),
        nodata=profile.nodata,
        source={
            "metadata": cal.get("metadata"),
            "processing_baseline": product.processing_baseline,
            "quantification": q,
            "dn_offsets": [float(offsets[b]) for b in profile.band_names],
        },
    )


# -- MODIS ---------------------------------------------------------------------------------------


def modis_planck_constants(band: str) -> tuple[float, float, float, float]:
    """``(K1, K2, tci, tcs)`` of an emissive MODIS band (``"31"``), computed as SatPy does
    (float32 constants), with radiance in W m^-2 sr^-1 um^-1: T = K2 / ln(K1 / L + 1)."""
    if band not in MODIS_EMISSIVE_BANDS:
        raise CalibrationError(f"MODIS band {band} is not an emissive band")
    i = MODIS_EMISSIVE_BANDS.index(band)
    h, c, k = np.float32(PLANCK_H), np.float32(LIGHT_C), np.float32(BOLTZMANN_K)
    c1 = 2 * h * c * c
    c2 = (h * c) / k
    wavelength = 1.0 / (np.float32(MODIS_CWN[i]) * 100)  # [m]
    k1 = c1 / (1e6 * wavelength**5)
    k2 = c2 / wavelength
    return float(k1), float(k2), float(np.float32(MODIS_TCI[i])), float(np.float32(MODIS_TCS[i]))


def modis_l1b_calibrator(profile: SensorProfile, product: ProductInfo) -> Calibrator:
    """Reflectance = s (DN - o); emissive: Planck-inverted, corrected, min-max scaled."""
    bands = product.calibration["bands"]  # per profile band, read from the granule
    scale, offset, thermal, correction, bt_range = [], [], [], [], []
    for band, coeff in zip(profile.bands, bands, strict=True):
        s, o = float(coeff["scale"]), float(coeff["offset"])
        scale.append(s)
        offset.append(-s * o)
        if band.kind == "emissive":
            k1, k2, tci, tcs = modis_planck_constants(coeff["band"])
            thermal.append((k1, k2))
            correction.append((tci, tcs))
            bt_range.append((float(band.extra["bt_min_k"]), float(band.extra["bt_max_k"])))
        else:
            thermal.append(None)
            correction.append(None)
            bt_range.append(None)
    return Calibrator(
        kind="modis_l1b",
        scale=np.array(scale),
        offset=np.array(offset),
        thermal=tuple(thermal),
        bt_correction=tuple(correction),
        bt_range=tuple(bt_range),
        nodata=profile.nodata,
        invalid_above=profile.nodata_above,
        source={
            "granule": product.product_id,
            "dn_offsets": [float(c["offset"]) for c in bands],
            "sds": [c["sds"] for c in bands],
        },
    )


def modis_toa_raster_calibrator(profile: SensorProfile) -> Calibrator:
    """A pre-calibrated 14-band raster: percent x0.01, kelvin min-max scaled."""
    refl = float(profile.calibration.get("reflectance_scale", 0.01))
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
        offset=np.zeros(len(profile.bands)),
        bt_range=tuple(bt_range),
        nodata=profile.nodata,
    )


# -- STAC items -----------------------------------------------------------------------------------

# calibrations that are one scale and offset per band, which STAC raster:bands can state; the
# others (Landsat L1 TOA with sun elevation, MODIS) need the product's own metadata
AFFINE_KINDS = ("linear", "sentinel2", "landsat_c2_l2")


def stac_raster_calibrator(profile: SensorProfile, product: ProductInfo) -> Calibrator:
    """physical = scale * DN + offset, per band, as the item's ``raster:bands`` state."""
    cal = product.calibration
    return Calibrator(
        kind="stac_raster_bands",
        scale=np.asarray(cal["scale"], dtype=float),
        offset=np.asarray(cal["offset"], dtype=float),
        nodata=profile.nodata,
        source={"from": cal.get("source", "STAC raster:bands"), "item": product.product_id},
    )


# -- choosing ------------------------------------------------------------------------------------


def make_calibrator(
    profile: SensorProfile,
    mode: str = "toa",
    tags: dict[str, str] | None = None,
    metadata_files: tuple[str, ...] = (),
    product: ProductInfo | None = None,
) -> Calibrator | None:
    """The calibrator for one scene, or None for raw values (``mode='none'``).

    ``profile`` is the profile as it applies to the scene (``SensorProfile.for_product`` for
    provider products), ``product`` what the product reader found in the product.
    """
    if mode == "none":
        return None
    if mode != "toa":
        raise ValueError(f"--calibrate: {mode!r} is not one of {CALIBRATE_CHOICES}")
    cal = profile.calibration
    kind = cal.get("kind", "none")
    if kind == "none":
        return None
    if product is not None:
        calibrator = product_calibrator(profile, product)
        if calibrator is not None:
            return calibrator
    if kind == "sentinel2":
        dn_offset = sentinel2_offset(tags or {}, cal.get("offset", "auto"))
        scale = float(cal.get("scale", 1e-4))
        C = len(profile.bands)
        return Calibrator(
            kind="sentinel2",
            scale=np.full(C, scale),
            offset=np.full(C, dn_offset * scale),
            nodata=profile.nodata,
        )
    if kind in ("landsat_mtl", "landsat_c2_l2"):
        return _landsat(profile, kind, metadata_files)
    if kind == "modis_toa":
        return modis_toa_raster_calibrator(profile)
    if kind == "linear":
        C = len(profile.bands)
        scale = np.broadcast_to(np.asarray(cal.get("scale", 1.0), dtype=float), (C,)).copy()
        offset = np.broadcast_to(np.asarray(cal.get("offset", 0.0), dtype=float), (C,)).copy()
        return Calibrator(kind="linear", scale=scale, offset=offset, nodata=profile.nodata)
    raise CalibrationError(f"profile {profile.name}: unknown calibration kind {kind!r}")


def product_calibrator(profile: SensorProfile, product: ProductInfo) -> Calibrator | None:
    """The calibrator the product's module registered (its own coefficients), or None when the
    profile's calibration does not use them. A product no module registered is refused: its
    raw values would otherwise be calibrated as a plain raster's, silently wrong."""
    entry = product_entry(product.kind)
    if entry is None:
        raise CalibrationError(
            f"no product module registered for {product.kind!r}; open scenes through "
            f"data_pipelines.rs.reader.open_scene_reader"
        )
    return entry.calibrator(profile, product) if entry.calibrator else None


def _landsat(profile: SensorProfile, kind: str, metadata_files: tuple[str, ...]) -> Calibrator:
    mtl = metadata_files[0] if metadata_files else None
    if kind == "landsat_c2_l2":
        return landsat_c2_l2_calibrator(profile, mtl)
    if mtl is None:
        raise CalibrationError(
            f"no {profile.metadata_file or '*_MTL.txt'} next to the band files; "
            f"{profile.name} TOA calibration needs it (or use --calibrate none)"
        )
    return landsat_calibrator(profile, mtl)
