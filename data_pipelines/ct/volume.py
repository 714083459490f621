"""One CT volume from source to stored grid: load, orient to RAS, resample, int16 HU, crop.

Arrays are indexed ``[X, Y, Z]`` (nibabel/MONAI order); after ``to_ras`` X runs to the patient's
Right, Y to Anterior, Z to Superior, and the 4×4 affine maps ``(i, j, k, 1)`` to RAS+ world mm.
Resampling uses MONAI's ``Spacing`` (images bilinear, labels nearest onto the image's output
grid), the routine the training baselines use, so the stored grid is the one MONAI would make.

Geometry is used as read, at float32 precision (what a NIfTI header holds; a DICOM's decimal
strings are brought to the same precision), so the same scan as NIfTI and as DICOM resamples to
identical voxels and 0.9765625 mm stays 0.9765625 mm. A sheared affine (a gantry-tilted DICOM
series, or a NIfTI written from one) is resampled onto an orthogonal grid through the true voxel
positions; the wedges the tilted stack never covered are filled with air.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipelines.errors import UserError, first_line
from data_pipelines.store.layout import HU_PERCENTILES, hu_percentile_column

INT16_MIN, INT16_MAX = -32768, 32767
AIR_HU = -1024
# voxel axes whose mutual shear moves a voxel by less than this fraction of a voxel across the
# whole volume are orthogonal (rounding in the header), not sheared
MAX_ROUNDING_SHEAR_VOXELS = 0.01


class VolumeError(UserError, ValueError):
    """An input that is not a usable CT volume; the message says what is wrong."""


@dataclass
class SourceVolume:
    """A volume as read from its source, before any reorientation."""

    data: np.ndarray  # [X, Y, Z] float32 HU (scl_slope / RescaleSlope applied)
    affine: np.ndarray  # [4, 4] voxel -> RAS+ world mm
    gantry_tilt_deg: float | None = None  # DICOM: the tilt corrected by resampling
    slice_steps: tuple[float, float] | None = None  # DICOM: smallest, largest slice step mm
    uneven_spacing: bool = False  # DICOM: slices interpolated onto a regular step

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm: the norms of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def check_geometry(shape: tuple[int, ...], affine: np.ndarray) -> None:
    """Reject geometry that would make resampling meaningless (zero or NaN spacing)."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise VolumeError("affine has NaN/inf entries; the header's geometry is broken")
    sp = spacing_of(affine)
    if min(sp) <= 1e-6:
        raise VolumeError(
            f"zero voxel spacing ({' x '.join(f'{s:g}' for s in sp)} mm); the header's "
            f"pixdim/affine is broken, so the volume cannot be resampled"
        )
    if abs(np.linalg.det(affine[:3, :3])) <= 1e-9 * float(np.prod(sp)):
        raise VolumeError("affine is singular (voxel axes are not independent)")


def load_nifti(path: str | Path, is_label: bool = False) -> SourceVolume:
    """Read a .nii/.nii.gz as float32 [X, Y, Z] with its affine; VolumeError if unusable."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    name = Path(path).name
    try:
        img = nib.load(str(path))
    except (ImageFileError, EOFError, OSError, zlib.error, ValueError) as e:
        raise VolumeError(f"not a readable NIfTI ({type(e).__name__}: {first_line(e)})") from e
    shape = tuple(int(s) for s in img.shape)
    spatial = shape[:3]
    extra = shape[3:]
    if len(shape) < 3 or sum(s > 1 for s in spatial) < 3:
        raise VolumeError(
            f"image is 2-D (shape {' x '.join(map(str, shape))}); a CT volume needs three "
            f"spatial dimensions of more than one voxel"
        )
    if any(s > 1 for s in extra):
        raise VolumeError(
            f"image is {len(shape)}-D (shape {' x '.join(map(str, shape))}); store one volume "
            f"per file"
        )
    check_geometry(spatial, img.affine)
    try:
        raw = np.asarray(img.dataobj)
    except (EOFError, OSError, zlib.error, ValueError) as e:
        raise VolumeError(
            f"voxel data is truncated or corrupt ({type(e).__name__}: {first_line(e)}); "
            f"re-export or re-download {name}"
        ) from e
    raw = raw.reshape(spatial)
    if is_label:
        data = raw
    else:
        data = raw.astype(np.float32, copy=False)
        if not np.isfinite(data).all():
            data = np.where(np.isfinite(data), data, np.float32(AIR_HU))
    return SourceVolume(data=data, affine=np.asarray(img.affine, dtype=np.float64))


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute voxel axes (no interpolation) so they run closest to R, A, S."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    out = np.ascontiguousarray(apply_orientation(data, ornt))
    return out, affine @ inv_ornt_aff(ornt, data.shape)


def float32_geometry(affine: np.ndarray) -> np.ndarray:
    """The affine at float32 precision (as a NIfTI header stores it), computed in float64."""
    out = np.asarray(affine, dtype=np.float32).astype(np.float64)
    out[3] = (0.0, 0.0, 0.0, 1.0)
    return out + 0.0  # no negative zeros


def shear_voxels(affine: np.ndarray, shape: tuple[int, ...]) -> float:
    """How far (in voxels of the other axes) the volume's far end is shifted by shear: 0 for an
    orthogonal affine, e.g. ~n·tan(tilt)·Δz/Δy for a gantry-tilted series."""
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(cols, axis=0)
    worst = 0.0
    for i in range(3):
        for j in range(3):
            if i != j:
                along_i = abs(cols[:, j] @ cols[:, i]) / spacing[i]  # mm along axis i per step j
                worst = max(worst, along_i * (shape[j] - 1) / spacing[i])
    return worst


def resample_image(
    data: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resampling to ``spacing`` mm (MONAI ``Spacing``); returns [X', Y', Z'], affine.

    The output grid is orthogonal. For a sheared input, points outside the sheared volume are
    air (never the replicated border)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    sheared = shear_voxels(affine, data.shape) > MAX_ROUNDING_SHEAR_VOXELS
    offset = np.float32(-AIR_HU if sheared else 0.0)  # zero padding of (HU + 1024) is air
    t = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32) + offset)[None],
        affine=torch.as_tensor(affine, dtype=torch.float64),
    )
    padding = "zeros" if sheared else "border"
    out = Spacing(pixdim=spacing, mode="bilinear", padding_mode=padding, dtype=torch.float32)(t)
    return out[0].numpy() - offset, np.asarray(out.affine, dtype=np.float64)


def stored_grid(
    data: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """A source volume on the stored grid: RAS voxel axes, float32 geometry, resampled to
    ``spacing``; returns float32 HU [X', Y', Z'] and the affine that was used."""
    ras, ras_affine = to_ras(data, float32_geometry(affine))
    return resample_image(ras, ras_affine, spacing)


def resample_label(
    data: np.ndarray,
    affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: tuple[int, int, int],
) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto the image's output grid (world mm)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    t = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None],
        affine=torch.as_tensor(affine, dtype=torch.float64),
    )
    out = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)(
        t, dst_affine=torch.as_tensor(dst_affine, dtype=torch.float64), spatial_size=dst_shape
    )
    return np.rint(out[0].numpy())


