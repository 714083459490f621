"""Small Sentinel-2 ``.SAFE`` products in ESA's layout (PSD 14.x, single tile), JP2 via GDAL.

L1C: ``MTD_MSIL1C.xml`` (namespaced ``Level-1C_User_Product`` with ``Product_Info``,
``QUANTIFICATION_VALUE``, ``Radiometric_Offset_List``/``RADIO_ADD_OFFSET[@band_id]``,
``Spectral_Information[@bandId, @physicalBand]``), ``GRANULE/L1C_*/IMG_DATA/T*_B01.jp2 ...``
and ``QI_DATA/MSK_CLASSI_B00.jp2`` (baseline >= 04.00: three 60 m bands: opaque clouds, cirrus,
snow/ice). L2A: ``MTD_MSIL2A.xml`` (``BOA_QUANTIFICATION_VALUE``, ``BOA_ADD_OFFSET``) and
``IMG_DATA/R10m|R20m|R60m/T*_B02_10m.jp2 ...`` with ``SCL_20m``/``SCL_60m``. A 1.2 km tile:
120x120 px at 10 m, 60x60 at 20 m, 20x20 at 60 m. Band JP2s are lossless (reversible).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from tests.data_pipelines.rs.products.modis_files import smooth_field

BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
PHYSICAL = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
RESOLUTION = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
              "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}  # fmt: skip
TILE, SENSING, DISCRIMINATOR = "T32TQM", "20230601T103629", "20230601T124024"
ORIGIN = (600000.0, 5000040.0)
SIZE_M = 1200
JP2 = {"driver": "JP2OpenJPEG", "QUALITY": "100", "REVERSIBLE": "YES"}
L1C_NS = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd"
L2A_NS = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"


@dataclass
class SafeProduct:
    path: Path
    dn: dict[str, np.ndarray]  # band -> DN as written at its native resolution (L2A: R10m etc.)
    offsets: dict[str, int] | None  # band -> offset written in the MTD, None when absent


def safe_name(level: str, baseline: str) -> str:
    return f"S2B_MSI{level}_{SENSING}_N{baseline.replace('.', '')}_R008_{TILE}_{DISCRIMINATOR}.SAFE"


def write_jp2(path: Path, data: np.ndarray, resolution: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path, "w", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype, crs="EPSG:32632",
        transform=from_origin(ORIGIN[0], ORIGIN[1], resolution, resolution), **JP2,
    ) as dst:  # fmt: skip
        dst.write(data)


def band_dn(band: str, resolution: int, seed: int) -> np.ndarray:
    n = SIZE_M // resolution
    field = smooth_field((n, n), seed=seed + BANDS.index(band), sigma=max(1.0, 60 / resolution))
    return (1100 + 3000 * field).astype(np.uint16)  # 1100-4100: reflectance 0.01-0.31 (L1C)


def mtd_xml(level: str, baseline: str, offsets: dict[str, int] | None, quantification=10000):
    """The product metadata in ESA's element names (namespaced root, unqualified children)."""
    ns = L1C_NS if level == "L1C" else L2A_NS
    root = "Level-1C_User_Product" if level == "L1C" else "Level-2A_User_Product"
    spectral = "\n".join(
        f'          <Spectral_Information bandId="{i}" physicalBand="{p}">'
        f"<RESOLUTION>{RESOLUTION[BANDS[i]]}</RESOLUTION></Spectral_Information>"
        for i, p in enumerate(PHYSICAL)
    )
    if level == "L1C":
        quant = f'<QUANTIFICATION_VALUE unit="none">{quantification}</QUANTIFICATION_VALUE>'
        element, wrapper = "RADIO_ADD_OFFSET", "Radiometric_Offset_List"
    else:
        quant = (
            f'<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">{quantification}'
            f'</BOA_QUANTIFICATION_VALUE><AOT_QUANTIFICATION_VALUE unit="none">1000.0'
            f"</AOT_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>"
        )
        element, wrapper = "BOA_ADD_OFFSET", "BOA_ADD_OFFSET_VALUES_LIST"
    offset_list = ""
    if offsets is not None:
        items = "".join(
            f'<{element} band_id="{PHYSICAL.index(_physical(b))}">{v}</{element}>'
            for b, v in offsets.items()
        )
        offset_list = f"<{wrapper}>{items}</{wrapper}>"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{root} xmlns:n1="{ns}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2023-06-01T10:36:29.024Z</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>2023-06-01T10:36:29.024Z</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{safe_name(level, baseline)}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI{level[1:]}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>2023-06-01T12:40:24.000000Z</GENERATION_TIME>
      <Datatake datatakeIdentifier="GS2B_20230601T103629_032555_N{baseline.replace(".", "")}">
        <SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <SENSING_ORBIT_NUMBER>8</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      {quant}
      {offset_list}
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:{root}>
"""


def _physical(band: str) -> str:
    return PHYSICAL[BANDS.index(band)]


def write_l1c(
    folder: Path, baseline: str = "05.09", offsets: bool = True, seed: int = 0
) -> SafeProduct:
    """An L1C .SAFE; baseline >= 04.00 adds the -1000 offsets (unless ``offsets=False``) and
    MSK_CLASSI with opaque clouds, cirrus and snow in three corners."""
    safe = folder / safe_name("L1C", baseline)
    granule = safe / "GRANULE" / f"L1C_{TILE}_A032555_20230601T103630"
    new = float(baseline) >= 4.0
    offset_values = dict.fromkeys(BANDS, -1000) if new and offsets else None
    (safe / "MTD_MSIL1C.xml").parent.mkdir(parents=True, exist_ok=True)
    (safe / "MTD_MSIL1C.xml").write_text(mtd_xml("L1C", baseline, offset_values))
    (safe / "manifest.safe").write_text("<xfdu:XFDU/>\n")
    (granule / "MTD_TL.xml").parent.mkdir(parents=True, exist_ok=True)
    (granule / "MTD_TL.xml").write_text("<n1:Level-1C_Tile_ID/>\n")
    dn = {}
    for band in BANDS:
        dn[band] = band_dn(band, RESOLUTION[band], seed)
        write_jp2(granule / "IMG_DATA" / f"{TILE}_{SENSING}_{band}.jp2", dn[band], RESOLUTION[band])
    write_jp2(granule / "IMG_DATA" / f"{TILE}_{SENSING}_TCI.jp2",
              np.zeros((3, 120, 120), dtype=np.uint8), 10)  # fmt: skip
    if new:
        mask = np.zeros((3, 20, 20), dtype=np.uint8)  # 60 m: 20 px = 1200 m
        mask[0, 0:10, 0:10] = 1  # opaque clouds over the 10 m rows/cols 0-59
        mask[1, 0:10, 12:20] = 1  # cirrus over rows 0-59, cols 72-119
        mask[2, 12:20, 0:10] = 1  # snow/ice over rows 72-119, cols 0-59
        write_jp2(granule / "QI_DATA" / "MSK_CLASSI_B00.jp2", mask, 60)
    return SafeProduct(safe, dn, offset_values)


L2A_FILES = {
    10: ("B02", "B03", "B04", "B08"),
    20: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"),
    60: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"),
}
L2A_OFFSETS = {b: -1000 for b in BANDS if b != "B10"} | {"B03": -1100}  # one differs: by band id


def write_l2a(folder: Path, baseline: str = "05.09", seed: int = 1) -> SafeProduct:
    """An L2A .SAFE with R10m/R20m/R60m bands, BOA_ADD_OFFSET and an SCL with cloud (9),
    cloud shadow (3) and no-data (0) areas."""
    safe = folder / safe_name("L2A", baseline)
    img = safe / "GRANULE" / f"L2A_{TILE}_A032555_20230601T103630" / "IMG_DATA"
    (safe / "MTD_MSIL2A.xml").parent.mkdir(parents=True, exist_ok=True)
    (safe / "MTD_MSIL2A.xml").write_text(mtd_xml("L2A", baseline, L2A_OFFSETS))
    dn = {}
    for res, bands in L2A_FILES.items():
        for band in bands:
            data = band_dn(band, res, seed) + (0 if RESOLUTION[band] == res else 7)
            if RESOLUTION[band] == res:
                dn[band] = data  # the native file; the others are resampled copies
            write_jp2(img / f"R{res}m" / f"{TILE}_{SENSING}_{band}_{res}m.jp2", data, res)
    for res in (20, 60):
        n = SIZE_M // res
        scl = np.full((n, n), 4, dtype=np.uint8)  # vegetation
        a, b = 600 // res, 720 // res  # 10 m rows/cols 60 and 72 at this resolution
        scl[0:a, 0:a] = 9  # cloud high probability: 10 m rows/cols 0-59
        scl[0:a, b:] = 3  # cloud shadows: rows 0-59, cols 72-119
        scl[b:, b:] = 0  # no data: rows 72-119, cols 72-119
        write_jp2(img / f"R{res}m" / f"{TILE}_{SENSING}_SCL_{res}m.jp2", scl, res)
    return SafeProduct(safe, dn, L2A_OFFSETS)


def zip_safe(product: SafeProduct, folder: Path) -> Path:
    """The product as ESA's download: ``<name>.SAFE.zip`` holding the ``<name>.SAFE/`` tree."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / product.path.name
    shutil.make_archive(str(base), "zip", root_dir=product.path.parent, base_dir=product.path.name)
    return Path(f"{base}.zip")
