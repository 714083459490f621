"""MODIS Level-1B 1-km granules (``MOD021KM`` Terra, ``MYD021KM`` Aqua), HDF4, read with pyhdf.

A granule holds the calibrated-radiance scaled integers (DN, uint16) of all 36 bands in four
swath datasets (SDS), each ``[bands, 10*nscans, Max_EV_frames]``::

    EV_250_Aggr1km_RefSB   bands 1, 2
    EV_500_Aggr1km_RefSB   bands 3-7
    EV_1KM_RefSB           bands 8-19, 26 (13 and 14 as lo/hi)
    EV_1KM_Emissive        bands 20-25, 27-36

Each SDS names its bands in the ``band_names`` attribute (``"1,2"``) and carries per-band
``reflectance_scales``/``reflectance_offsets`` (RefSB) and ``radiance_scales``/
``radiance_offsets``; ``rs.toa`` turns them into reflectance and brightness temperature.
DN above 32767 are flags (fill, saturation, dead detector, ...): nodata. As SatPy does, a pixel
whose ``<SDS>_Uncert_Indexes`` is 15 (no usable uncertainty estimate) is set to the fill value.

Tiles are cut from the swath itself. Each tile's centre latitude/longitude comes from the
granule's 5-km ``Latitude``/``Longitude`` (tie points at 1-km rows 2 and 7 of every 10-line scan
and every 5th frame from frame 2), interpolated within the scan on the unit sphere, or from the
1-km geolocation of a ``MOD03``/``MYD03`` file of the same granule next to it. With a map grid
(``--grid EPSG:n --resolution R``) the granule is resampled (nearest neighbour, pyresample)
before tiling.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from data_pipelines.errors import first_line
from data_pipelines.rs.products import ProductInfo
from data_pipelines.rs.products.names import GranuleName
from data_pipelines.rs.products.registry import calibrator_when, register_product
from data_pipelines.rs.products.swath_grid import resample_granule
from data_pipelines.rs.profiles import SensorProfile, normalize_band_token
from data_pipelines.rs.scene import (
    ClosingReader,
    Discovery,
    Grid,
    Listing,
    Scene,
    SceneError,
    not_read,
    scene_id_for,
)
from data_pipelines.rs.toa import modis_l1b_calibrator

KIND = "modis_l1b"
EV_DATASETS = ("EV_250_Aggr1km_RefSB", "EV_500_Aggr1km_RefSB", "EV_1KM_RefSB", "EV_1KM_Emissive")
EMISSIVE_DATASET = "EV_1KM_Emissive"
FILL_DN = 65535
UNCERTAIN_INDEX = 15  # SatPy masks pixels whose uncertainty index is 15
ROWS_PER_SCAN = 10  # 1-km lines per scan
TIE_ROWS = (2, 7)  # 1-km line of each 5-km row within a scan
TIE_COL0, TIE_STEP = 2, 5  # 1-km frame of the first 5-km column, and the spacing


# -- reading the HDF4 granule --------------------------------------------------------------------


@dataclass(frozen=True)
class BandSource:
    """Where one profile band lives in the granule, with its scale and offset."""

    band: str  # MODIS band number as in band_names ("31")
    sds: str
    index: int  # position along the SDS's band dimension
    scale: float
    offset: float


def open_hdf(path: str):
    from pyhdf.error import HDF4Error
    from pyhdf.SD import SD, SDC

    try:
        return SD(path, SDC.READ)
    except HDF4Error as e:
        raise SceneError(f"cannot open {Path(path).name} as HDF4: {first_line(e)}") from None


def band_sources(sd: Any, profile: SensorProfile, name: str) -> list[BandSource]:
    """The SDS, band index, scale and offset of every profile band (profile order)."""
    datasets = sd.datasets()
    table: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for sds_name in EV_DATASETS:
        if sds_name not in datasets:
            continue
        attrs = sd.select(sds_name).attributes()
        for i, band in enumerate(str(attrs.get("band_names", "")).split(",")):
            table[band.strip().strip("\x00")] = (sds_name, i, attrs)
    out = []
    for b in profile.bands:
        band = normalize_band_token(b.name).removeprefix("B")
        if band not in table:
            raise SceneError(
                f"{name} has no MODIS band {band} (profile {profile.name} band {b.name}) in "
                f"{', '.join(d for d in EV_DATASETS if d in datasets) or 'any EV_* dataset'}"
            )
        sds_name, i, attrs = table[band]
        emissive = sds_name == EMISSIVE_DATASET
        if emissive != (b.kind == "emissive"):
            raise SceneError(
                f"profile {profile.name} band {b.name} is {b.kind} but MODIS band {band} is in "
                f"{sds_name}"
            )
        prefix = "radiance" if emissive else "reflectance"
        try:
            scale = float(np.asarray(attrs[f"{prefix}_scales"]).ravel()[i])
            offset = float(np.asarray(attrs[f"{prefix}_offsets"]).ravel()[i])
        except (KeyError, IndexError):
            raise SceneError(
                f"{name}: {sds_name} lacks {prefix}_scales/{prefix}_offsets for band {band}; "
                f"cannot calibrate"
            ) from None
        out.append(BandSource(band, sds_name, i, scale, offset))
    return out


def core_metadata_value(sd: Any, key: str) -> str | None:
    """``VALUE`` of ``OBJECT = key`` in the granule's ECS ``CoreMetadata.0`` (ODL text)."""
    text = sd.attributes().get("CoreMetadata.0")
    if not isinstance(text, str):
        return None
    m = re.search(
        rf"OBJECT\s*=\s*{key}\b.*?VALUE\s*=\s*\"?([^\"\n]*)\"?\s*\n.*?END_OBJECT\s*=\s*{key}\b",
        text,
        re.DOTALL,
    )
    return m.group(1).strip() if m else None


