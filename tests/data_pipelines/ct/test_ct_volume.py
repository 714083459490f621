"""Exact geometry: a scan with a scanner's 0.9765625 mm pixels is stored on the grid MONAI's
``Orientationd`` + ``Spacingd`` make of it, with the affine and spacing actually used."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from data_pipelines.ct.volume import resample_image, to_ras

pytestmark = pytest.mark.shared_data

CT_SM = "ct/totalsegmentator_example/example_ct_sm.nii.gz"
PIXEL = 0.9765625  # 250 mm field of view over 256 pixels: exact in binary, 7 decimals


def monai_reference(path: Path, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """MONAI's own chain on the file: HU rounded to integers (as stored) and the affine."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    chain = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(spacing,) * 3, mode="bilinear"),
        ]
    )
    out = chain({"image": str(path)})["image"]
    return np.rint(out[0].numpy()), np.asarray(out.affine, dtype=np.float64)


def test_stored_volume_matches_monai_with_unrounded_geometry(
    shared_data: Path, tmp_path: Path
) -> None:
    from geomed_mim.build_dataset import main

    src = nib.load(str(shared_data / CT_SM))
    affine = np.diag([-PIXEL, -PIXEL, 2.5, 1.0])
    affine[:3, 3] = (124.51171875, 250.1171875, -320.5)
    scan = tmp_path / "in" / "scan.nii.gz"
    scan.parent.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), affine), str(scan))
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["--modality", "ct", "--input", str(scan.parent), "--output", str(out),
                   "--workers", "1"])  # fmt: skip
    assert rc == 0
    row = pq.read_table(out / "manifest.parquet").to_pylist()[0]
    stored = zarr.open_array(str(out / "store.zarr" / row["array"]), mode="r")[...]
    ref, ref_affine = monai_reference(scan, 1.5)

    assert row["orig_spacing"] == [PIXEL, PIXEL, 2.5]  # exactly, not 0.9766
    assert row["spacing"] == pytest.approx([1.5, 1.5, 1.5], abs=1e-12)  # norms of the affine
    assert np.asarray(row["affine"]).reshape(4, 4) == pytest.approx(ref_affine, abs=1e-9)
    assert stored.shape == ref.shape
    body = ref > -500
    assert body.mean() > 0.2
    assert np.abs(stored - ref)[body].mean() < 0.05

    # the check can fail: geometry rounded to 1e-4 mm shifts the far side of the field of view
    ras, ras_affine = to_ras(np.asarray(nib.load(str(scan)).dataobj, np.float32), affine)
    rounded = np.round(ras_affine, 4)
    shifted = np.rint(resample_image(ras, rounded, (1.5, 1.5, 1.5))[0])
    assert np.abs(shifted - ref)[body].mean() > 0.1
