"""Label rasters for RS segmentation stores: which label goes with which scene, and label
pixels on the scene's tile grid (the class table itself is ``data_pipelines.classes``).

``--labels`` names either one raster that covers every scene (a land-cover map over an area
imaged on several dates) or a folder of rasters matched to scenes by file name: for a scene
``<stem>.tif`` (or a one-file-per-band scene ``<prefix>_B04.tif``) the label is the first of
``<stem>.tif``, ``<stem>_label.tif``, ``<stem>_labels.tif``, ``<stem>_mask.tif`` found in that
folder. A label on another grid or CRS is reprojected to the scene grid with nearest neighbour
(class ids must never be interpolated), through a GDAL warped view read strip by strip.
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
    """A label raster seen on a target grid (nearest neighbour); read by window."""

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
        nodata = self._ds.nodata
        self.source_nodata = int(nodata) if nodata is not None else None
        same = (
            self._ds.transform == transform
            and (self._ds.height, self._ds.width) == (height, width)
            and (not crs or str(self._ds.crs) == crs or _epsg(self._ds.crs) == crs)
        )
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
                nodata=fill,  # pixels the label raster does not cover
            )
        )
        self.dtype = np.dtype(self._ds.dtypes[0])

    def read(self, window: Window) -> np.ndarray:
        """``[h, w]`` class ids; pixels outside the label raster or nodata get ``fill``."""
        if self._view is self._ds:
            data = self._ds.read(1, window=window, boundless=True, fill_value=self.fill)
        else:
            data = self._view.read(1, window=window)
        if self.source_nodata is not None:
            data = np.where(data == self.source_nodata, self.fill, data)
        return data

    def close(self) -> None:
        if self._view is not self._ds:
            self._view.close()
        self._ds.close()


def _epsg(crs: rasterio.crs.CRS | None) -> str:
    if crs is None:
        return ""
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else crs.to_wkt()
