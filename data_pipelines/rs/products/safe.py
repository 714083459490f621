"""Sentinel-2 ``.SAFE`` products, Level-1C and Level-2A, as folders or as the zips ESA serves.

Layout read (PSD 14.x, single-tile products)::

    S2B_MSIL1C_<sensing>_N0509_R008_T32TQM_<discriminator>.SAFE/
        MTD_MSIL1C.xml                      product metadata (MTD_MSIL2A.xml for L2A)
        GRANULE/L1C_T32TQM_.../IMG_DATA/T32TQM_<sensing>_B01.jp2 ... _B12.jp2, _B8A.jp2
        GRANULE/L1C_T32TQM_.../QI_DATA/MSK_CLASSI_B00.jp2    (baseline >= 04.00)
    L2A: GRANULE/L2A_.../IMG_DATA/R10m|R20m|R60m/T32TQM_<sensing>_B02_10m.jp2, ..._SCL_20m.jp2

Radiometry comes from the product metadata, band by band: reflectance = (DN + offset) /
quantification, with ``QUANTIFICATION_VALUE`` and ``RADIO_ADD_OFFSET[band_id]`` (L1C) or
``BOA_QUANTIFICATION_VALUE`` and ``BOA_ADD_OFFSET[band_id]`` (L2A); ``band_id`` is mapped to a
band name through ``Spectral_Information[@bandId, @physicalBand]``. Products of baseline < 04.00
have no offsets (0 by definition). A product of baseline >= 04.00 (or of unknown baseline)
without an offset for every band cannot be calibrated without guessing and is quarantined.

Cloud masks: L1C ``MSK_CLASSI_B00`` (three 60 m bands: opaque clouds, cirrus, snow/ice),
packed here into bits 0, 1, 2 of one QA value; L2A the scene classification ``SCL`` (20 m).
Both are brought to the 10 m grid by nearest neighbour.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from data_pipelines.rs.products import ProductInfo
from data_pipelines.rs.products.names import safe_kind, safe_stem
from data_pipelines.rs.products.registry import calibrator_when, own_grid_reader, register_product
from data_pipelines.rs.profiles import SensorProfile, normalize_band_token
from data_pipelines.rs.scene import (
    BandSource,
    Discovery,
    Listing,
    Scene,
    SceneError,
    SceneReader,
    not_read,
    scene_id_for,
)
from data_pipelines.rs.toa import sentinel2_product_calibrator

# band_id -> band, as the product specification numbers them (used when the MTD XML has no
# Spectral_Information list)
S2_BAND_IDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
# IMG_DATA/QI_DATA file names: ..._B02.jp2 (L1C), ..._B02_10m.jp2 / ..._SCL_20m.jp2 (L2A)
_IMAGE_FILE = re.compile(r"_(?P<band>B\d{2}|B8A|SCL)(?:_(?P<res>\d{2})m)?\.jp2$", re.IGNORECASE)
MSK_CLASSI = "MSK_CLASSI_B00"
CLASSI_BANDS = 3  # opaque clouds, cirrus, snow/ice -> bits 0, 1, 2


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_all(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if _local(e.tag) == name]


def _text(root: ET.Element, name: str) -> str | None:
    found = _find_all(root, name)
    return found[0].text.strip() if found and found[0].text else None


@dataclass(frozen=True)
class SafeMetadata:
    """What the product's MTD_MSIL1C.xml / MTD_MSIL2A.xml says."""

    level: str  # L1C / L2A
    baseline: str | None
    platform: str | None
    acquired: str | None
    product_uri: str | None
    quantification: float | None
    offsets: dict[str, float]  # normalized band name -> DN offset, as listed
    offset_element: str  # RADIO_ADD_OFFSET / BOA_ADD_OFFSET

    @classmethod
    def parse(cls, text: bytes, level: str) -> SafeMetadata:
        root = ET.fromstring(text)
        names = dict(enumerate(S2_BAND_IDS))
        for e in _find_all(root, "Spectral_Information"):
            if e.get("bandId") is not None and e.get("physicalBand"):
                names[int(e.get("bandId"))] = e.get("physicalBand")
        element = "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET"
        offsets = {}
        for e in _find_all(root, element):
            band = names.get(int(e.get("band_id", "-1")))
            if band is not None and e.text:
                offsets[normalize_band_token(band)] = float(e.text)
        q_name = "QUANTIFICATION_VALUE" if level == "L1C" else "BOA_QUANTIFICATION_VALUE"
        q = _text(root, q_name)
        return cls(
            level=level,
            baseline=_text(root, "PROCESSING_BASELINE"),
            platform=_text(root, "SPACECRAFT_NAME"),
            acquired=_text(root, "PRODUCT_START_TIME"),
            product_uri=_text(root, "PRODUCT_URI"),
            quantification=float(q) if q else None,
            offsets=offsets,
            offset_element=element,
        )

    def radiometry(self, profile: SensorProfile, mtd_name: str) -> dict[str, Any]:
        """Quantification and per-band offsets for the profile's bands, or the problem why they
        cannot be determined (the calibrator refuses such a product)."""
        out: dict[str, Any] = {"metadata": mtd_name, "quantification": self.quantification}
        wanted = [normalize_band_token(b) for b in profile.band_names]
        if self.quantification is None:
            q = "QUANTIFICATION_VALUE" if self.level == "L1C" else "BOA_QUANTIFICATION_VALUE"
            return out | {"problem": f"{mtd_name} has no {q}; cannot calibrate"}
        missing = [b for b in wanted if b not in self.offsets]
        if not missing:
            offsets = {p: self.offsets[w] for p, w in zip(profile.band_names, wanted, strict=True)}
            return out | {"offsets": offsets}
        if self.offsets or self.baseline_number is None or self.baseline_number >= 4.0:
            baseline = self.baseline or "unknown"
            return out | {
                "problem": f"processing baseline {baseline} but {mtd_name} has no "
                f"{self.offset_element} for {', '.join(missing)}; the offset cannot be "
                f"determined, so the product is not calibrated (never guessed)"
            }
        return out | {"offsets": dict.fromkeys(profile.band_names, 0.0)}  # < 04.00: none

    @property
    def baseline_number(self) -> float | None:
        try:
            return float(self.baseline) if self.baseline else None
        except ValueError:
            return None


