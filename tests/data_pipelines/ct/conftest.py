"""CT fixtures: real TotalSegmentator volumes, a DICOM series written from one, bad inputs.

``ct_archive`` is one input folder built once per session (``ct_build``) and shared by the
pipeline tests, so the MONAI import and the resampling are paid once:

    abdomen.nii.gz + abdomen_seg.nii.gz      real abdominal CT (3 mm) with its label map
    abdomen_copy.nii.gz                      a byte copy (exact duplicate)
    chest/ctpa.nii.gz + ctpa_seg.nii.gz      real LPS chest CT crop (1.5 mm) with a mask
    dicom_abdomen/                           the abdominal CT as a DICOM series (duplicate)
    bad/truncated.nii.gz                     first half of a real .nii.gz
    bad/flat2d.nii.gz                        one axial slice of the real CT, saved 2-D
    bad/zero_spacing.nii.gz                  the real CT with a zero voxel edge in its affine
    bad/dicom_missing/                       the DICOM series with a middle slice deleted
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.data_pipelines.ct.dicom_files import write_dicom_series
from tests.geomed_mim.conftest import build_printing

CT_SM = "ct/totalsegmentator_example/example_ct_sm.nii.gz"
SEG_SM = "ct/totalsegmentator_example/example_seg.nii.gz"
CTPA = "ct/totalsegmentator_ctpa_crop/ct_cropped.nii.gz"
CTPA_SEG = "ct/totalsegmentator_ctpa_crop/pulmonary_artery.nii.gz"


def write_bad_inputs(shared: Path, bad: Path) -> None:
    """Four inputs a CT build must quarantine, each made from a real volume."""
    bad.mkdir(parents=True, exist_ok=True)
    raw = (shared / CT_SM).read_bytes()
    (bad / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    img = nib.load(str(shared / CT_SM))
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(data[:, :, 15], np.eye(4)), str(bad / "flat2d.nii.gz"))
    affine = img.affine.copy()
    affine[:3, 1] = 0.0  # the j voxel edge has zero length, as a broken export writes it
    hdr = img.header.copy()
    hdr.set_qform(None, code=0)
    hdr.set_sform(affine, code=2)
    hdr["pixdim"][2] = 0.0
    nib.save(nib.Nifti1Image(data, None, hdr), str(bad / "zero_spacing.nii.gz"))
    write_dicom_series(shared / CT_SM, bad / "dicom_missing", drop=(14,))


@pytest.fixture(scope="session")
def ct_good_archive(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only usable inputs (real volumes, a byte copy and a DICOM export)."""
    root = tmp_path_factory.mktemp("ct_good")
    shutil.copy(shared_data / CT_SM, root / "abdomen.nii.gz")
    shutil.copy(shared_data / SEG_SM, root / "abdomen_seg.nii.gz")
    shutil.copy(shared_data / CT_SM, root / "abdomen_copy.nii.gz")
    (root / "chest").mkdir()
    shutil.copy(shared_data / CTPA, root / "chest" / "ctpa.nii.gz")
    shutil.copy(shared_data / CTPA_SEG, root / "chest" / "ctpa_seg.nii.gz")
    write_dicom_series(shared_data / CT_SM, root / "dicom_abdomen")
    return root


@pytest.fixture(scope="session")
def ct_archive(
    shared_data: Path, ct_good_archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("ct_archive")
    shutil.copytree(ct_good_archive, root, dirs_exist_ok=True)
    write_bad_inputs(shared_data, root / "bad")
    return root


@pytest.fixture(scope="session")
def ct_build(ct_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The archive built once through the CLI: ``{"out": Path, "rc": int, "stdout": str}``."""
    out = tmp_path_factory.mktemp("ct_store") / "store"
    rc, printed = build_printing(
        *("--modality", "ct", "--input", str(ct_archive), "--output", str(out)),
        *("--workers", "1", "--val-fraction", "0.5"),
    )
    return {"out": out, "rc": rc, "stdout": printed}


@pytest.fixture(scope="session")
def dicom_writer():
    """``write_dicom_series`` for tests (conftest modules are not importable by name)."""
    return write_dicom_series
