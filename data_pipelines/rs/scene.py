"""The bottom of the RS input layer: what a scene is and how any scene is read.

``Scene`` (what discovery lists), ``Discovery``, ``Grid``, ``SceneError`` and the reader base
``SceneReader``, which every product's reader extends. This module imports no product and no
discovery code; products build on it and register themselves (``rs.products.registry``), and
``rs.reader.open_scene_reader`` on top is the one door for the build and for prediction.

One rasterio handle per file, opened inside the task that reads it (GDAL handles are not
thread-safe and must not cross a fork). Bands on a coarser grid (Sentinel-2 20/60 m) are read
through the matching fractional window and resampled to the fine grid, so a scene is never
loaded whole. Where that window holds nodata under the profile's convention (ESA's DN 0, Landsat
fill, MODIS flags; ``SensorProfile.valid_raw``), the band is interpolated from its valid pixels
only and nodata stays nodata (``rs.resample.masked_resample``); elsewhere GDAL resamples it.

Every scene reader, for plain rasters and for provider products (``rs.products``), offers the
same interface: a context manager with ``grid``, ``dtype``, ``profile`` (the sensor profile as
it applies to this scene's product), ``product`` (``ProductInfo`` or None), ``read_window``,
``read_qa``, ``tags``, ``tile_metadata`` (per-tile manifest columns such as the centre
latitude/longitude) and ``scene_columns``.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds

from data_pipelines.errors import UserError, first_line
from data_pipelines.remote import is_remote, worker_gdal_options
from data_pipelines.rs.products import EMPTY_SCENE_COLUMNS, ProductInfo
from data_pipelines.rs.products.names import PRODUCT_DESCRIPTIONS
from data_pipelines.rs.profiles import SensorProfile, profiles_reading
from data_pipelines.rs.resample import masked_resample, sample_weights

if TYPE_CHECKING:
    from data_pipelines.rs.stac import StacFacts


@dataclass(frozen=True)
class Scene:
    """One scene: an id, its raster files, and sidecar metadata files (e.g. Landsat MTL)."""

    scene_id: str
    # (band token or "" for a multi-band file, path) in discovery order
    files: tuple[tuple[str, str], ...]
    qa_file: str | None = None
    metadata_files: tuple[str, ...] = ()
    # provider product kind (data_pipelines.rs.profiles.PRODUCT_KINDS), "" for plain rasters
    product: str = ""
    origin: str = ""  # where the scene was listed (a STAC item's href), "" for files found here
    stac: StacFacts | None = None  # what a STAC item says about the scene (rs.stac)

    @property
    def multi_file(self) -> bool:
        return any(token for token, _ in self.files)

    @property
    def paths(self) -> list[str]:
        return [p for _, p in self.files] + ([self.qa_file] if self.qa_file else [])


@dataclass
class Discovery:
    scenes: list[Scene]
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


@dataclass
class Listing:
    """What ``--input`` names: files (rasters and product files), .SAFE folders, the id root."""

    files: list[Path]
    safe_dirs: list[Path]
    root: Path


def scene_id_for(path_without_suffix: Path, root: Path) -> str:
    """A scene's id: its path relative to the input's root, without suffix."""
    try:
        rel = path_without_suffix.resolve().relative_to(root)
    except ValueError:
        rel = Path(path_without_suffix.name)
    return "/".join(rel.parts)


def not_read(kind: str, profile: SensorProfile) -> str:
    """Why a product of ``kind`` is ignored under ``profile``, naming the profiles that read it."""
    readers = profiles_reading(kind)
    hint = (
        f"read it with --profile {' or '.join(readers)}"
        if readers
        else "no shipped profile reads it"
    )
    return f"{PRODUCT_DESCRIPTIONS[kind]}; profile {profile.name} does not read it ({hint})"


# GDAL's block cache defaults to 5 % of RAM per process; strips are read once, so a cache that
# holds a couple of block rows is all that helps, and more only inflates every worker's memory
GDAL_CACHE_MB = 64


class SceneError(UserError, RuntimeError):
    """A scene that cannot be used; the message is the one-line quarantine reason."""


@dataclass(frozen=True)
class Grid:
    height: int
    width: int
    transform: rasterio.Affine
    crs: str  # WKT or "EPSG:n"; "" when the file has none


@dataclass
class BandSource:
    dataset: rasterio.io.DatasetReader
    index: int  # 1-based band index inside ``dataset``
    same_grid: bool


_Reader = TypeVar("_Reader", bound="ClosingReader")


class ClosingReader:
    """The ``with`` protocol of a reader whose open files sit in ``self._stack`` (an
    ``ExitStack``): entering runs :meth:`_enter`, closing what it opened if that fails; leaving
    closes them all."""

    _stack: ExitStack

    def _enter(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Reader) -> _Reader:
        try:
            self._enter()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


class SceneReader(ClosingReader):
    """Open a scene for ``profile``; ``read_rows`` returns ``[C, h, W]`` in profile band order."""

    def __init__(self, scene: Scene, profile: SensorProfile, resampling: str = "bilinear"):
        self.scene = scene
        self.profile = profile  # product readers replace it with ``profile.for_product(kind)``
        self.product: ProductInfo | None = None
        self.resampling = Resampling[resampling]
        self._stack = ExitStack()
        self._sources: list[BandSource] = []
        self._qa: BandSource | None = None
        self.grid: Grid | None = None
        self.dtype: np.dtype | None = None

    # -- opening ---------------------------------------------------------------------------------
    def _enter(self) -> None:
        self._stack.enter_context(
            rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20, **worker_gdal_options())
        )
        self._open()

    def _open_file(self, path: str) -> rasterio.io.DatasetReader:
        try:
            return self._stack.enter_context(rasterio.open(path))
        except rasterio.errors.RasterioIOError as e:
            name = path if is_remote(path) else Path(path).name
            raise SceneError(f"cannot open {name}: {_gdal_reason(path, e)}") from None

    def _open(self) -> None:
        self._open_files(list(self.scene.files), self.scene.qa_file)

    def _open_files(self, files: list[tuple[str, str]], qa_file: str | None) -> None:
        """Open the band files (token, path) and the QA file; set the grid and dtype."""
        profile = self.profile
        if any(token for token, _ in files):
            by_band: dict[int, rasterio.io.DatasetReader] = {}
            for token, path in files:
                idx = profile.band_index(token)
                if idx is not None:
                    by_band[idx] = self._open_file(path)
            missing = [b.name for i, b in enumerate(profile.bands) if i not in by_band]
            if missing:
                raise SceneError(
                    f"missing band files for {', '.join(missing)} (profile {profile.name})"
                )
            datasets = [(by_band[i], 1) for i in range(len(profile.bands))]
        else:
            ds = self._open_file(files[0][1])
            datasets = [(ds, i) for i in self._band_order(ds)]
        fine = min((d for d, _ in datasets), key=lambda d: abs(d.transform.a * d.transform.e))
        self.grid = Grid(
            height=fine.height,
            width=fine.width,
            transform=fine.transform,
            crs=_crs_string(fine.crs),
        )
        for ds, idx in datasets:
            self._check_extent(ds)
            same = ds.transform == fine.transform and ds.shape == fine.shape
            self._sources.append(BandSource(ds, idx, same))
        if qa_file:
            qa = self._open_file(qa_file)
            self._check_extent(qa)
            same = qa.transform == fine.transform and qa.shape == fine.shape
            self._qa = BandSource(qa, 1, same)
        self.dtype = np.result_type(*[ds.dtypes[idx - 1] for ds, idx in datasets])

    def _band_order(self, ds: rasterio.io.DatasetReader) -> list[int]:
        """1-based band indexes of ``ds`` in profile order (by description when present)."""
        profile = self.profile
        descriptions = ds.descriptions
        if all(descriptions):
            mapped = [profile.band_index(d) for d in descriptions]
            if all(m is not None for m in mapped):
                order = []
                for want in range(len(profile.bands)):
                    if want not in mapped:
                        raise SceneError(
                            f"band {profile.bands[want].name} of profile {profile.name} is not "
                            f"among the file's band descriptions {list(descriptions)}"
                        )
                    order.append(mapped.index(want) + 1)
                return order
        if ds.count != len(profile.bands):
            raise SceneError(
                f"has {ds.count} band(s) but profile {profile.name} expects "
                f"{len(profile.bands)} ({', '.join(profile.band_names)})"
            )
        return list(range(1, ds.count + 1))

    def _check_extent(self, ds: rasterio.io.DatasetReader) -> None:
        g = self.grid
        assert g is not None
        fine_bounds = window_bounds(Window(0, 0, g.width, g.height), g.transform)
        tol = max(abs(ds.transform.a), abs(ds.transform.e))
        if any(abs(a - b) > tol for a, b in zip(ds.bounds, fine_bounds, strict=True)):
            raise SceneError(
                f"{ds.name} covers {tuple(round(v, 2) for v in ds.bounds)}, not the scene extent "
                f"{tuple(round(v, 2) for v in fine_bounds)}"
            )

    def tags(self) -> dict[str, str]:
        """Dataset-level metadata tags of the scene's files (first file wins on conflicts)."""
        out: dict[str, str] = {}
        for src in reversed(self._sources):
            out.update(src.dataset.tags())
        return out

    @property
    def cloud_mask(self) -> str | None:
        """The mask the cloud exclusion reads (a QA band the profile knows cloud flags of), or
        None: this scene's clouds are not checked, and the build says so."""
        if self._qa is None or not self.profile.qa.get("cloud_flags"):
            return None
        return self._mask_name()

    def _mask_name(self) -> str:
        return self.profile.qa_band or "QA band"

    def tile_metadata(self, window: Window) -> dict[str, float | None]:
        """Per-tile manifest columns: the tile centre (plain rasters: not computed)."""
        return {"lat": None, "lon": None}

    def scene_columns(self) -> dict[str, str | None]:
        """Manifest columns shared by every tile of the scene (the product's facts)."""
        return self.product.scene_columns() if self.product else dict(EMPTY_SCENE_COLUMNS)

    # -- reading ---------------------------------------------------------------------------------
    def read_window(self, window: Window) -> np.ndarray:
        """Pixels of ``window`` (in fine-grid pixels) for every band: ``[C, h, w]``."""
        try:
            return self._read_window(window)
        except rasterio.errors.RasterioIOError as e:
            raise SceneError(
                f"read failed at rows {int(window.row_off)}-{int(window.row_off + window.height)}: "
                f"{_gdal_reason('', e)}"
            ) from None

    def _read_window(self, window: Window) -> np.ndarray:
        h, w = int(window.height), int(window.width)
        out = np.empty((len(self._sources), h, w), dtype=self.dtype)
        # one multi-band read per dataset when all its bands share the fine grid
        groups: dict[int, list[int]] = {}
        for c, src in enumerate(self._sources):
            groups.setdefault(id(src.dataset), []).append(c)
        for channels in groups.values():
            first = self._sources[channels[0]]
            if first.same_grid:
                indexes = [self._sources[c].index for c in channels]
                out[channels] = first.dataset.read(indexes, window=window)
            else:
                for c in channels:
                    out[c] = self._read_resampled(self._sources[c], window, self.resampling)
        return out

    def read_qa(self, window: Window) -> np.ndarray | None:
        """The QA band on the fine grid (nearest neighbour: QA values are bit flags)."""
        if self._qa is None:
            return None
        if self._qa.same_grid:
            return self._qa.dataset.read(1, window=window)
        return self._read_resampled(self._qa, window, Resampling.nearest)

    def _read_resampled(self, src: BandSource, window: Window, resampling: Resampling):
        g = self.grid
        assert g is not None
        src_window = from_bounds(
            *window_bounds(window, g.transform), transform=src.dataset.transform
        )
        if resampling != Resampling.nearest and self.profile.marks_nodata:
            masked = self._read_masked(src, src_window, window, resampling)
            if masked is not None:
                return masked
        return src.dataset.read(
            src.index,
            window=src_window,
            out_shape=(int(window.height), int(window.width)),
            resampling=resampling,
        )

    def _read_masked(
        self, src: BandSource, src_window: Window, window: Window, resampling: Resampling
    ) -> np.ndarray | None:
        """A coarse band interpolated from its valid pixels only (the profile's nodata rule:
        ESA's DN 0, Landsat fill, MODIS flags), or None when every pixel it needs is valid and
        GDAL's own resampling gives the same answer. GDAL would blend nodata into its
        neighbours: a fringe of invented values along every swath edge."""
        ds, (h, w) = src.dataset, (int(window.height), int(window.width))
        # source pixels the kernel may touch: cubic reaches two pixels beyond the footprint
        r0 = max(0, int(np.floor(src_window.row_off)) - 2)
        c0 = max(0, int(np.floor(src_window.col_off)) - 2)
        r1 = min(ds.height, int(np.ceil(src_window.row_off + src_window.height)) + 2)
        c1 = min(ds.width, int(np.ceil(src_window.col_off + src_window.width)) + 2)
        raw = ds.read(src.index, window=Window(c0, r0, c1 - c0, r1 - r0))
        valid = self.profile.valid_raw(raw)
        if valid.all():
            return None
        kind = resampling.name
        rows = sample_weights(src_window.row_off - r0, src_window.height / h, h, r1 - r0, kind)
        cols = sample_weights(src_window.col_off - c0, src_window.width / w, w, c1 - c0, kind)
        values, kept = masked_resample(raw, valid, rows, cols)
        return _to_raw_dtype(values, kept, raw.dtype, self.profile)