class SafeProduct:
    """The files of a .SAFE folder or zip: member names and how GDAL opens them."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.is_zip = self.path.is_file()
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.path) as z:
                    self.members = [n for n in z.namelist() if not n.endswith("/")]
            except (zipfile.BadZipFile, OSError) as e:
                raise SceneError(f"{self.path.name} is not a readable zip: {e}") from None
        else:
            self.members = [
                str(f.relative_to(self.path).as_posix())
                for f in self.path.rglob("*")
                if f.is_file()
            ]

    def find(self, pattern: str) -> list[str]:
        rx = re.compile(pattern, re.IGNORECASE)
        return sorted(m for m in self.members if rx.search(m))

    def read_bytes(self, member: str) -> bytes:
        if self.is_zip:
            with zipfile.ZipFile(self.path) as z:
                return z.read(member)
        return (self.path / member).read_bytes()

    def gdal_path(self, member: str) -> str:
        if self.is_zip:
            return f"/vsizip/{self.path.resolve()}/{member}"
        return str(self.path / member)


def band_files(product: SafeProduct, profile: SensorProfile, level: str) -> list[tuple[str, str]]:
    """(band token, GDAL path) of each profile band, at the band's native resolution (L2A)."""
    images = product.find(r"(^|/)GRANULE/[^/]+/IMG_DATA/.*\.jp2$")
    granules = {PurePosixPath(m).parts[-3 if level == "L1C" else -4] for m in images}
    if len(granules) > 1:
        raise SceneError(
            f"holds {len(granules)} granules (a pre-2016 multi-tile product); only single-tile "
            f"products are read"
        )
    by_band: dict[str, dict[int, str]] = {}
    for m in images:
        match = _IMAGE_FILE.search(m)
        if match:
            res = int(match["res"]) if match["res"] else 0
            by_band.setdefault(normalize_band_token(match["band"]), {})[res] = m
    out = []
    for band in profile.bands:
        found = by_band.get(normalize_band_token(band.name))
        if not found:
            raise SceneError(f"no IMG_DATA file for band {band.name} (profile {profile.name})")
        native = int(band.resolution_m or 0)
        res = native if native in found else min(found)
        out.append((band.name, product.gdal_path(found[res])))
    return out


