"""Sensor profiles: which bands a sensor has, in which order, and how raw values become physical.

Profiles are YAML files in ``configs/data/profiles/``; one is picked by name
(``sentinel2_l1c``) or by path. The band list travels into the store's attributes and from
there into every model trained on it, so weights can later be matched by band name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from data_pipelines.errors import UserError
from data_pipelines.resources import configs_dir

BAND_KINDS = ("reflectance", "emissive", "other")

# Provider products a profile can read (its ``products`` section names the ones it takes, with
# how their raw values differ from the profile's defaults). Plain rasters (GeoTIFF, JP2, ...)
# are always read with the profile's own fields.
PRODUCT_KINDS = (
    "modis_l1b",  # MOD021KM / MYD021KM HDF4 granules
    "sentinel2_l1c_safe",  # S2 MSIL1C .SAFE folder or zip
    "sentinel2_l2a_safe",  # S2 MSIL2A .SAFE folder or zip
    "landsat_pre_collection_l1",  # Landsat-8 L1 before the collections (LGN00 names, BQA)
    "landsat_c1_l1",  # Landsat Collection 1 Level-1 (BQA)
    "landsat_c2_l1",  # Landsat Collection 2 Level-1 (QA_PIXEL)
    "landsat_c2_l2",  # Landsat Collection 2 Level-2 (SR_B*, ST_B10, QA_PIXEL)
)
# profile fields a product section may set (the raw encoding and the QA layout of that product)
PRODUCT_OVERRIDES = (
    "raw_dtype",
    "nodata",
    "nodata_above",
    "valid_range",
    "saturated_value",
    "min_band_std",
    "qa_band",
    "qa",
)
# groups of QA flags, each measured as its own fraction and excluded with its own reason
QA_FLAG_GROUPS = ("cloud_flags", "shadow_flags", "snow_flags")


class ProfileError(UserError, ValueError):
    """A profile name, file or field that cannot be used."""


@dataclass(frozen=True)
class Band:
    name: str
    wavelength_nm: float | None = None
    resolution_m: float | None = None
    kind: str = "reflectance"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SensorProfile:
    name: str
    bands: tuple[Band, ...]
    description: str = ""
    sensor: str = ""
    raw_dtype: str = "uint16"
    nodata: float | None = None
    valid_range: tuple[float, float] | None = None
    saturated_value: float | None = None
    nodata_above: float | None = None  # raw values above this are flags (MODIS L1B): nodata
    units: str = ""
    preview_rgb: tuple[str, ...] = ()
    qa_band: str | None = None
    # QA bit fields: {"fill": {shift, bits, values}, "cloud_flags": {name: {shift, bits, values}},
    # "shadow_flags": {...}, "snow_flags": {...}}
    qa: dict[str, Any] = field(default_factory=dict)
    min_band_std: float = 0.0  # raw units; a tile with every band this flat is "constant"
    metadata_file: str | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    # product kind -> the fields that differ for it (see PRODUCT_OVERRIDES)
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = ""

    def reads_product(self, kind: str) -> bool:
        return kind in self.products

    def for_product(self, kind: str) -> SensorProfile:
        """This profile as it applies to one provider product: its raw encoding and QA layout."""
        if kind not in self.products:
            raise ProfileError(f"profile {self.name} does not read {kind} products")
        overrides = dict(self.products[kind])
        if "valid_range" in overrides and overrides["valid_range"] is not None:
            overrides["valid_range"] = tuple(overrides["valid_range"])
        return replace(self, **overrides)

    @property
    def marks_nodata(self) -> bool:
        """Whether raw values carry a nodata convention (a value, or flags above a limit)."""
        return self.nodata is not None or self.nodata_above is not None

    def valid_raw(self, raw: np.ndarray) -> np.ndarray:
        """Raw pixels that are data under this profile's nodata convention (NaN, ``nodata``,
        values above ``nodata_above`` are not): the product's rule, not the file's tags."""
        valid = (
            np.isfinite(raw)
            if np.issubdtype(raw.dtype, np.floating)
            else np.ones_like(raw, dtype=bool)
        )
        if self.nodata is not None:
            valid &= raw != self.nodata
        if self.nodata_above is not None:
            valid &= raw <= self.nodata_above
        return valid

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    def band_index(self, token: str) -> int | None:
        """Index of the band a file-name/description token refers to (``B1`` == ``B01``)."""
        key = normalize_band_token(token)
        for i, b in enumerate(self.bands):
            if normalize_band_token(b.name) == key:
                return i
        return None

    def is_qa_token(self, token: str) -> bool:
        return self.qa_band is not None and normalize_band_token(token) == normalize_band_token(
            self.qa_band
        )

    def to_attrs(self) -> dict[str, Any]:
        """JSON-safe description stored in the zarr group attributes."""
        return {
            "name": self.name,
            "description": self.description,
            "sensor": self.sensor,
            "bands": self.band_names,
            "wavelengths_nm": [b.wavelength_nm for b in self.bands],
            "band_kinds": [b.kind for b in self.bands],
            "raw_dtype": self.raw_dtype,
            "nodata": self.nodata,
            "units": self.units,
            "preview_rgb": list(self.preview_rgb),
        }


_BAND_TOKEN = re.compile(r"^B0*(\d+)([A-Z]?)$", re.IGNORECASE)


def normalize_band_token(token: str) -> str:
    """``B01`` -> ``B1``, ``b8a`` -> ``B8A``; other tokens are upper-cased."""
    m = _BAND_TOKEN.match(token.strip())
    if m:
        return f"B{int(m.group(1))}{m.group(2).upper()}"
    return token.strip().upper()


def available_profiles() -> list[str]:
    return sorted(p.stem for p in (configs_dir() / "data" / "profiles").glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> SensorProfile:
    """Load a profile by shipped name or by YAML path; raise ProfileError naming the problem."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = configs_dir() / "data" / "profiles" / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(
                f"--profile: unknown sensor profile {str(name_or_path)!r}; "
                f"choose one of {', '.join(available_profiles())} or give a path to a YAML file"
            )
    elif not path.is_file():
        raise ProfileError(f"--profile: profile file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ProfileError(f"--profile: {path} is not valid YAML: {e}") from None
    return profile_from_dict(raw, source=str(path))


def profile_from_dict(raw: Any, source: str = "<dict>") -> SensorProfile:
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {source}: expected a mapping at the top level")
    for key in ("name", "bands"):
        if key not in raw:
            raise ProfileError(f"profile {source}: missing field {key!r}")
    bands_raw = raw["bands"]
    if not isinstance(bands_raw, list) or not bands_raw:
        raise ProfileError(f"profile {source}: 'bands' must be a non-empty list")
    bands = []
    for i, b in enumerate(bands_raw):
        if not isinstance(b, dict) or "name" not in b:
            raise ProfileError(f"profile {source}: bands[{i}] needs a 'name'")
        kind = b.get("kind", "reflectance")
        if kind not in BAND_KINDS:
            raise ProfileError(
                f"profile {source}: bands[{i}].kind {kind!r} is not one of {BAND_KINDS}"
            )
        known = {"name", "wavelength_nm", "resolution_m", "kind"}
        bands.append(
            Band(
                name=str(b["name"]),
                wavelength_nm=b.get("wavelength_nm"),
                resolution_m=b.get("resolution_m"),
                kind=kind,
                extra={k: v for k, v in b.items() if k not in known},
            )
        )
    names = [normalize_band_token(b.name) for b in bands]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ProfileError(f"profile {source}: duplicate band names {dupes}")
    profile = SensorProfile(
        name=str(raw["name"]),
        bands=tuple(bands),
        description=raw.get("description", ""),
        sensor=raw.get("sensor", ""),
        raw_dtype=raw.get("raw_dtype", "uint16"),
        nodata=raw.get("nodata"),
        valid_range=tuple(raw["valid_range"]) if raw.get("valid_range") else None,
        saturated_value=raw.get("saturated_value"),
        nodata_above=raw.get("nodata_above"),
        units=raw.get("units", ""),
        preview_rgb=tuple(raw.get("preview_rgb", ())),
        qa_band=raw.get("qa_band"),
        qa=dict(raw.get("qa") or {}),
        min_band_std=float(raw.get("min_band_std", 0.0)),
        metadata_file=raw.get("metadata_file"),
        calibration=dict(raw.get("calibration") or {}),
        products=_checked_products(raw.get("products"), source),
        source=source,
    )
    _check_calibration(profile, source)
    for name in profile.preview_rgb:
        if profile.band_index(name) is None:
            raise ProfileError(
                f"profile {source}: preview_rgb band {name!r} is not one of {profile.band_names}"
            )
    return profile


def _checked_products(raw: Any, source: str) -> dict[str, dict[str, Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {source}: 'products' must map product kinds to overrides")
    out: dict[str, dict[str, Any]] = {}
    for kind, overrides in raw.items():
        if kind not in PRODUCT_KINDS:
            raise ProfileError(
                f"profile {source}: products.{kind} is not one of {', '.join(PRODUCT_KINDS)}"
            )
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(PRODUCT_OVERRIDES))
        if unknown:
            raise ProfileError(
                f"profile {source}: products.{kind} sets {unknown}; a product section may set "
                f"only {', '.join(PRODUCT_OVERRIDES)}"
            )
        out[kind] = overrides
    return out


def profiles_reading(kind: str) -> list[str]:
    """Shipped profiles that read ``kind`` products (for messages that name the right one)."""
    out = []
    for name in available_profiles():
        try:
            if load_profile(name).reads_product(kind):
                out.append(name)
        except ProfileError:
            continue
    return out


def _check_calibration(profile: SensorProfile, source: str) -> None:
    kind = profile.calibration.get("kind", "none")
    known = ("none", "linear", "sentinel2", "landsat_mtl", "landsat_c2_l2", "modis_toa")
    if kind not in known:
        raise ProfileError(f"profile {source}: calibration.kind {kind!r} is not one of {known}")
    if kind == "modis_toa":
        for b in profile.bands:
            if b.kind == "emissive" and not {"bt_min_k", "bt_max_k"} <= set(b.extra):
                raise ProfileError(
                    f"profile {source}: emissive band {b.name} needs bt_min_k and bt_max_k"
                )
    if kind == "linear":
        for key in ("scale", "offset"):
            v = profile.calibration.get(key, 0.0)
            if isinstance(v, list) and len(v) != len(profile.bands):
                raise ProfileError(
                    f"profile {source}: calibration.{key} has {len(v)} values for "
                    f"{len(profile.bands)} bands"
                )