def _to_raw_dtype(
    values: np.ndarray, kept: np.ndarray, dtype: np.dtype, profile: SensorProfile
) -> np.ndarray:
    """Interpolated values back in the file's type; dropped pixels get the nodata value."""
    if np.issubdtype(dtype, np.floating):
        fill = np.nan if profile.nodata is None else profile.nodata
        return np.where(kept, values, fill).astype(dtype)
    info = np.iinfo(dtype)
    # no nodata value, flags above a limit (MODIS): the largest value is a flag
    fill = profile.nodata if profile.nodata is not None else info.max
    rounded = np.clip(np.rint(np.where(kept, values, 0)), info.min, info.max)
    return np.where(kept, rounded, fill).astype(dtype)


def _crs_string(crs: rasterio.crs.CRS | None) -> str:
    if crs is None:
        return ""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _gdal_reason(path: str, e: BaseException) -> str:
    """GDAL's complaint in a few words, without the path it repeats."""
    p = Path(path)
    if path and not is_remote(path) and p.is_file() and p.stat().st_size == 0:
        return "empty file (0 bytes)"
    while "See previous exception" in str(e) and e.__cause__ is not None:
        e = e.__cause__  # rasterio chains GDAL's own message as the cause
    msg = first_line(e).replace(f"'{path}'", "").replace(f"{p.name}: ", "").strip()
    if "not recognized as being in a supported file format" in msg:
        return "not a raster format GDAL can read"
    if any(k in msg for k in ("TIFFReadDirectory", "TIFFFetch", "IReadBlock", "opj_")):
        return f"damaged or truncated {_format_name(path, msg)} ({msg})"
    return msg


def _format_name(path: str, msg: str) -> str:
    """The file format a GDAL read error is about: from the path when known, else from the
    message (OpenJPEG's ``opj_`` calls, the file name GDAL quotes)."""
    text = f"{path} {msg}".lower()
    if "opj_" in text or ".jp2" in text:
        return "JP2 (JPEG 2000)"
    if "tiff" in text or ".tif" in text:
        return "TIFF"
    return "raster file"