def to_int16_hu(data: np.ndarray) -> tuple[np.ndarray, int]:
    """Round to int16 HU, clipping (never wrapping) out-of-range values; also the clip count."""
    rounded = np.rint(data)
    clipped = int(np.count_nonzero((rounded < INT16_MIN) | (rounded > INT16_MAX)))
    return np.clip(rounded, INT16_MIN, INT16_MAX).astype(np.int16), clipped


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint8 when every id fits, else uint16 (label maps stored as they are, without a class
    table); VolumeError for negative or huge ids, saying how a class table maps them."""
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise VolumeError(
            f"label ids must be in [0, 65535] to be stored as they are (found {lo}..{hi}); give "
            f"--classes with the class ids (and e.g. ignore_index: {lo} for a no-data value)"
        )
    return np.dtype(np.uint8 if hi <= 255 else np.uint16)


def foreground_bbox(
    hu: np.ndarray, threshold_hu: float, margin_vox: tuple[int, int, int]
) -> tuple[tuple[int, int], ...] | None:
    """Bounding box ``((x0, x1), (y0, y1), (z0, z1))`` of voxels above ``threshold_hu`` plus a
    margin, clipped to the volume; None when nothing is above the threshold."""
    mask = hu > threshold_hu
    if not mask.any():
        return None
    box = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(0, int(idx[0]) - margin_vox[ax])
        hi = min(hu.shape[ax], int(idx[-1]) + 1 + margin_vox[ax])
        box.append((lo, hi))
    return tuple(box)


def shift_affine(affine: np.ndarray, offset: tuple[int, int, int]) -> np.ndarray:
    """The affine of a sub-volume starting at voxel ``offset``."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ np.asarray(offset, dtype=np.float64) + affine[:3, 3]
    return out


def foreground_points(
    hu: np.ndarray,
    labels: np.ndarray | None,
    threshold_hu: float,
    max_points: int,
    seed: int,
) -> np.ndarray:
    """Up to ``max_points`` voxel coordinates [N, 3] (int32) for foreground-biased crops.

    With a label map: sampled per label id (equal share each, so a small organ is as likely a
    crop centre as the liver). Without: body voxels above ``threshold_hu``. Sampled with a seed
    from the case id, so a resumed build writes the same points.
    """
    rng = np.random.default_rng(seed)
    if max_points <= 0:
        return np.zeros((0, 3), dtype=np.int32)
    if labels is not None and labels.any():
        ids = np.unique(labels)
        ids = ids[ids != 0]
        per = max(1, max_points // len(ids))
        flat = labels.ravel()
        chosen = []
        for lab in ids:
            idx = np.flatnonzero(flat == lab)
            chosen.append(rng.choice(idx, size=min(per, idx.size), replace=False))
        flat_idx = np.sort(np.concatenate(chosen))
    else:
        idx = np.flatnonzero(hu.ravel() > threshold_hu)
        if idx.size == 0:
            return np.zeros((0, 3), dtype=np.int32)
        flat_idx = np.sort(rng.choice(idx, size=min(max_points, idx.size), replace=False))
    return np.stack(np.unravel_index(flat_idx, hu.shape), axis=1).astype(np.int32)


def hu_stats(hu: np.ndarray) -> dict[str, float]:
    """Exact min/max/mean and percentiles of an int16 volume (a histogram, not a sort)."""
    counts = np.bincount((hu.ravel().astype(np.int32) - INT16_MIN), minlength=65536)
    cdf = np.cumsum(counts)
    total = int(cdf[-1])
    values = np.arange(INT16_MIN, INT16_MAX + 1)
    out = {
        "hu_min": float(hu.min()),
        "hu_max": float(hu.max()),
        "hu_mean": float((counts * values).sum() / total),
    }
    for q in HU_PERCENTILES:
        rank = min(total - 1, int(np.floor(q / 100.0 * (total - 1))))
        out[hu_percentile_column(q)] = float(values[np.searchsorted(cdf, rank + 1)])
    return out
