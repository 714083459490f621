"""A DICOM CT series → HU voxels and the affine of its true slice positions.

A series is a list of *frames*: the slices of classic single-frame files, or the frames of one
enhanced multi-frame file (geometry and rescale from its per-frame / shared functional groups).
Frames are ordered by their position along the slice normal (ImagePositionPatient · (row ×
column direction)), never by file name or InstanceNumber: exports name files arbitrarily and
InstanceNumber is often reset or missing. Then, from the true positions:

* **Gantry tilt**: the slice-to-slice step is not along the normal; the affine keeps the true
  (sheared) step and the resampler corrects it (``ct.volume``). A tilt above
  ``MAX_GANTRY_TILT_DEG`` is an error with the angle.
* **Uneven spacing**: steps of several sizes are linearly interpolated onto a regular grid of
  the smallest step along the normal. A single gap that is a whole multiple of the usual step
  means lost files (an error saying where), and so does any gap above ``MAX_STEP_FACTOR`` times
  the usual step: interpolating across it would invent anatomy.
* **Compressed pixels** (JPEG 2000, JPEG-LS, RLE, JPEG) are decoded by pydicom's pixel
  handlers; the decoders are dependencies of the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.errors import UserError, first_line

# a neighbour gap above this multiple of the usual step is a candidate lost slice
MISSING_SLICE_FACTOR = 1.5
# any gap above this multiple of the usual step is never interpolated across
MAX_STEP_FACTOR = 3.0
# steps within this fraction (or 1 µm) of the usual step count as the same step
STEP_TOLERANCE = 0.01
MAX_GANTRY_TILT_DEG = 30.0
# a slice-to-slice shift across the whole stack below this many pixels is rounding, not tilt
MIN_TILT_SHIFT_PIXELS = 0.01


class DicomSeriesError(UserError, ValueError):
    """A DICOM series that cannot be stacked into a volume (the reason says why)."""


@dataclass
class Frame:
    """One 2-D frame: its geometry, rescale, and how to get its stored pixel values."""

    position: np.ndarray  # [3] LPS mm of the first pixel's centre
    orientation: np.ndarray  # [6] row direction, column direction
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    rows: int
    columns: int
    slope: float
    intercept: float
    pixels: Callable[[], np.ndarray]  # [rows, columns] stored values


@dataclass
class DicomVolume:
    hu: np.ndarray  # [X, Y, Z] float32 HU; X along the rows' direction, Z along the normal
    affine: np.ndarray  # [4, 4] voxel index -> RAS+ world mm (sheared when the gantry tilted)
    num_slices: int  # frames read
    gantry_tilt_deg: float = 0.0
    slice_steps: tuple[float, float] = (0.0, 0.0)  # smallest and largest step along the normal
    uneven_spacing: bool = False  # the slices were interpolated onto a regular step


# -- frames from files ---------------------------------------------------------------------------


def _decode(ds: Any, name: str) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        what = f" ({syntax.name})" if syntax is not None else ""
        raise DicomSeriesError(
            f"cannot decode pixels of {name}{what}: {type(e).__name__}: {first_line(e)}"
        ) from e


def _floats(value: Any, n: int, what: str, name: str) -> np.ndarray:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.size != n or not np.isfinite(out).all():
        raise DicomSeriesError(f"{name}: {what} is missing or malformed ({value!r})")
    return out


def _rescale(item: Any) -> tuple[float, float]:
    slope = float(getattr(item, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(item, "RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def single_frame(ds: Any, name: str) -> Frame:
    """The frame of a classic one-slice file."""
    spacing = _floats(getattr(ds, "PixelSpacing", None), 2, "PixelSpacing", name)
    return Frame(
        position=_floats(getattr(ds, "ImagePositionPatient", None), 3, "position", name),
        orientation=_floats(getattr(ds, "ImageOrientationPatient", None), 6, "orientation", name),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=_rescale(ds)[0],
        intercept=_rescale(ds)[1],
        pixels=lambda: _decode(ds, name),
    )


def _functional_group(ds: Any, k: int, sequence: str) -> Any:
    """Frame ``k``'s item of a functional group: per-frame first, then shared, else None."""
    places = (("PerFrameFunctionalGroupsSequence", k), ("SharedFunctionalGroupsSequence", 0))
    for groups, index in places:
        items = getattr(ds, groups, None)
        if items is not None and len(items) > index:
            inner = getattr(items[index], sequence, None)
            if inner:
                return inner[0]
    return None