def mask_file(product: SafeProduct, level: str) -> tuple[str, str] | None:
    """(kind, GDAL path) of the cloud mask: L1C MSK_CLASSI, L2A SCL (20 m, else 60 m)."""
    if level == "L1C":
        found = product.find(rf"(^|/)GRANULE/[^/]+/QI_DATA/{MSK_CLASSI}\.(jp2|tif)$")
        return ("MSK_CLASSI", product.gdal_path(found[0])) if found else None
    for res in ("20", "60"):
        found = product.find(rf"(^|/)GRANULE/[^/]+/IMG_DATA/R{res}m/[^/]*_SCL_{res}m\.jp2$")
        if found:
            return ("SCL", product.gdal_path(found[0]))
    return None


class SafeReader(SceneReader):
    """A .SAFE product as a scene: its JP2 bands on the 10 m grid, its radiometry and mask."""

    def __init__(self, scene: Scene, profile: SensorProfile, resampling: str = "bilinear"):
        super().__init__(scene, profile, resampling)
        self.kind = scene.product or safe_kind(Path(scene.files[0][1])) or ""
        self.profile = profile.for_product(self.kind)
        self._mask_kind: str | None = None

    def _open(self) -> None:
        path = self.scene.files[0][1]
        product = SafeProduct(path)
        level = "L1C" if "l1c" in self.kind else "L2A"
        mtd_name = f"MTD_MSI{level}.xml"
        mtd = product.find(rf"(^|/)[^/]+\.SAFE/{mtd_name}$") or product.find(rf"(^|/){mtd_name}$")
        if not mtd:
            raise SceneError(f"no {mtd_name} in {Path(path).name}; not a complete .SAFE product")
        try:
            meta = SafeMetadata.parse(product.read_bytes(mtd[0]), level)
        except ET.ParseError as e:
            raise SceneError(f"{mtd_name} is not valid XML: {e}") from None
        files = band_files(product, self.profile, level)
        mask = mask_file(product, level)
        self._open_files(files, None)
        if mask is not None:
            self._mask_kind = mask[0]
            ds = self._open_file(mask[1])
            self._check_extent(ds)
            self._qa = BandSource(ds, 1, ds.transform == self.grid.transform)
        self.product = ProductInfo(
            kind=self.kind,
            product_id=safe_stem(Path(meta.product_uri or path)),
            platform=meta.platform,
            acquired=meta.acquired,
            processing_baseline=meta.baseline,
            calibration=meta.radiometry(self.profile, mtd_name) | {"mask": self._mask_kind},
        )

    def _mask_name(self) -> str:
        return self._mask_kind or "QA band"

    def read_qa(self, window: Window) -> np.ndarray | None:
        """SCL classes, or MSK_CLASSI's three bands packed into bits 0-2, on the 10 m grid."""
        if self._qa is None:
            return None
        if self._mask_kind == "SCL":
            return super().read_qa(window)
        packed = np.zeros((int(window.height), int(window.width)), dtype=np.uint8)
        count = min(self._qa.dataset.count, CLASSI_BANDS)
        for bit in range(count):
            src = BandSource(self._qa.dataset, bit + 1, self._qa.same_grid)
            band = (
                src.dataset.read(bit + 1, window=window)
                if src.same_grid
                else self._read_resampled(src, window, Resampling.nearest)
            )
            packed |= (band > 0).astype(np.uint8) << bit
        return packed


# -- discovery: the product's file-name rules --------------------------------------------------
def safe_scenes(listing: Listing, profile: SensorProfile, found: Discovery) -> set[Path]:
    """Sentinel-2 .SAFE folders and zips; returns the zip files they claim."""
    files, safe_dirs, root = listing.files, listing.safe_dirs, listing.root
    zips = [f for f in files if f.suffix.lower() == ".zip"]
    claimed = set(zips)
    for path in safe_dirs + zips:
        kind = safe_kind(path)
        if kind is None:
            why = "not a Sentinel-2 product name (S2?_MSIL1C_... or S2?_MSIL2A_...)"
            found.ignored.append((str(path), why))
        elif not profile.reads_product(kind):
            found.ignored.append((str(path), not_read(kind, profile)))
        else:
            scene_id = scene_id_for(path.parent / safe_stem(path), root)
            found.scenes.append(Scene(scene_id, (("", str(path)),), product=kind))
    return claimed


register_product(
    "sentinel2",
    "Sentinel-2 .SAFE products, L1C and L2A, folders or zips",
    own_grid_reader(SafeReader),
    find_scenes=safe_scenes,
    calibrator=calibrator_when("sentinel2", sentinel2_product_calibrator),
)
