"""Swath -> map grid: a whole MODIS granule resampled by nearest neighbour (pyresample).

Only used with ``--grid EPSG:n --resolution R``; by default tiles are cut from the swath.
Nearest neighbour keeps every value an original DN (flags included), so calibration and the
nodata rules stay exactly those of the swath. Grid cells no swath pixel reaches within the
radius of influence get the fill value (nodata).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import rasterio
from rasterio.windows import Window

from data_pipelines.rs.scene import Grid, SceneError

FILL_DN = 65535
MAX_GRID_PIXELS = 20000  # per side; more means the resolution is in the wrong units
METRES_PER_DEGREE = 111_320.0


def target_area(lat: np.ndarray, lon: np.ndarray, crs_text: str, resolution: float):
    """The pyresample area covering the swath in ``crs_text`` at ``resolution`` (CRS units)."""
    from pyproj import CRS, Transformer
    from pyresample import geometry

    crs = CRS.from_user_input(crs_text)
    valid = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    if not valid.any():
        raise SceneError("no valid geolocation in the granule; cannot resample it to --grid")
    to_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = to_crs.transform(lon[valid], lat[valid])
    x, y = np.asarray(x), np.asarray(y)
    finite = np.isfinite(x) & np.isfinite(y)
    xmin, xmax, ymin, ymax = x[finite].min(), x[finite].max(), y[finite].min(), y[finite].max()
    width = max(1, math.ceil((xmax - xmin) / resolution))
    height = max(1, math.ceil((ymax - ymin) / resolution))
    if max(width, height) > MAX_GRID_PIXELS:
        unit = crs.axis_info[0].unit_name if crs.axis_info else "CRS units"
        raise SceneError(
            f"--resolution {resolution:g} makes the granule {width}x{height} pixels in {crs_text}; "
            f"give it in {unit}"
        )
    extent = (xmin, ymax - height * resolution, xmin + width * resolution, ymax)
    area = geometry.AreaDefinition("grid", "swath grid", "grid", crs, width, height, extent)
    transform = rasterio.Affine(resolution, 0.0, xmin, 0.0, -resolution, ymax)
    return area, crs, transform


def resample_granule(
    pixels: np.ndarray, lat: np.ndarray, lon: np.ndarray, crs_text: str, resolution: float
) -> tuple[tuple[np.ndarray, Callable[[Window], tuple[float | None, float | None]]], Grid]:
    """DN ``[C, H, W]`` on the swath -> DN ``[C, h, w]`` on the grid, a tile-centre function
    and the grid."""
    from pyproj import Transformer
    from pyresample import geometry, kd_tree

    area, crs, transform = target_area(lat, lon, crs_text, resolution)
    pixel_m = resolution * (METRES_PER_DEGREE if crs.is_geographic else 1.0)
    radius = max(2.5 * pixel_m, 5000.0)  # swath-edge pixels reach ~5 km across track
    swath = geometry.SwathDefinition(lons=lon, lats=lat)
    data = np.moveaxis(pixels, 0, -1)  # [H, W, C]
    out = kd_tree.resample_nearest(
        swath, data, area, radius_of_influence=radius, fill_value=FILL_DN
    )
    gridded = np.ascontiguousarray(np.moveaxis(np.asarray(out), -1, 0)).astype(np.uint16)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def centre(window: Window) -> tuple[float | None, float | None]:
        col = window.col_off + window.width / 2
        row = window.row_off + window.height / 2
        x, y = transform * (col, row)
        lon_c, lat_c = to_lonlat.transform(x, y)
        if not (math.isfinite(lat_c) and math.isfinite(lon_c)):
            return None, None
        return float(lat_c), float(lon_c)

    epsg = crs.to_epsg()
    grid = Grid(
        gridded.shape[1], gridded.shape[2], transform, f"EPSG:{epsg}" if epsg else crs.to_wkt()
    )
    return (gridded, centre), grid