def multi_frames(ds: Any, name: str) -> list[Frame]:
    """The frames of an enhanced multi-frame file (geometry from its functional groups)."""
    n = int(ds.NumberOfFrames)
    decoded: list[np.ndarray] = []

    def frame_pixels(k: int) -> Callable[[], np.ndarray]:
        def get() -> np.ndarray:
            if not decoded:
                decoded.append(_decode(ds, name).reshape(n, int(ds.Rows), int(ds.Columns)))
            return decoded[0][k]

        return get

    frames = []
    for k in range(n):
        where = f"{name} frame {k + 1}"
        plane = _functional_group(ds, k, "PlanePositionSequence")
        orient = _functional_group(ds, k, "PlaneOrientationSequence")
        measures = _functional_group(ds, k, "PixelMeasuresSequence")
        if plane is None or orient is None or measures is None:
            raise DicomSeriesError(
                f"{where}: no plane position/orientation/pixel measures in the functional "
                f"groups; not a volume"
            )
        spacing = _floats(getattr(measures, "PixelSpacing", None), 2, "PixelSpacing", where)
        transform = _functional_group(ds, k, "PixelValueTransformationSequence")
        slope, intercept = _rescale(transform if transform is not None else ds)
        frames.append(
            Frame(
                position=_floats(plane.ImagePositionPatient, 3, "position", where),
                orientation=_floats(orient.ImageOrientationPatient, 6, "orientation", where),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                slope=slope,
                intercept=intercept,
                pixels=frame_pixels(k),
            )
        )
    return frames


def read_frames(files: list[str] | tuple[str, ...]) -> list[Frame]:
    import pydicom

    frames: list[Frame] = []
    for f in files:
        name = Path(f).name
        try:
            ds = pydicom.dcmread(f)
        except Exception as e:
            raise DicomSeriesError(
                f"cannot read slice {name}: {type(e).__name__}: {first_line(e)}"
            ) from e
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            frames += multi_frames(ds, name)
        else:
            frames.append(single_frame(ds, name))
    return frames


# -- geometry checks -----------------------------------------------------------------------------


