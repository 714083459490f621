"""STAC fixtures written in code: COG band files and the Item/ItemCollection JSON that lists them.

Items follow what public catalogs publish (Earth Search style): one COG asset per band with
``eo:bands`` (name, common name, centre wavelength in micrometres) and ``raster:bands`` (scale,
offset, nodata), ``eo:cloud_cover`` and ``platform`` in the properties.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
# Sentinel-2 L2A bands: (name, common name, centre wavelength um, resolution m)
S2_BANDS = [
    ("B01", "coastal", 0.443, 60), ("B02", "blue", 0.490, 10), ("B03", "green", 0.560, 10),
    ("B04", "red", 0.665, 10), ("B05", "rededge", 0.704, 20), ("B06", "rededge", 0.740, 20),
    ("B07", "rededge", 0.783, 20), ("B08", "nir", 0.842, 10), ("B8A", "nir08", 0.865, 20),
    ("B09", "nir09", 0.945, 60), ("B11", "swir16", 1.610, 20), ("B12", "swir22", 2.190, 20),
]  # fmt: skip
# Earth Search asset keys of the same bands (matched by common name + wavelength, not by key)
EARTH_SEARCH_KEYS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B11": "swir16", "B12": "swir22",
}  # fmt: skip


def write_cog(src_or_array: Path | np.ndarray, dst: Path, **profile: Any) -> Path:
    """A cloud-optimized GeoTIFF (GDAL's COG driver, 128 px internal tiles) of a file or array."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src_or_array, Path):
        with rasterio.open(src_or_array) as src:
            data, profile = src.read(), dict(src.profile)
    else:
        data = src_or_array[None] if src_or_array.ndim == 2 else src_or_array
    out = {k: profile[k] for k in ("crs", "transform", "nodata") if profile.get(k) is not None}
    with rasterio.open(
        dst, "w", driver="COG", width=data.shape[-1], height=data.shape[-2], count=data.shape[0],
        dtype=data.dtype, blocksize=128, compress="deflate", overview_resampling="nearest", **out,
    ) as f:  # fmt: skip
        f.write(data)
    return dst


def synthetic_s2_scene(folder: Path, name: str, seed: int, size: int = 96) -> dict[str, Path]:
    """One Sentinel-2 L2A-like scene as 12 COG band files ``<name>_<band>.tif`` (10/20/60 m
    grids over one extent), smooth fields plus noise so that tiles are neither constant nor
    duplicates. Returns band -> path."""
    rng = np.random.default_rng(seed)
    transform_10m = from_origin(500000.0 + seed * 5000, 4600000.0, 10.0, 10.0)
    paths = {}
    for i, (band, _, _, res) in enumerate(S2_BANDS):
        n = size * 10 // res
        yy, xx = np.mgrid[0:n, 0:n] / n
        field = 1500 + 800 * np.sin(6 * xx + seed + i) * np.cos(4 * yy - i) + 200 * i
        dn = np.clip(field + rng.normal(0, 60, (n, n)), 1, 20000).astype(np.uint16)
        t = transform_10m * transform_10m.scale(res / 10.0)
        paths[band] = write_cog(
            dn, folder / f"{name}_{band}.tif", crs="EPSG:32633", transform=t, nodata=0
        )
    return paths


def stac_item(
    item_id: str,
    hrefs: dict[str, str],
    *,
    keys: dict[str, str] | None = None,
    scale: float = 1e-4,
    offset: float = 0.0,
    cloud_cover: float = 12.5,
    datetime: str = "2021-06-01T10:30:00Z",
    bbox: tuple[float, float, float, float] = (14.0, 45.0, 14.1, 45.1),
) -> dict[str, Any]:
    """A STAC 1.0 Item with one COG asset per band in ``hrefs`` (band -> href); asset keys are
    the band names unless ``keys`` maps them (e.g. Earth Search's ``red``, ``nir``)."""
    meta = {b: (cn, wl) for b, cn, wl, _ in S2_BANDS}
    assets = {}
    for band, href in hrefs.items():
        cn, wl = meta.get(band, (None, None))
        eo = {"name": (keys or {}).get(band, band)}
        if cn:
            eo.update(common_name=cn, center_wavelength=wl)
        assets[(keys or {}).get(band, band)] = {
            "href": href,
            "type": COG_MEDIA_TYPE,
            "roles": ["data"],
            "eo:bands": [eo],
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": scale,
                              "offset": offset}],
        }  # fmt: skip
    w, s, e, n = bbox
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": STAC_EXTENSIONS,
        "id": item_id,
        "bbox": list(bbox),
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]],
        },
        "properties": {
            "datetime": datetime,
            "platform": "sentinel-2a",
            "eo:cloud_cover": cloud_cover,
            "s2:processing_baseline": "03.00",
        },
        "links": [],
        "assets": assets,
    }


def item_collection(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": items}


def write_json(doc: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return path


def bigearthnet_cogs(shared: Path, dst: Path, n: int = 3) -> dict[str, dict[str, Path]]:
    """The band files of the first ``n`` real BigEarthNet-S2 patches rewritten as COGs into the
    one folder ``dst`` (original names ``<patch>_<band>.tif``). Returns patch -> band -> path."""
    out = {}
    for patch in sorted((shared / "rs" / "bigearthnet_s2").iterdir())[:n]:
        bands = {}
        for f in sorted(patch.glob("*_B*.tif")):
            band = f.stem.rsplit("_", 1)[1]
            bands[band] = write_cog(f, dst / f.name)
        out[patch.name] = bands
    return out
