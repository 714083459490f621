"""Provider product file names: what a file is, told from its name alone (nothing is opened).

Discovery uses these to group a product's files into one scene and to say which profile reads
a product; the readers use them for the facts a name carries (platform, date, collection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

# -- MODIS: MOD021KM.A2021123.1235.061.2021124012345.hdf, MYD03.A2021123.1235.061.<proc>.hdf ------
MODIS_NAME = re.compile(
    r"^(?P<platform>MOD|MYD)(?P<product>021KM|02HKM|02QKM|03)\.A(?P<year>\d{4})(?P<doy>\d{3})"
    r"\.(?P<hhmm>\d{4})\.(?P<collection>\d{3})\.(?P<processed>\d+)\.hdf$",
    re.IGNORECASE,
)
MODIS_PLATFORMS = {"MOD": "Terra", "MYD": "Aqua"}


@dataclass(frozen=True)
class GranuleName:
    platform: str  # Terra / Aqua
    prefix: str  # MOD / MYD
    product: str  # 021KM, 03, ...
    acquired: str  # ISO 8601 start time from the name
    collection: str  # 061
    key: str  # A2021123.1235: pairs a granule with its MOD03

    @classmethod
    def parse(cls, name: str) -> GranuleName | None:
        m = MODIS_NAME.match(name)
        if m is None:
            return None
        start = datetime(int(m["year"]), 1, 1) + timedelta(
            days=int(m["doy"]) - 1, hours=int(m["hhmm"][:2]), minutes=int(m["hhmm"][2:])
        )
        return cls(
            platform=MODIS_PLATFORMS[m["platform"].upper()],
            prefix=m["platform"].upper(),
            product=m["product"].upper(),
            acquired=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            collection=m["collection"],
            key=f"A{m['year']}{m['doy']}.{m['hhmm']}",
        )


# -- Sentinel-2: S2B_MSIL1C_20230601T103629_N0509_R008_T32TQM_20230601T124024.SAFE[.zip] -------
SAFE_NAME = re.compile(
    r"^(?P<mission>S2[A-D])_MSI(?P<level>L1C|L2A)_(?P<sensing>\d{8}T\d{6})_N(?P<baseline>\d{4})"
    r"_R(?P<orbit>\d{3})_T(?P<tile>[0-9A-Z]{5})_(?P<discriminator>\d{8}T\d{6})"
    r"(?P<suffix>\.SAFE|\.SAFE\.zip|\.zip)?$",
    re.IGNORECASE,
)


def safe_kind(path: Path) -> str | None:
    """``sentinel2_l1c_safe`` / ``sentinel2_l2a_safe`` for a .SAFE folder or zip, else None."""
    m = SAFE_NAME.match(path.name)
    if m is None:
        return None
    if path.is_dir() and not m["suffix"]:
        return None
    return f"sentinel2_{m['level'].lower()}_safe"


def safe_stem(path: Path) -> str:
    """The product name without ``.SAFE`` / ``.zip``."""
    name = path.name
    for suffix in (".zip", ".SAFE", ".safe"):
        name = name.removesuffix(suffix)
    return name


# -- Landsat: LC08_L1TP_044034_20210508_20210518_02_T1_B4.TIF (C1: ..._01_T1_BQA.TIF) ----------
LANDSAT_FILE = re.compile(
    r"^(?P<pid>L(?P<sensor>[COTEM])(?P<satellite>\d{2})_(?P<level>L1TP|L1GT|L1GS|L2SP|L2SR)_"
    r"(?P<pathrow>\d{6})_(?P<acquired>\d{8})_(?P<processed>\d{8})_(?P<collection>0[12])_"
    r"(?P<tier>T1|T2|RT))_(?P<suffix>[A-Z0-9_]+)\.(?P<ext>TIF|TIFF|txt|json|xml)$",
    re.IGNORECASE,
)
_LANDSAT_BAND = re.compile(r"^(?:SR_|ST_)?(?P<band>B\d{1,2})$", re.IGNORECASE)
LANDSAT_QA = ("QA_PIXEL", "BQA")


@dataclass(frozen=True)
class LandsatFile:
    product_id: str
    kind: str  # landsat_c1_l1, landsat_c2_l1, landsat_c2_l2
    role: str  # band, qa, mtl, other
    token: str  # band token (B4) for bands

    @classmethod
    def parse(cls, name: str) -> LandsatFile | None:
        m = LANDSAT_FILE.match(name)
        if m is None:
            return None
        level = m["level"].upper()
        if level.startswith("L2"):
            kind = "landsat_c2_l2"
        else:
            kind = "landsat_c2_l1" if m["collection"] == "02" else "landsat_c1_l1"
        suffix, ext = m["suffix"].upper(), m["ext"].lower()
        band = _LANDSAT_BAND.match(suffix)
        if ext in ("tif", "tiff") and band:
            return cls(m["pid"], kind, "band", band["band"].upper())
        if ext in ("tif", "tiff") and suffix in LANDSAT_QA:
            return cls(m["pid"], kind, "qa", suffix)
        if suffix == "MTL" and ext in ("txt", "json"):
            return cls(m["pid"], kind, "mtl", "")
        return cls(m["pid"], kind, "other", suffix)


PRODUCT_DESCRIPTIONS = {
    "modis_l1b": "MODIS Level-1B 1-km granule",
    "sentinel2_l1c_safe": "Sentinel-2 L1C .SAFE product",
    "sentinel2_l2a_safe": "Sentinel-2 L2A .SAFE product",
    "landsat_pre_collection_l1": "Landsat pre-collection Level-1 scene",
    "landsat_c1_l1": "Landsat Collection 1 Level-1 scene",
    "landsat_c2_l1": "Landsat Collection 2 Level-1 scene",
    "landsat_c2_l2": "Landsat Collection 2 Level-2 scene",
}