def slice_directions(frames: list[Frame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row direction, column direction and slice normal, after checking that every frame shares
    them and the frame size."""
    if len(frames) < 2:
        raise DicomSeriesError(
            f"series has {len(frames)} slice; a CT volume needs at least 2 (this is a 2-D image)"
        )
    ref = frames[0]
    row_dir, col_dir = ref.orientation[:3], ref.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise DicomSeriesError(
            f"ImageOrientationPatient {list(ref.orientation)} is not two unit vectors"
        )
    for f in frames[1:]:
        if (f.rows, f.columns) != (ref.rows, ref.columns):
            raise DicomSeriesError(
                f"slices of different size in one series ({ref.rows}x{ref.columns} and "
                f"{f.rows}x{f.columns}); split the series before building"
            )
        if not np.allclose(f.orientation, ref.orientation, atol=1e-4):
            raise DicomSeriesError("slices with different orientations in one series")
        if not np.allclose(f.pixel_spacing, ref.pixel_spacing, atol=1e-4):
            raise DicomSeriesError("slices with different pixel spacing in one series")
    return row_dir, col_dir, normal


def check_steps(along: np.ndarray) -> bool:
    """Raise for duplicate positions, lost slices and gaps too large to interpolate across;
    return True when the steps are uneven (to be resampled on their true positions)."""
    steps = np.diff(along)
    if (steps < 1e-3).any():
        k = int(np.argmin(steps))
        raise DicomSeriesError(
            f"two slices at the same position ({along[k]:.2f} mm along the normal); the series "
            f"holds duplicates or several acquisitions"
        )
    usual = float(np.median(steps))
    regular = np.abs(steps - usual) <= max(STEP_TOLERANCE * usual, 1e-3)
    if regular.all():
        return False
    ratio = steps / usual
    for k in np.argsort(-steps, kind="stable"):
        isolated = (k == 0 or regular[k - 1]) and (k == len(steps) - 1 or regular[k + 1])
        whole = abs(ratio[k] - round(ratio[k])) < 0.1
        if ratio[k] > MISSING_SLICE_FACTOR and isolated and whole:
            raise DicomSeriesError(
                f"missing slice: gap of {steps[k]:.2f} mm between slices at {along[k]:.2f} and "
                f"{along[k + 1]:.2f} mm where the series steps {usual:.2f} mm "
                f"(~{round(ratio[k]) - 1} slice(s) lost, {len(along)} present)"
            )
    k = int(np.argmax(steps))
    if ratio[k] > MAX_STEP_FACTOR:
        raise DicomSeriesError(
            f"slice gap of {steps[k]:.2f} mm between slices at {along[k]:.2f} and "
            f"{along[k + 1]:.2f} mm, over {MAX_STEP_FACTOR:g}x the usual step of {usual:.2f} mm; "
            f"the series is incomplete or mixes several stacks"
        )
    return True


def gantry_tilt(positions: np.ndarray, normal: np.ndarray, pixel: float) -> float:
    """The angle (degrees) between the slice-to-slice step and the slice normal; 0.0 when the
    in-plane shift across the whole stack is below ``MIN_TILT_SHIFT_PIXELS``.

    Positions off the line from the first to the last slice (beyond half a pixel) are an error:
    one affine cannot describe them."""
    n = len(positions)
    span = positions[-1] - positions[0]  # positions are sorted along the normal
    along = (positions - positions[0]) @ normal  # [n] mm
    # each slice against the line at its own height (the spacing may be uneven)
    expected = np.outer(along / (span @ normal), span)  # [n, 3] offsets on the line
    drift = np.linalg.norm(positions - positions[0] - expected, axis=1)
    if drift.max() > 0.5 * pixel:
        raise DicomSeriesError(
            f"slice positions do not lie on one line ({drift.max():.2f} mm off); the series "
            f"mixes several stacks"
        )
    step = span / (n - 1)
    height = float(step @ normal)
    shift = float(np.linalg.norm(step - height * normal))  # in-plane shift per slice, mm
    if shift * (n - 1) < MIN_TILT_SHIFT_PIXELS * pixel:
        return 0.0
    tilt = math.degrees(math.atan2(shift, abs(height)))
    if tilt > MAX_GANTRY_TILT_DEG:
        raise DicomSeriesError(
            f"gantry tilt of {tilt:.1f} degrees (slices step {shift:.2f} mm sideways per "
            f"{abs(height):.2f} mm) is above {MAX_GANTRY_TILT_DEG:g}; not a tilted stack"
        )
    return tilt


# -- the volume ----------------------------------------------------------------------------------


def regular_slices(
    hu: np.ndarray, along: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Unevenly spaced slices ``hu [X, Y, n]`` at heights ``along`` → slices at a regular step
    (the smallest one, or the usual one if the smallest would multiply the slice count),
    linearly interpolated between the two true neighbours; also the new slices' positions."""
    steps = np.diff(along)
    extent = along[-1] - along[0]
    step = float(steps.min())
    if extent / step > 2 * len(along):
        step = float(np.median(steps))
    m = int(np.floor(extent / step + 1e-6)) + 1
    targets = along[0] + step * np.arange(m)  # [m]
    lo = np.clip(np.searchsorted(along, targets, side="right") - 1, 0, len(along) - 2)
    w = np.clip((targets - along[lo]) / (along[lo + 1] - along[lo]), 0.0, 1.0)
    out = hu[:, :, lo] * (1 - w).astype(np.float32) + hu[:, :, lo + 1] * w.astype(np.float32)
    new_positions = positions[lo] * (1 - w)[:, None] + positions[lo + 1] * w[:, None]
    return out, new_positions


def series_affine(
    frame: Frame, positions: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray
) -> np.ndarray:
    """Voxel (i, j, k) → RAS+ mm from the first frame's geometry and the true first-to-last step."""
    row_spacing, col_spacing = frame.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing  # i: along a row, one column further
    lps[:3, 1] = col_dir * row_spacing  # j: down a column, one row further
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)  # k: slice to slice
    lps[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> RAS+ (as NIfTI)


def stack_frames(frames: list[Frame]) -> DicomVolume:
    """Order, check and stack frames into HU voxels [X, Y, Z] with their affine."""
    row_dir, col_dir, normal = slice_directions(frames)
    positions = np.array([f.position for f in frames])
    along = positions @ normal  # [N] mm along the slice normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    frames = [frames[i] for i in order]
    uneven = check_steps(along)
    tilt = gantry_tilt(positions, normal, min(frames[0].pixel_spacing))
    # pixels are [rows, cols] = [j, i]; stacked along k and reordered to [i, j, k]
    hu = np.empty((frames[0].columns, frames[0].rows, len(frames)), dtype=np.float32)
    for k, f in enumerate(frames):
        hu[:, :, k] = f.pixels().T.astype(np.float32) * f.slope + f.intercept
    steps = np.diff(along)
    if uneven:
        hu, positions = regular_slices(hu, along, positions)
    return DicomVolume(
        hu=hu,
        affine=series_affine(frames[0], positions, row_dir, col_dir),
        num_slices=len(frames),
        gantry_tilt_deg=tilt,
        slice_steps=(float(steps.min()), float(steps.max())),
        uneven_spacing=uneven,
    )


def read_series(files: list[str] | tuple[str, ...]) -> DicomVolume:
    """Stack a series (slice files, or one multi-frame file) into HU voxels and an affine;
    raise DicomSeriesError saying what is wrong."""
    return stack_frames(read_frames(files))
