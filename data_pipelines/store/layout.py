"""The layout of a built dataset: every folder, file, array group, attribute key and manifest
column, spelled once.

::

    <out>/store.zarr/            zarr v3 group; its attributes describe the whole store
        tiles/<part>             RS: (N, C, H, W), one part per scene; chunk = one tile, sharded
        labels/<part>            class ids on the grid of tiles/<part> (RS) or volumes/<case> (CT)
        volumes/<case>           CT: (X, Y, Z) int16 HU in RAS voxel axes, cubic chunks
        foreground/<case>        CT: (N, 3) int32 voxel coordinates, centres for biased crops
    <out>/manifest.parquet       one row per sample
    <out>/build.json             config, package versions, counts by outcome, timings, throughput
    <out>/quarantine.jsonl       one JSON line per input that could not be used
    <out>/parts/<part>.parquet   a part's manifest fragment: the part's commit record
    <out>/parts/_settings.json   the settings that shaped the output (checked on resume)
    <out>/.build.lock            advisory lock held while a build writes
    <out>/preview.png            RS: a mosaic of sample tiles

``data_pipelines`` writes this layout and ``geomed_mim`` reads it; both take the names from here.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pyarrow as pa

# 2: RS parts may hold raw integers with their calibration recorded (``store.calibration``)
STORE_FORMAT_VERSION = 2

# -- files and folders of <out> ---------------------------------------------------------------
STORE_DIRNAME = "store.zarr"
MANIFEST_NAME = "manifest.parquet"
BUILD_RECORD_NAME = "build.json"
QUARANTINE_NAME = "quarantine.jsonl"
PARTS_DIRNAME = "parts"
SETTINGS_NAME = "_settings.json"
LOCK_NAME = ".build.lock"
PREVIEW_NAME = "preview.png"

# -- array groups inside store.zarr -----------------------------------------------------------
TILES_GROUP = "tiles"
LABELS_GROUP = "labels"
VOLUMES_GROUP = "volumes"
FOREGROUND_GROUP = "foreground"

# -- attribute keys of the root group ---------------------------------------------------------
ATTR_FORMAT = "geomed_mim_store"  # the store format version
ATTR_MODALITY = "modality"  # "rs" or "ct"
ATTR_BANDS = "bands"  # band names in channel order (RS)
ATTR_PROFILE = "profile"  # the sensor profile (RS)
ATTR_TILE_SIZE = "tile_size"  # tile edge in pixels (RS)
ATTR_TILE_SIZES = "tile_sizes"  # RS: the crop sizes cut (native pixels)
ATTR_STORE_SIZE = "store_size"  # RS: the stored edge, or None (crops kept at native size)
ATTR_CALIBRATION = "calibration"  # how stored values relate to raw ones (RS)
ATTR_CLASSES = "classes"  # the class table of a labeled store
ATTR_BAND_STATS = "band_stats"  # per-band mean, std, min, max, percentiles (RS)
ATTR_SPACING = "spacing"  # voxel spacing in mm (CT)
ATTR_HU_STATS = "hu_stats"  # HU mean, std, min, max, percentiles (CT, `build_dataset stats`)

# -- manifest columns that readers select on --------------------------------------------------
COL_ID = "id"
COL_ARRAY = "array"  # "<group>/<part>": where the sample's pixels are
COL_INDEX = "index"  # the sample's row in that array (RS); CT volumes are whole arrays
COL_LABEL_ARRAY = "label_array"
COL_EXCLUDED = "excluded"  # null when kept, else the reason
COL_DUP_OF = "dup_of"  # null, or the id of the sample this one duplicates
COL_SPLIT = "split"  # "train" / "val"
COL_NATIVE_SIZE = "native_size"  # RS: crop edge in scene pixels
COL_STORED_SIZE = "stored_size"  # RS: crop edge as stored

_F64_LIST = pa.list_(pa.float64())

RS_MANIFEST_SCHEMA = pa.schema(
    [
        (COL_ID, pa.string()),
        ("scene", pa.string()),
        ("source", pa.string()),
        (COL_ARRAY, pa.string()),
        (COL_INDEX, pa.int64()),
        ("row_off", pa.int32()),
        ("col_off", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        # the crop as cut (height = width = native_size scene pixels) and as stored
        (COL_NATIVE_SIZE, pa.int32()),
        (COL_STORED_SIZE, pa.int32()),
        ("scale", pa.float64()),  # native_size / stored_size (> 1: averaged down)
        ("gsd", pa.float64()),  # ground sampling distance of the stored pixels, CRS units
        ("crs", pa.string()),
        ("transform", pa.list_(pa.float64(), 6)),  # of the stored pixels
        # provider products: the tile centre and the scene's acquisition (null for plain rasters)
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("acquired", pa.string()),  # ISO 8601 UTC start of the acquisition
        ("platform", pa.string()),  # Terra, Aqua, Sentinel-2A, LANDSAT_8, ...
        ("day_night", pa.string()),  # MODIS: Day, Night or Mixed
        ("product", pa.string()),  # product id (granule, .SAFE or Landsat product name)
        ("processing_baseline", pa.string()),  # S2 baseline, Landsat collection, MODIS C6.1
        ("cloud_cover", pa.float32()),  # STAC items: eo:cloud_cover of the scene, percent
        # the mask the cloud exclusion read (MSK_CLASSI, SCL, QA_PIXEL, BQA); null: not checked
        ("cloud_mask", pa.string()),
        ("nodata_fraction", pa.float32()),
        ("out_of_range_fraction", pa.float32()),
        ("saturated_fraction", pa.float32()),
        ("cloud_fraction", pa.float32()),
        ("max_band_std", pa.float32()),
        ("cloud_shadow_fraction", pa.float32()),
        ("snow_fraction", pa.float32()),
        (COL_EXCLUDED, pa.string()),
        ("exact_hash", pa.string()),
        ("phash", pa.uint64()),
        (COL_DUP_OF, pa.string()),
        ("dup_kind", pa.string()),
        (COL_SPLIT, pa.string()),
        (COL_LABEL_ARRAY, pa.string()),
        ("labeled_fraction", pa.float32()),
        ("band_mean", _F64_LIST),
        ("band_std", _F64_LIST),
        # per-tile moments for the archive-wide merge; dropped from the final manifest
        ("_band_count", _F64_LIST),
        ("_band_m2", _F64_LIST),
        ("_band_min", _F64_LIST),
        ("_band_max", _F64_LIST),
    ]
)
RS_INTERNAL_COLUMNS = ("_band_count", "_band_m2", "_band_min", "_band_max")

HU_PERCENTILES = (0.5, 5.0, 50.0, 95.0, 99.5)


def hu_percentile_column(q: float) -> str:
    """The CT manifest column of the ``q``-th HU percentile: 0.5 -> ``hu_p0_5``."""
    return f"hu_p{q:g}".replace(".", "_")


CT_MANIFEST_SCHEMA = pa.schema(
    [
        (COL_ID, pa.string()),
        (COL_ARRAY, pa.string()),  # volumes/<part>
        (COL_LABEL_ARRAY, pa.string()),  # labels/<part> or null
        ("foreground_array", pa.string()),  # foreground/<part>
        ("source", pa.string()),  # NIfTI file or DICOM series folder
        ("label_source", pa.string()),
        ("format", pa.string()),  # nifti | dicom
        ("patient_id", pa.string()),
        ("study_uid", pa.string()),
        ("series_uid", pa.string()),
        ("shape", pa.list_(pa.int32(), 3)),  # stored [X, Y, Z]
        ("spacing", pa.list_(pa.float64(), 3)),  # stored mm
        ("affine", pa.list_(pa.float64(), 16)),  # stored voxel -> RAS+ mm, row-major 4x4
        ("orig_shape", pa.list_(pa.int32(), 3)),
        ("orig_spacing", pa.list_(pa.float64(), 3)),
        ("orig_affine", pa.list_(pa.float64(), 16)),  # as read, before reorientation
        ("orig_orientation", pa.string()),  # e.g. LPS
        ("gantry_tilt_deg", pa.float64()),  # DICOM: tilt corrected by resampling (0: none)
        ("slice_steps", pa.list_(pa.float64(), 2)),  # DICOM: smallest, largest slice step mm
        ("crop_offset", pa.list_(pa.int32(), 3)),  # of the stored grid in the resampled one
        *[(c, pa.float32()) for c in ["hu_min", "hu_max", "hu_mean"]],
        *[(hu_percentile_column(q), pa.float32()) for q in HU_PERCENTILES],
        ("hu_clipped", pa.int64()),  # voxels clipped to the int16 range
        ("label_ids", pa.list_(pa.int32())),
        ("foreground_points", pa.int32()),
        ("exact_hash", pa.string()),
        (COL_EXCLUDED, pa.string()),
        (COL_DUP_OF, pa.string()),
        (COL_SPLIT, pa.string()),
    ]
)


# -- paths --------------------------------------------------------------------------------------


def store_path(out_dir: str | Path) -> Path:
    """``<out>/store.zarr``."""
    return Path(out_dir) / STORE_DIRNAME


def manifest_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / MANIFEST_NAME


def fragment_path(out_dir: str | Path, part: str) -> Path:
    return Path(out_dir) / PARTS_DIRNAME / f"{part}.parquet"


def array_path(group: str, part: str) -> str:
    """The name of a part's array inside the store, as the manifest records it."""
    return f"{group}/{part}"


def array_dir(out_dir: str | Path, array: str) -> Path:
    """The folder of an array (``array`` as the manifest records it, e.g. ``volumes/case``)."""
    return store_path(out_dir) / array


def safe_part_name(text: str) -> str:
    """A zarr/file-safe name: path separators become ``__``, odd characters ``-``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "__").replace("\\", "__"))
    return name.strip(".-") or "part"


def unique_part_names(ids: list[str]) -> list[str]:
    """Stable, unique part names for input ids (scene or case ids), in the same order."""
    names: list[str] = []
    seen: set[str] = set()
    for key in ids:
        name = safe_part_name(key)
        if name in seen:
            name = f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
        seen.add(name)
        names.append(name)
    return names
