"""Label rasters for RS segmentation stores: which label goes with which scene, and label
pixels on the scene's tile grid (the class table itself is ``data_pipelines.classes``).

``--labels`` names either one raster that covers every scene (a land-cover map over an area
imaged on several dates) or a folder of rasters matched to scenes by file name: for a scene
``<stem>.tif`` (or a one-file-per-band scene ``<prefix>_B04.tif``) the label is the first of
``<stem>.tif``, ``<stem>_label.tif``, ``<stem>_labels.tif``, ``<stem>_mask.tif`` found in that
folder. A label on another grid or CRS is reprojected to the scene grid with nearest neighbour
(class ids must never be interpolated), through a GDAL warped view read strip by strip.

Label rasters may be of any integer type (int8 to uint32; float rasters holding whole numbers
too): values are read as int64, and pixels the raster does not cover or marks as nodata get
the class table's ignore index, so the table decides what every value becomes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from data_pipelines.classes import DEFAULT_IGNORE_INDEX
from data_pipelines.errors import LabelError

LABEL_SUFFIXES = ("", "_label", "_labels", "_mask")


def check_labels_spec(labels: str | None) -> None:
    if labels is not None and not Path(labels).exists():
        raise LabelError(
            f"--labels: {labels} does not exist; give one label raster for all scenes or a "
            f"folder of label rasters named after the scenes"
        )


def match_label(labels: str, scene_files: list[str], scene_id: str) -> str | None:
    """The label raster for a scene, or None when the folder has none for it."""
    p = Path(labels)
    if p.is_file():
        return str(p)
    first = Path(scene_files[0])
    stems = [first.stem]
    token = first.stem.rsplit("_", 1)
    if len(token) == 2 and token[1].upper().startswith("B"):  # one-file-per-band scene
        stems.append(token[0])
    stems.append(Path(scene_id).name)
    for stem in stems:
        for suffix in LABEL_SUFFIXES:
            for ext in (".tif", ".tiff"):
                candidate = p / f"{stem}{suffix}{ext}"
                if candidate.is_file():
                    return str(candidate)
    return None


class LabelReader:
    """A label raster seen on a target grid (nearest neighbour); read by window as int64."""

    def __init__(
        self,
        path: str,
        crs: str,
        transform: rasterio.Affine,
        height: int,
        width: int,
        fill: int = DEFAULT_IGNORE_INDEX,
    ):
        self.path = path
        self.fill = fill
        self._ds = rasterio.open(path)
        if self._ds.count != 1:
            self._ds.close()
            raise LabelError(f"label {Path(path).name} has {self._ds.count} bands; expected 1")
        self.dtype = np.dtype(self._ds.dtypes[0])
        if not (np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating)):
            self._ds.close()
            raise LabelError(f"label {Path(path).name} holds {self.dtype} values, not class ids")
        same = (
            self._ds.transform == transform
            and (self._ds.height, self._ds.width) == (height, width)
            and (not crs or str(self._ds.crs) == crs or _epsg(self._ds.crs) == crs)
        )
        # warped in float64 (exact for every integer type up to 32 bits): NaN marks pixels the
        # label raster does not cover or holds as nodata, whatever the raster's own type
        self._view = (
            self._ds
            if same
            else WarpedVRT(
                self._ds,
                crs=crs or self._ds.crs,
                transform=transform,
                width=width,
                height=height,
                resampling=Resampling.nearest,
                dtype="float64",
                src_nodata=self._ds.nodata,
                nodata=np.nan,
            )
        )

    def read(self, window: Window) -> np.ndarray:
        """``[h, w]`` int64 label values; pixels outside the label raster or nodata get
        ``fill``."""
        if self._view is self._ds:
            data = self._ds.read(1, window=window, boundless=True, masked=True)
            invalid, values = np.ma.getmaskarray(data), np.asarray(data.data)
        else:
            values = self._view.read(1, window=window)
            invalid = np.isnan(values)
        if np.issubdtype(values.dtype, np.floating):
            invalid |= ~np.isfinite(values)
            odd = ~invalid & (values != np.rint(values))
            if odd.any():
                raise LabelError(
                    f"label {Path(self.path).name} has non-integer values (e.g. "
                    f"{values[odd][0]:g}); class ids must be whole numbers"
                )
        return np.where(invalid, self.fill, values).astype(np.int64)

    def close(self) -> None:
        if self._view is not self._ds:
            self._view.close()
        self._ds.close()


def _epsg(crs: rasterio.crs.CRS | None) -> str:
    if crs is None:
        return ""
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else crs.to_wkt()