def day_night(sd: Any) -> str | None:
    """Day / Night / Mixed from the ECS metadata, else from the day/night scan counts."""
    flag = core_metadata_value(sd, "DAYNIGHTFLAG")
    if flag:
        return flag
    attrs = sd.attributes()
    day, night = attrs.get("Number of Day mode scans"), attrs.get("Number of Night mode scans")
    if day is None or night is None:
        return None
    return "Mixed" if day and night else ("Day" if day else "Night")


def acquisition_start(sd: Any, fallback: str) -> str:
    date = core_metadata_value(sd, "RANGEBEGINNINGDATE")
    time = core_metadata_value(sd, "RANGEBEGINNINGTIME")
    if date and time:
        return f"{date}T{time.split('.')[0]}Z"
    return fallback


# -- geolocation ---------------------------------------------------------------------------------


def to_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit vectors ``[..., 3]`` of latitudes/longitudes in degrees."""
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def from_xyz(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes and longitudes in degrees of vectors ``[..., 3]`` (any length)."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def _tie_weights(row: np.ndarray, col: np.ndarray, shape5: tuple[int, int]):
    """Scan, along-track weight, tie column and along-scan weight of 1-km positions."""
    n_scans = shape5[0] // len(TIE_ROWS)
    scan = np.clip(np.floor(row / ROWS_PER_SCAN).astype(int), 0, n_scans - 1)
    t = (row - ROWS_PER_SCAN * scan - TIE_ROWS[0]) / (TIE_ROWS[1] - TIE_ROWS[0])
    u = (col - TIE_COL0) / TIE_STEP
    j0 = np.clip(np.floor(u).astype(int), 0, shape5[1] - 2)
    return scan, t, j0, u - j0


def interpolate_5km(
    lat5: np.ndarray,
    lon5: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    xyz5: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Latitude/longitude at 1-km positions ``(row, col)`` (any shape, fractional) from the 5-km
    tie points, bilinear within the scan (extrapolated at scan and swath edges) on the unit
    sphere. NaN where a tie point is fill. ``xyz5``: the tie points' ``to_xyz``, when the
    caller interpolates many times over one granule (the conversion dominates small queries)."""
    row, col = np.asarray(row, dtype=np.float64), np.asarray(col, dtype=np.float64)
    scan, t, j0, fu = _tie_weights(row, col, lat5.shape)
    bad = (lat5 < -90) | (lat5 > 90) | (lon5 < -180) | (lon5 > 180)
    if xyz5 is None:
        xyz5 = to_xyz(lat5, lon5)
    r0 = len(TIE_ROWS) * scan
    corners = [(r0, j0), (r0, j0 + 1), (r0 + 1, j0), (r0 + 1, j0 + 1)]
    weights = [(1 - t) * (1 - fu), (1 - t) * fu, t * (1 - fu), t * fu]
    xyz = sum(w[..., None] * xyz5[r, c] for (r, c), w in zip(corners, weights, strict=True))
    lat, lon = from_xyz(xyz)
    invalid = np.zeros(lat.shape, dtype=bool)
    for r, c in corners:
        invalid |= bad[r, c]
    return np.where(invalid, np.nan, lat), np.where(invalid, np.nan, lon)


