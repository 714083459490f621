"""Settings of a remote-sensing build and their checks (read before any scene is opened)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from data_pipelines.classes import ClassTable, load_class_table
from data_pipelines.config import BuildConfig, check_fraction, checked_class_table
from data_pipelines.dedup import MAX_EXACT_RADIUS
from data_pipelines.errors import BuildConfigError, LabelError
from data_pipelines.rs.exclusion import ExclusionRules
from data_pipelines.rs.labels import check_labels_spec
from data_pipelines.rs.location_split import SPLIT_BY_CHOICES, SPLIT_BY_SCENE
from data_pipelines.rs.toa import CALIBRATE_CHOICES
from data_pipelines.store.layout import STORE_FORMAT_VERSION

MIN_TILE, MAX_TILE = 8, 8192
RESAMPLING_CHOICES = ("nearest", "bilinear", "cubic", "average")
DEFAULT_NEAR_DUP_RADIUS = 4  # chosen by measurement, see docs/benchmarks.md
# what calibrated tiles hold: the raw integers + the recorded calibration, or float32 values
STORE_DTYPE_COMPACT, STORE_DTYPE_FLOAT32 = "compact", "float32"
STORE_DTYPE_CHOICES = (STORE_DTYPE_COMPACT, STORE_DTYPE_FLOAT32)
# where crops are cut: a grid per tile size, or crops at random positions and sizes
SLICING_GRID, SLICING_RANDOM = "grid", "random"
SLICING_CHOICES = (SLICING_GRID, SLICING_RANDOM)


@dataclass
class RSBuildConfig(BuildConfig):
    """Settings of a remote-sensing build (the CLI flags and the data YAML share these names)."""

    profile: str = "sentinel2_l1c"
    """Sensor profile name ({profiles}) or a path to a profile YAML. Names the bands and their
    order."""
    tile_size: int | list[int] = 64  # one size, several (a grid each), or a range (random)
    """Tile edge in pixels of the scene's finest grid; several sizes cut a grid each (--tile-size 64
    128 256 512 1024); with --slicing random, MIN MAX of the drawn sizes."""
    stride: int | None = None  # one tile size only; several sizes use overlap
    """Step between tiles in pixels (one tile size); smaller than --tile-size gives overlap.
    Default: the tile size (no overlap)."""
    overlap: float = 0.0  # several sizes: stride = size x (1 - overlap)
    """Several tile sizes: fraction by which neighbouring tiles of a size overlap (stride = size x
    (1 - overlap))."""
    slicing: str = SLICING_GRID
    """'grid' (every position of a grid per tile size) or 'random' (--crops-per-scene or
    --crops-per-km2 crops at random positions, sizes drawn log-uniformly between the two --tile-size
    values, seeded by --seed and the scene: a re-run or a resumed run cuts the same crops)."""
    crops_per_scene: int | None = None  # random slicing
    """Random slicing: crops per scene."""
    crops_per_km2: float | None = None  # random slicing
    """Random slicing: crops per km² of scene (needs a CRS in metres)."""
    seed: int = 0  # random slicing: crops are drawn from (seed, scene id)
    """Random slicing: the seed crops are drawn from."""
    store_size: int | None = None  # store every crop at this edge (area averaging)
    """Store every crop at this edge, e.g. 224 (area averaging for values, nearest for labels); the
    manifest keeps each crop's native size, window and scale. Default: crops are stored as cut."""
    cover_edges: bool = True
    """Add a last row/column of tiles snapped to the scene edge so no pixel is left out
    (--no-cover-edges drops partial edge tiles instead)."""
    resampling: str = "bilinear"
    """How coarser bands are brought to the finest grid: {resampling}."""
    calibrate: str = "toa"
    """'toa': training reads physical top-of-atmosphere values as the profile defines them
    (Sentinel-2 DN/10000, Landsat TOA reflectance and brightness temperature from the MTL file,
    MODIS scaling); 'none': raw values."""
    store_dtype: str = STORE_DTYPE_COMPACT
    """How calibrated tiles are stored: 'compact' keeps the raw integers and records each scene's
    calibration (CF scale_factor/add_offset) for the loader to apply (about half the bytes, the same
    values); 'float32' stores the calibrated values."""
    # the exclusion thresholds, defaulting as the rules themselves do
    max_nodata_fraction: float = ExclusionRules.max_nodata_fraction
    """Exclude a tile when more than this fraction of its pixels is nodata/NaN."""
    max_out_of_range_fraction: float = ExclusionRules.max_out_of_range_fraction
    """Exclude a tile when more than this fraction of its valid pixels lies outside the profile's
    valid_range."""
    max_saturated_fraction: float = ExclusionRules.max_saturated_fraction
    """Exclude a tile when more than this fraction of pixels is saturated."""
    max_cloud_fraction: float = ExclusionRules.max_cloud_fraction
    """Exclude a tile when more than this fraction of pixels is flagged cloud by the QA band or
    cloud mask (Landsat BQA/QA_PIXEL, Sentinel-2 MSK_CLASSI/SCL)."""
    max_cloud_shadow_fraction: float = ExclusionRules.max_cloud_shadow_fraction
    """Exclude a tile when more than this fraction of pixels is flagged cloud shadow (Landsat
    QA_PIXEL/BQA, Sentinel-2 SCL)."""
    max_snow_fraction: float = ExclusionRules.max_snow_fraction
    """Exclude a tile when more than this fraction of pixels is flagged snow/ice (default 1.0: snowy
    tiles are kept, the fraction is recorded)."""
    min_band_std: float | None = ExclusionRules.min_band_std
    """Exclude a tile as 'constant' when every band's std (raw units) is at most this. Default: the
    profile's min_band_std."""
    grid: str | None = None  # swath products: resample to this CRS ("EPSG:32632")
    """Swath products (MODIS L1B): resample each granule to this CRS, e.g. EPSG:32632 or EPSG:4326
    (nearest neighbour); default: tiles cut from the swath itself."""
    resolution: float | None = None  # ...at this pixel size, in the CRS's units
    """Pixel size for --grid, in the CRS's units (metres for UTM, degrees for EPSG:4326)."""
    labels: str | None = None
    """Label raster(s) for a segmentation store: one GeoTIFF covering every scene, or a folder with
    <scene>.tif / <scene>_label(s).tif / <scene>_mask.tif; reprojected to each scene's grid with
    nearest neighbour and cut like the tiles (labels/<part>);
    demo:sentinel2_l1c/labels/lulc_mask.tif is the demo's."""
    dedup: bool = True
    """Mark exact and near duplicates across the whole archive (--no-dedup to skip)."""
    near_dup_radius: int = DEFAULT_NEAR_DUP_RADIUS
    """Hamming radius (bits of the 64-bit perceptual hash) within which two tiles are near
    duplicates."""
    preview: bool = True
    """Write preview.png, a mosaic of sample tiles with excluded and duplicate tiles outlined."""
    split_by: str = SPLIT_BY_SCENE  # or "location": every date of a place on one side
    """'scene': each scene (date) wholly in train or val; 'location': every date of a place on the
    same side, validation on held-out blocks of ground (for archives that revisit the same area)."""
    split_block: float | None = None  # location split: block edge in CRS units (metres)
    """--split-by location: edge of the square blocks in CRS units (metres for UTM). Default: two
    tile edges."""
    split_margin: float = 0.0  # location split: training tiles kept this far from val tiles
    """--split-by location: training tiles closer than this to a validation tile (CRS units) are set
    aside as split 'margin'; 0 keeps every tile that shares no pixel with a validation tile."""

    def validate(self) -> None:
        """Raise BuildConfigError naming the field and the fix; reads no input."""
        self._validate_tiling()
        self.validate_shared()
        if self.resampling not in RESAMPLING_CHOICES:
            raise BuildConfigError(
                f"--resampling: {self.resampling!r} is not one of {', '.join(RESAMPLING_CHOICES)}"
            )
        if self.calibrate not in CALIBRATE_CHOICES:
            raise BuildConfigError(
                f"--calibrate: {self.calibrate!r} is not one of {', '.join(CALIBRATE_CHOICES)}"
            )
        if self.store_dtype not in STORE_DTYPE_CHOICES:
            choices = ", ".join(STORE_DTYPE_CHOICES)
            raise BuildConfigError(f"--store-dtype: {self.store_dtype!r} is not one of {choices}")
        for name, value in asdict(self.rules()).items():
            if name.endswith("_fraction"):
                check_fraction(name.replace("_", "-"), value)
        self._validate_swath_grid()
        if not 0 <= self.near_dup_radius <= MAX_EXACT_RADIUS:
            raise BuildConfigError(
                f"--near-dup-radius: {self.near_dup_radius} is not in [0, {MAX_EXACT_RADIUS}] "
                f"(bits of a 64-bit perceptual hash)"
            )
        self._validate_labels()
        self._validate_split()

    def _validate_split(self) -> None:
        if self.split_by not in SPLIT_BY_CHOICES:
            choices = ", ".join(SPLIT_BY_CHOICES)
            raise BuildConfigError(f"--split-by: {self.split_by!r} is not one of {choices}")
        if self.split_block is not None and not self.split_block > 0:
            raise BuildConfigError(
                f"--split-block: {self.split_block} must be a positive edge in CRS units, "
                f"e.g. 640 (metres)"
            )
        if self.split_margin < 0:
            raise BuildConfigError(f"--split-margin: {self.split_margin} must be >= 0")

    @property
    def tile_sizes(self) -> list[int]:
        """The crop sizes asked for, in order (grid: one grid each; random: [min, max])."""
        sizes = self.tile_size if isinstance(self.tile_size, list) else [self.tile_size]
        return [int(s) for s in sizes]

    @property
    def multi_size(self) -> bool:
        """Whether crops come in several sizes (their ids then name the size)."""
        return len(self.tile_sizes) > 1 or self.slicing == SLICING_RANDOM

    def stored_size(self, native: int) -> int:
        return self.store_size or native

    def _validate_tiling(self) -> None:
        sizes = self.tile_sizes
        for size in sizes:
            if not (MIN_TILE <= size <= MAX_TILE):
                raise BuildConfigError(
                    f"--tile-size: {size} is outside [{MIN_TILE}, {MAX_TILE}]; "
                    f"use e.g. 64, 128 or 256"
                )
        if len(set(sizes)) != len(sizes):
            raise BuildConfigError(f"--tile-size: {sizes} lists a size twice")
        if self.store_size is not None and not (MIN_TILE <= self.store_size <= MAX_TILE):
            raise BuildConfigError(
                f"--store-size: {self.store_size} is outside [{MIN_TILE}, {MAX_TILE}]; use e.g. 224"
            )
        if not 0 <= self.overlap < 1:
            raise BuildConfigError(f"--overlap: {self.overlap} is not in [0, 1)")
        if self.slicing not in SLICING_CHOICES:
            raise BuildConfigError(
                f"--slicing: {self.slicing!r} is not one of {', '.join(SLICING_CHOICES)}"
            )
        if self.slicing == SLICING_RANDOM:
            self._validate_random_slicing()
        elif self.crops_per_scene is not None or self.crops_per_km2 is not None:
            raise BuildConfigError(
                "--crops-per-scene/--crops-per-km2: only with --slicing random (the grid cuts "
                "every position)"
            )
        self._validate_stride(sizes)

    def _validate_stride(self, sizes: list[int]) -> None:
        if self.stride is None:
            return
        if len(sizes) > 1 or self.slicing == SLICING_RANDOM:
            raise BuildConfigError(
                f"--stride: {self.stride} applies to one grid tile size; with several sizes "
                f"use --overlap (e.g. --overlap 0.25), and --stride null to drop a config's"
            )
        if not (1 <= self.stride <= sizes[0] * 4):
            raise BuildConfigError(
                f"--stride: {self.stride} must be between 1 and 4x the tile size "
                f"({sizes[0] * 4}); a stride below the tile size gives overlapping tiles"
            )

    def _validate_random_slicing(self) -> None:
        if len(self.tile_sizes) > 2 or self.tile_sizes != sorted(self.tile_sizes):
            raise BuildConfigError(
                f"--tile-size: random slicing draws sizes from a range; give MIN MAX (e.g. "
                f"--tile-size 64 1024) or one size, not {self.tile_sizes}"
            )
        if (self.crops_per_scene is None) == (self.crops_per_km2 is None):
            raise BuildConfigError(
                "--crops-per-scene/--crops-per-km2: random slicing needs exactly one of them "
                "(e.g. --crops-per-scene 200)"
            )
        count = self.crops_per_scene if self.crops_per_scene is not None else self.crops_per_km2
        if not count > 0:
            raise BuildConfigError(f"--crops-per-scene/--crops-per-km2: {count} must be positive")
        if self.store_size is None and len(self.tile_sizes) > 1:
            raise BuildConfigError(
                "--store-size: random sizes need one training size to be stored at (e.g. "
                "--store-size 224); without it every drawn size would be its own array"
            )

    def _validate_swath_grid(self) -> None:
        if self.grid is None and self.resolution is None:
            return
        if self.grid is None or self.resolution is None:
            raise BuildConfigError(
                "--grid/--resolution: give both (e.g. --grid EPSG:32632 --resolution 1000) to "
                "resample swath products, or neither to tile the swath itself"
            )
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            CRS.from_user_input(self.grid)
        except CRSError:
            raise BuildConfigError(
                f"--grid: {self.grid!r} is not a coordinate reference system; use e.g. "
                f"EPSG:4326 or EPSG:32632"
            ) from None
        if not self.resolution > 0:
            raise BuildConfigError(
                f"--resolution: {self.resolution} must be a positive pixel size in the units of "
                f"--grid (metres for UTM, degrees for EPSG:4326)"
            )

    def swath_grid(self) -> tuple[str, float] | None:
        """(CRS, resolution) to resample swath products to, or None to tile the swath."""
        if self.grid is None or self.resolution is None:
            return None
        return (self.grid, float(self.resolution))

    def _validate_labels(self) -> None:
        if self.labels is None:
            return
        try:
            check_labels_spec(self.labels)
        except LabelError as e:
            raise BuildConfigError(str(e)) from None
        if self.classes is None:
            raise BuildConfigError(
                "--classes: --labels needs a class table (YAML with ignore_index and "
                "classes: [{id, name}]), e.g. configs/data/classes/eolearn_lulc.yaml"
            )
        checked_class_table(self.classes)

    def class_table(self) -> ClassTable | None:
        return load_class_table(self.classes) if self.labels and self.classes else None

    def rules(self) -> ExclusionRules:
        return ExclusionRules(**{f.name: getattr(self, f.name) for f in fields(ExclusionRules)})

    def settings(self) -> dict[str, Any]:
        """The settings that shape the parts; a resume must use the same ones."""
        return {
            "modality": "rs",
            "profile": self.profile,
            "tile_size": self.tile_size,
            "stride": self.stride or (self.tile_sizes[0] if not self.multi_size else None),
            "overlap": self.overlap,
            "slicing": self.slicing,
            "crops_per_scene": self.crops_per_scene,
            "crops_per_km2": self.crops_per_km2,
            "seed": self.seed,
            "store_size": self.store_size,
            "cover_edges": self.cover_edges,
            "resampling": self.resampling,
            "swath_grid": list(self.swath_grid()) if self.swath_grid() else None,
            "calibrate": self.calibrate,
            "store_dtype": self.store_dtype,
            "exclusion": asdict(self.rules()),
            "labels": str(Path(self.labels).resolve()) if self.labels else None,
            "classes": self.class_table().to_attrs() if self.labels else None,
            "store_format": STORE_FORMAT_VERSION,
        }
