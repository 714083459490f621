"""Landsat-8/9 OLI/TIRS scenes: Level-1 (pre-collection, Collection 1, Collection 2) and
Collection 2 Level-2, one GeoTIFF per band with the product's MTL (text or JSON).

The MTL says what the scene is: ``COLLECTION_NUMBER`` (absent before the collections),
``PROCESSING_LEVEL`` (L1TP/L1GT/L1GS or L2SP/L2SR), ``SPACECRAFT_ID``, ``SENSOR_ID``, the
acquisition date and time. The collection picks the QA layout of the profile
(``products.landsat_c2_l1`` etc.): pre-collection and Collection 1 ``BQA``, Collection 2
``QA_PIXEL`` (bits 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow, 5 snow, 8-15
confidence pairs). A scene the profile does not read (a Level-2 scene under a Level-1 profile,
a Landsat 7 ETM+ scene under an OLI/TIRS profile) is quarantined with the reason.
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.rs.products import ProductInfo
from data_pipelines.rs.products.names import PRODUCT_DESCRIPTIONS, LandsatFile
from data_pipelines.rs.products.registry import own_grid_reader, register_product
from data_pipelines.rs.profiles import SensorProfile, profiles_reading
from data_pipelines.rs.scene import (
    Discovery,
    Listing,
    Scene,
    SceneError,
    SceneReader,
    not_read,
    scene_id_for,
)
from data_pipelines.rs.toa import read_mtl


def kind_from_mtl(values: dict[str, str]) -> str:
    """The product kind an MTL describes."""
    collection = values.get("COLLECTION_NUMBER", "").strip()
    level = (values.get("PROCESSING_LEVEL") or values.get("DATA_TYPE") or "").upper()
    if level.startswith("L2"):
        return "landsat_c2_l2"
    if collection in ("2", "02"):
        return "landsat_c2_l1"
    if collection in ("1", "01"):
        return "landsat_c1_l1"
    return "landsat_pre_collection_l1"


def acquired_from_mtl(values: dict[str, str]) -> str | None:
    date = values.get("DATE_ACQUIRED")
    time = values.get("SCENE_CENTER_TIME")
    if not date:
        return None
    if not time:
        return date
    return f"{date}T{time.split('.')[0].rstrip('Z')}Z"


class LandsatReader(SceneReader):
    """One-file-per-band Landsat scene; the MTL picks the QA layout and names the product."""

    def __init__(self, scene: Scene, profile: SensorProfile, resampling: str = "bilinear"):
        super().__init__(scene, profile, resampling)
        self.base_profile = profile

    def _open(self) -> None:
        scene, base = self.scene, self.base_profile
        kind = scene.product
        values: dict[str, str] = {}
        if scene.metadata_files:
            groups = read_mtl(scene.metadata_files[0])
            for group in groups.values():
                for k, v in group.items():
                    values.setdefault(k, v)
            kind = kind_from_mtl(values)
            self._check_sensor(values)
        if not base.reads_product(kind):
            readers = profiles_reading(kind)
            hint = f"use --profile {' or '.join(readers)}" if readers else "no shipped profile"
            raise SceneError(
                f"{PRODUCT_DESCRIPTIONS[kind]} (from its MTL); profile {base.name} does not "
                f"read it ({hint})"
            )
        self.profile = base.for_product(kind)
        super()._open()
        if values:
            self.product = ProductInfo(
                kind=kind,
                product_id=values.get("LANDSAT_PRODUCT_ID") or values.get("LANDSAT_SCENE_ID")
                or Path(scene.metadata_files[0]).stem.removesuffix("_MTL"),
                platform=values.get("SPACECRAFT_ID"),
                acquired=acquired_from_mtl(values),
                processing_baseline=_collection_label(values),
                calibration={"mtl": Path(scene.metadata_files[0]).name},
            )  # fmt: skip

    def _check_sensor(self, values: dict[str, str]) -> None:
        wanted = self.base_profile.calibration.get("sensor_id")
        sensor = values.get("SENSOR_ID")
        if wanted and sensor and sensor.upper() != str(wanted).upper():
            raise SceneError(
                f"{values.get('SPACECRAFT_ID', 'Landsat')} {sensor} scene; profile "
                f"{self.base_profile.name} reads {wanted} bands (Landsat 8/9)"
            )


def _collection_label(values: dict[str, str]) -> str:
    collection = values.get("COLLECTION_NUMBER")
    level = values.get("PROCESSING_LEVEL") or values.get("DATA_TYPE") or ""
    if not collection:
        return f"pre-collection {level}".strip()
    category = values.get("COLLECTION_CATEGORY", "")
    return f"C{int(collection)} {level} {category}".strip()


# -- discovery: the product's file-name rules --------------------------------------------------
def landsat_scenes(listing: Listing, profile: SensorProfile, found: Discovery) -> set[Path]:
    """Landsat Collection 1/2 products grouped by product id; returns the files they claim."""
    files, root = listing.files, listing.root
    products: dict[tuple[Path, str], list[tuple[Path, LandsatFile]]] = {}
    for f in files:
        parsed = LandsatFile.parse(f.name)
        if parsed is not None:
            products.setdefault((f.parent, parsed.product_id), []).append((f, parsed))
    claimed: set[Path] = set()
    for (folder, pid), members in sorted(products.items()):
        claimed |= {f for f, _ in members}
        kind = members[0][1].kind
        if not profile.reads_product(kind):
            found.ignored.append((str(folder / pid), not_read(kind, profile)))
            continue
        bands, qa, mtl = {}, None, []
        for f, parsed in members:
            if parsed.role == "band":
                if profile.band_index(parsed.token) is None:
                    found.ignored.append(
                        (str(f), f"band {parsed.token} is not in profile {profile.name}")
                    )
                else:
                    bands[parsed.token] = str(f)
            elif parsed.role == "qa":
                qa = str(f)
            elif parsed.role == "mtl":
                mtl.append(str(f))
        if not bands:
            found.ignored.append(
                (str(folder / pid), f"{PRODUCT_DESCRIPTIONS[kind]} without band files")
            )
            continue
        ordered = sorted(bands.items(), key=lambda kv: profile.band_index(kv[0]))
        mtl.sort(key=lambda m: (not m.lower().endswith(".txt"), m))  # the text MTL first
        found.scenes.append(
            Scene(scene_id_for(folder / pid, root), tuple(ordered), qa, tuple(mtl), product=kind)
        )
    return claimed


register_product(
    "landsat",
    "Landsat Level-1 (pre-collection, C1, C2) and C2 Level-2 scenes with their MTL",
    own_grid_reader(LandsatReader),
    find_scenes=landsat_scenes,
)
