"""Settings of a remote-sensing build and their checks (read before any scene is opened)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_pipelines.classes import ClassTable, load_class_table
from data_pipelines.config import BuildConfig, check_fraction, checked_class_table
from data_pipelines.dedup import MAX_EXACT_RADIUS
from data_pipelines.errors import BuildConfigError, LabelError
from data_pipelines.rs.exclusion import ExclusionRules
from data_pipelines.rs.labels import check_labels_spec
from data_pipelines.rs.toa import CALIBRATE_CHOICES
from data_pipelines.store.layout import STORE_FORMAT_VERSION

MIN_TILE, MAX_TILE = 8, 8192
RESAMPLING_CHOICES = ("nearest", "bilinear", "cubic", "average")
DEFAULT_NEAR_DUP_RADIUS = 4  # chosen by measurement, see docs/benchmarks.md
# what calibrated tiles hold: the raw integers + the recorded calibration, or float32 values
STORE_DTYPE_COMPACT, STORE_DTYPE_FLOAT32 = "compact", "float32"
STORE_DTYPE_CHOICES = (STORE_DTYPE_COMPACT, STORE_DTYPE_FLOAT32)


@dataclass
class RSBuildConfig(BuildConfig):
    """Settings of a remote-sensing build (the CLI flags and the data YAML share these names)."""

    profile: str = "sentinel2_l1c"
    tile_size: int = 64
    stride: int | None = None
    cover_edges: bool = True
    resampling: str = "bilinear"
    calibrate: str = "toa"
    store_dtype: str = STORE_DTYPE_COMPACT
    max_nodata_fraction: float = 0.5
    max_out_of_range_fraction: float = 0.05
    max_saturated_fraction: float = 0.05
    max_cloud_fraction: float = 0.5
    max_cloud_shadow_fraction: float = 0.5
    max_snow_fraction: float = 1.0
    min_band_std: float | None = None
    grid: str | None = None  # swath products: resample to this CRS ("EPSG:32632")
    resolution: float | None = None  # ...at this pixel size, in the CRS's units
    labels: str | None = None
    dedup: bool = True
    near_dup_radius: int = DEFAULT_NEAR_DUP_RADIUS
    preview: bool = True

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

    def _validate_tiling(self) -> None:
        if not (MIN_TILE <= self.tile_size <= MAX_TILE):
            raise BuildConfigError(
                f"--tile-size: {self.tile_size} is outside [{MIN_TILE}, {MAX_TILE}]; "
                f"use e.g. 64, 128 or 256"
            )
        stride = self.stride if self.stride is not None else self.tile_size
        if not (1 <= stride <= self.tile_size * 4):
            raise BuildConfigError(
                f"--stride: {stride} must be between 1 and 4x the tile size "
                f"({self.tile_size * 4}); a stride below the tile size gives overlapping tiles"
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
        return ExclusionRules(
            max_nodata_fraction=self.max_nodata_fraction,
            max_out_of_range_fraction=self.max_out_of_range_fraction,
            max_saturated_fraction=self.max_saturated_fraction,
            max_cloud_fraction=self.max_cloud_fraction,
            max_cloud_shadow_fraction=self.max_cloud_shadow_fraction,
            max_snow_fraction=self.max_snow_fraction,
            min_band_std=self.min_band_std,
        )

    def settings(self) -> dict[str, Any]:
        """The settings that shape the parts; a resume must use the same ones."""
        return {
            "modality": "rs",
            "profile": self.profile,
            "tile_size": self.tile_size,
            "stride": self.stride or self.tile_size,
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
