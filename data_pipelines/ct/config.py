"""Settings of a CT build and their checks (read before any volume is opened)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipelines.classes import ClassTable, load_class_table
from data_pipelines.config import BuildConfig, checked_class_table
from data_pipelines.ct.discover import LABEL_MODES
from data_pipelines.dedup import EXACT_HASH_KIND
from data_pipelines.errors import BuildConfigError
from data_pipelines.store.layout import STORE_FORMAT_VERSION
from data_pipelines.store.write import VOLUME_CODECS

MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 20.0
MIN_CHUNK, MAX_CHUNK = 16, 256


@dataclass
class CTBuildConfig(BuildConfig):
    """Settings of a CT build (the CLI flags and the data YAML share these names).

    ``classes`` (shared field): a class table whose ``source_ids`` remap the label maps' ids at
    build time.
    """

    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    """Target voxel spacing in mm: one value (isotropic) or [x, y, z] (RAS axes)."""
    labels: str = "auto"  # the naming rule of ct.discover, or "none"
    """Label maps: 'auto' pairs them by the naming rule (x.nii.gz <-> x_seg.nii.gz / _label /
    _mask / _gt, or imagesTr/ <-> labelsTr/); 'none' builds without labels."""
    labels_csv: str | None = None
    """CSV of pairs with columns image,label[,patient_id] (paths relative to the CSV); wins over the
    naming rule. image may be a DICOM series folder."""
    crop_foreground: bool = False
    """Crop each volume to the body (HU > --foreground-hu) plus --crop-margin-mm."""
    foreground_hu: float = -500.0  # body threshold for the crop and unlabelled crop centres
    """Body threshold in HU."""
    crop_margin_mm: float = 10.0
    """Margin of the crop in mm."""
    foreground_points: int = 1024
    """Crop centres stored per case for foreground-biased sampling (label or body voxels)."""
    chunk_size: int = 64
    """Edge of the cubic zarr chunks."""
    codec: str = "lz4"
    """Volume codec: lz4 (fast), zstd (small), none."""

    def __post_init__(self) -> None:
        if isinstance(self.spacing, int | float):
            self.spacing = (float(self.spacing),) * 3
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]

    def validate(self) -> None:
        """Raise BuildConfigError naming the field and the fix; reads no input."""
        if len(self.spacing) != 3 or not all(
            MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in self.spacing
        ):
            raise BuildConfigError(
                f"--spacing: {list(self.spacing)} must be one value or three values in "
                f"[{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm, e.g. 1.5 or [0.8, 0.8, 1.5]"
            )
        if self.labels not in LABEL_MODES:
            raise BuildConfigError(
                f"--labels: {self.labels!r} is not one of {', '.join(LABEL_MODES)} "
                f"(use --labels-csv for a table of pairs)"
            )
        if self.labels_csv is not None and not Path(self.labels_csv).is_file():
            raise BuildConfigError(f"--labels-csv: {self.labels_csv} is not a file")
        self._validate_storage()
        self.validate_shared()
        if self.classes is not None:
            checked_class_table(self.classes)

    def _validate_storage(self) -> None:
        if not (MIN_CHUNK <= self.chunk_size <= MAX_CHUNK):
            raise BuildConfigError(
                f"--chunk-size: {self.chunk_size} is outside [{MIN_CHUNK}, {MAX_CHUNK}]; "
                f"64 suits 96³ crops"
            )
        if self.codec not in VOLUME_CODECS:
            raise BuildConfigError(
                f"--codec: {self.codec!r} is not one of {', '.join(VOLUME_CODECS)}"
            )
        if self.crop_margin_mm < 0:
            raise BuildConfigError(f"--crop-margin-mm: {self.crop_margin_mm} must be >= 0")
        if self.foreground_points < 0:
            raise BuildConfigError(f"--foreground-points: {self.foreground_points} must be >= 0")

    def class_table(self) -> ClassTable | None:
        return load_class_table(self.classes) if self.classes else None

    def settings(self) -> dict[str, Any]:
        """The settings that shape the output; a resume must use the same ones."""
        return {
            "modality": "ct",
            "spacing": list(self.spacing),
            "labels": self.labels,
            "labels_csv": str(Path(self.labels_csv).resolve()) if self.labels_csv else None,
            "classes": self.class_table().to_attrs() if self.classes else None,
            "crop_foreground": self.crop_foreground,
            "foreground_hu": self.foreground_hu,
            "crop_margin_mm": self.crop_margin_mm,
            "foreground_points": self.foreground_points,
            "chunk_size": self.chunk_size,
            "codec": self.codec,
            "compression_level": self.compression_level,
            # earlier CT builds hashed volumes with sha256: their parts must not be resumed into
            # a build whose duplicates are found by comparing hashes
            "exact_hash": EXACT_HASH_KIND,
            "store_format": STORE_FORMAT_VERSION,
        }