def swath_lonlat_1km(lat5: np.ndarray, lon5: np.ndarray, height: int, width: int):
    """1-km latitude/longitude ``[height, width]`` of the whole swath from the 5-km tie points."""
    lat = np.empty((height, width), dtype=np.float64)
    lon = np.empty((height, width), dtype=np.float64)
    xyz5 = to_xyz(lat5, lon5)
    step = ROWS_PER_SCAN * 20  # twenty scans at a time: bounded temporary memory
    for r0 in range(0, height, step):
        rows, cols = np.meshgrid(
            np.arange(r0, min(r0 + step, height)), np.arange(width), indexing="ij"
        )
        lat[r0 : r0 + step], lon[r0 : r0 + step] = interpolate_5km(lat5, lon5, rows, cols, xyz5)
    return lat, lon


def window_bounds(window: Window) -> tuple[int, int, int, int]:
    """``window`` as whole pixels: (row offset, column offset, height, width)."""
    return int(window.row_off), int(window.col_off), int(window.height), int(window.width)


def centre_from_1km(lat: np.ndarray, lon: np.ndarray) -> tuple[float | None, float | None]:
    """The centre of a 1-km geolocation window: the mean of its central 2x2 (or 1) pixels."""
    h, w = lat.shape
    rs = slice((h - 1) // 2, h // 2 + 1)
    cs = slice((w - 1) // 2, w // 2 + 1)
    la, lo = lat[rs, cs], lon[rs, cs]
    if not (np.isfinite(la).all() and (np.abs(la) <= 90).all() and (np.abs(lo) <= 180).all()):
        return None, None
    c_lat, c_lon = from_xyz(to_xyz(la, lo).mean(axis=(0, 1)))
    return float(c_lat), float(c_lon)


class Geolocation:
    """Tile-centre latitude/longitude of a granule: MOD03 (1 km) when given, else 5-km ties."""

    def __init__(self, sd: Any, geo_path: str | None, height: int, width: int):
        self.source = "5-km tie points"
        self._geo = None
        if geo_path:
            geo = open_hdf(geo_path)
            shape = tuple(geo.select("Latitude").info()[2])
            if shape != (height, width):
                raise SceneError(
                    f"{Path(geo_path).name} has {shape[0]}x{shape[1]} geolocation but the "
                    f"granule is {height}x{width}; it belongs to another granule"
                )
            self._geo = geo
            self.source = Path(geo_path).name
        else:
            self.lat5 = sd.select("Latitude").get().astype(np.float64)
            self.lon5 = sd.select("Longitude").get().astype(np.float64)
            self.xyz5 = to_xyz(self.lat5, self.lon5)  # once per granule, not per tile

    def centre(self, window: Window) -> tuple[float | None, float | None]:
        r0, c0, h, w = window_bounds(window)
        if self._geo is not None:
            start, count = [r0 + (h - 1) // 2, c0 + (w - 1) // 2], [2 - h % 2, 2 - w % 2]
            lat = self._geo.select("Latitude").get(start=start, count=count).astype(np.float64)
            lon = self._geo.select("Longitude").get(start=start, count=count).astype(np.float64)
            return centre_from_1km(lat, lon)
        lat, lon = interpolate_5km(
            self.lat5,
            self.lon5,
            np.array(r0 + (h - 1) / 2),
            np.array(c0 + (w - 1) / 2),
            self.xyz5,
        )
        if not np.isfinite(lat):
            return None, None
        return float(lat), float(lon)

    def full_1km(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        if self._geo is not None:
            lat = self._geo.select("Latitude").get().astype(np.float64)
            lon = self._geo.select("Longitude").get().astype(np.float64)
            return lat, lon
        return swath_lonlat_1km(self.lat5, self.lon5, height, width)

    def close(self) -> None:
        if self._geo is not None:
            self._geo.end()


# -- the scene reader ----------------------------------------------------------------------------


class ModisGranuleReader(ClosingReader):
    """A MOD021KM/MYD021KM granule as a scene: ``read_window`` gives DN ``[C, h, w]`` (uint16)
    in profile band order, on the swath grid or (``swath_grid``) resampled to a map grid."""

    def __init__(
        self,
        scene: Scene,
        profile: SensorProfile,
        swath_grid: tuple[str, float] | None = None,
    ):
        self.scene = scene
        self.base_profile = profile
        self.profile = profile.for_product(KIND)
        self.path = scene.files[0][1]
        self.geo_path = scene.metadata_files[0] if scene.metadata_files else None
        self.swath_grid = swath_grid
        self.product: ProductInfo | None = None
        self.grid: Grid | None = None
        self.dtype = np.dtype(np.uint16)
        self._stack = ExitStack()
        self._sources: list[BandSource] = []
        self._resampled = None  # (pixels [C, H, W], to_lonlat) with a map grid

    def _enter(self) -> None:
        self._open()

    def _open(self) -> None:
        name = Path(self.path).name
        self.sd = open_hdf(self.path)
        self._stack.callback(self.sd.end)
        self._sources = band_sources(self.sd, self.profile, name)
        shapes = {tuple(self.sd.select(s.sds).info()[2][1:]) for s in self._sources}
        if len(shapes) != 1:
            raise SceneError(f"{name}: the EV_* datasets disagree on the swath size {shapes}")
        height, width = shapes.pop()
        self.geolocation = Geolocation(self.sd, self.geo_path, height, width)
        self._stack.callback(self.geolocation.close)
        parsed = GranuleName.parse(name)
        self.product = ProductInfo(
            kind=KIND,
            product_id=Path(self.path).stem,
            platform=core_metadata_value(self.sd, "ASSOCIATEDPLATFORMSHORTNAME")
            or (parsed.platform if parsed else None),
            acquired=acquisition_start(self.sd, parsed.acquired if parsed else None),
            day_night=day_night(self.sd),
            processing_baseline=f"C{parsed.collection}" if parsed else None,
            calibration={
                "bands": [
                    {"band": s.band, "sds": s.sds, "scale": s.scale, "offset": s.offset}
                    for s in self._sources
                ],
                "geolocation": self.geolocation.source,
            },
        )
        self.grid = Grid(height, width, _identity(), "")
        if self.swath_grid is not None:
            pixels = self._read_rows(0, height, 0, width)
            lat, lon = self.geolocation.full_1km(height, width)
            self._resampled, self.grid = resample_granule(pixels, lat, lon, *self.swath_grid)

    def _read_rows(self, r0: int, h: int, c0: int, w: int) -> np.ndarray:
        """DN ``[C, h, w]``; pixels without an uncertainty estimate set to the fill value."""
        out = np.empty((len(self._sources), h, w), dtype=np.uint16)
        by_sds: dict[str, list[int]] = {}
        for c, s in enumerate(self._sources):
            by_sds.setdefault(s.sds, []).append(c)
        datasets = self.sd.datasets()
        for sds_name, channels in by_sds.items():
            idx = [self._sources[c].index for c in channels]
            b0, nb = min(idx), max(idx) - min(idx) + 1
            start, count = [b0, r0, c0], [nb, h, w]
            block = self.sd.select(sds_name).get(start=start, count=count)  # [nb, h, w]
            picked = block[[i - b0 for i in idx]]
            if f"{sds_name}_Uncert_Indexes" in datasets:
                uncert = self.sd.select(f"{sds_name}_Uncert_Indexes").get(start=start, count=count)
                picked[uncert[[i - b0 for i in idx]] >= UNCERTAIN_INDEX] = FILL_DN
            out[channels] = picked
        return out

    def read_window(self, window: Window) -> np.ndarray:
        r0, c0, h, w = window_bounds(window)
        if self._resampled is not None:
            return self._resampled[0][:, r0 : r0 + h, c0 : c0 + w]
        try:
            return self._read_rows(r0, h, c0, w)
        except Exception as e:  # pyhdf raises HDF4Error for damaged data
            raise SceneError(f"read failed at rows {r0}-{r0 + h}: {first_line(e)}") from None

    def read_qa(self, window: Window) -> None:
        return None  # L1B flags live in the DN (> 32767): nodata, no separate QA band

    def tags(self) -> dict[str, str]:
        return {}

    def tile_metadata(self, window: Window) -> dict[str, float | None]:
        if self._resampled is not None:
            lat, lon = self._resampled[1](window)
        else:
            lat, lon = self.geolocation.centre(window)
        return {"lat": lat, "lon": lon}

    # the L1B granule holds no cloud mask (that is MOD35, not read): clouds are not checked
    cloud_mask: str | None = None

    def scene_columns(self) -> dict[str, str | None]:
        return self.product.scene_columns()


def _identity():
    import rasterio

    return rasterio.Affine.identity()


# -- discovery: the product's file-name rules --------------------------------------------------
def modis_scenes(listing: Listing, profile: SensorProfile, found: Discovery) -> set[Path]:
    """MOD021KM/MYD021KM granules (with their MOD03/MYD03); returns the files they claim."""
    files, root = listing.files, listing.root
    names = {f: GranuleName.parse(f.name) for f in files}
    names = {f: n for f, n in names.items() if n is not None}
    geo = {(f.parent, n.prefix, n.key): f for f, n in names.items() if n.product == "03"}
    for f, n in names.items():
        if n.product == "03":
            continue
        if n.product != "021KM":
            found.ignored.append(
                (str(f), f"{n.prefix}{n.product} is not read; the 1-km granules "
                 f"{n.prefix}021KM hold all 36 bands")
            )  # fmt: skip
        elif not profile.reads_product("modis_l1b"):
            found.ignored.append((str(f), not_read("modis_l1b", profile)))
        else:
            mod03 = geo.get((f.parent, n.prefix, n.key))
            found.scenes.append(
                Scene(
                    scene_id=scene_id_for(f.with_suffix(""), root),
                    files=(("", str(f)),),
                    metadata_files=(str(mod03),) if mod03 else (),
                    product="modis_l1b",
                )
            )
    return set(names)


register_product(
    KIND,
    "MODIS Level-1B 1-km granules (MOD021KM/MYD021KM, HDF4)",
    lambda scene, profile, resampling, swath_grid: ModisGranuleReader(scene, profile, swath_grid),
    find_scenes=modis_scenes,
    calibrator=calibrator_when("modis_toa", modis_l1b_calibrator),
)
