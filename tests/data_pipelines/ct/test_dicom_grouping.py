"""DICOM slices → series as hospitals export them: blank UIDs, folders mixing localizers, scouts,
reconstructions and orientations, and header reading on dask workers equal to the serial path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import parallel
from data_pipelines.ct.dicom import read_series
from data_pipelines.ct.dicom_grouping import (
    DERIVED_REASON,
    LOCALIZER_REASON,
    SCOUT_SET_REASON,
    STRAY_SLICE_REASON,
)
from data_pipelines.ct.discover import discover_ct
from data_pipelines.ct.volume import to_ras
from tests.data_pipelines.ct.dicom_files import (
    CT_SM,
    ct_sm_source,
    write_dicom_series,
    write_localizer,
)

pytestmark = pytest.mark.shared_data


def coronal_copy(shared_data: Path, path: Path) -> Path:
    """The scan re-saved with its voxel axes ordered [i, k, j]: the same world, sliced coronally."""
    img = nib.load(str(shared_data / CT_SM))
    data = np.asarray(img.dataobj).transpose(0, 2, 1)
    nib.save(nib.Nifti1Image(data, img.affine[:, [0, 2, 1, 3]]), str(path))
    return path


@pytest.fixture(scope="module")
def hospital_export(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One anonymized study folder as a PACS export leaves it (no UIDs anywhere): the axial
    series (number 2), a second reconstruction of it (number 3), a localizer flagged LOCALIZER,
    and a scout without the flag but with another orientation and size."""
    root = tmp_path_factory.mktemp("hospital")
    study = root / "ANON01" / "CT_ABDOMEN"
    write_dicom_series(shared_data / CT_SM, study, series_uid="", series_number="2",
                       description="ABD 3.0 B30f", prefix="A")  # fmt: skip
    write_dicom_series(shared_data / CT_SM, study, series_uid="", series_number="3",
                       description="ABD 3.0 B70f", prefix="B")  # fmt: skip
    write_localizer(study, shared_data / CT_SM, "LOC0001.dcm", "ORIGINAL\\PRIMARY\\LOCALIZER")
    write_localizer(study, shared_data / CT_SM, "SCOUT001.dcm", None)
    (study / "DICOMDIR.txt").write_text("not an image")
    return root


def test_blank_series_uid_is_grouped_by_folder_and_geometry(
    shared_data: Path, tmp_path: Path
) -> None:
    """An anonymizer blanked SeriesInstanceUID (and the study's): one series, the scan's exact
    voxels, no file ignored."""
    write_dicom_series(shared_data / CT_SM, tmp_path / "case07", series_uid="")
    d = discover_ct(str(tmp_path))
    assert [(c.case_id, c.series_uid, len(c.files)) for c in d.cases] == [("case07", "", 30)]
    assert d.ignored == []
    hu, affine = ct_sm_source(shared_data)
    vol = read_series(d.cases[0].files)
    assert np.array_equal(vol.hu, hu)
    assert vol.affine == pytest.approx(affine, abs=1e-4)


def test_mixed_folder_splits_reconstructions_and_drops_localizers(hospital_export: Path) -> None:
    d = discover_ct(str(hospital_export))
    assert [(c.case_id, len(c.files)) for c in d.cases] == [
        ("ANON01/CT_ABDOMEN/series-2", 30),
        ("ANON01/CT_ABDOMEN/series-3", 30),
    ]
    assert all(Path(f).name.startswith("A") for f in d.cases[0].files)
    assert all(Path(f).name.startswith("B") for f in d.cases[1].files)
    assert {Path(p).name: why for p, why in d.ignored} == {
        "LOC0001.dcm": LOCALIZER_REASON,
        "SCOUT001.dcm": STRAY_SLICE_REASON,
    }


def test_a_scout_set_in_its_own_folder_is_ignored_not_quarantined(
    shared_data: Path, tmp_path: Path
) -> None:
    """AP and lateral scouts saved as one series of single slices (no LOCALIZER flag), in a
    folder of their own: not volumes, so left out with the reason."""
    write_localizer(tmp_path / "s1", shared_data / CT_SM, "AP.dcm", None, "coronal")
    write_localizer(tmp_path / "s1", shared_data / CT_SM, "LAT.dcm", None, "sagittal")
    write_dicom_series(shared_data / CT_SM, tmp_path / "s2", series_uid="")
    d = discover_ct(str(tmp_path))
    assert [c.case_id for c in d.cases] == ["s2"]
    assert [(Path(p).name, why) for p, why in d.ignored] == [
        ("AP.dcm", SCOUT_SET_REASON),
        ("LAT.dcm", SCOUT_SET_REASON),
    ]


def test_derived_series_beside_the_original_are_ignored_not_cases(
    shared_data: Path, tmp_path: Path
) -> None:
    """A PACS export: the original axial series and a coronal reformat the scanner saved as
    DERIVED\\SECONDARY (its own UID and number, same study): one case, the reformat's files
    listed as ignored naming the series it was derived beside."""
    study = tmp_path / "PAT1" / "STUDY"
    write_dicom_series(shared_data / CT_SM, study / "S2", series_uid="", series_number="2")
    coronal = coronal_copy(shared_data, tmp_path / "coronal.nii.gz")
    write_dicom_series(coronal, study / "S5", series_uid="", series_number="5",
                       image_type="DERIVED\\SECONDARY\\MPR", prefix="MPR")  # fmt: skip
    d = discover_ct(str(tmp_path / "PAT1"))
    assert [(c.case_id, len(c.files)) for c in d.cases] == [("STUDY/S2", 30)]
    assert len(d.ignored) == 101  # every file of the reformat, each with the reason
    reasons = {why for _, why in d.ignored}
    assert len(reasons) == 1
    (reason,) = reasons
    assert reason.startswith(DERIVED_REASON)
    assert reason.endswith("S2 series 2")
    assert all(Path(p).parent.name == "S5" for p, _ in d.ignored)


def test_a_study_of_derived_series_only_keeps_them(shared_data: Path, tmp_path: Path) -> None:
    write_dicom_series(shared_data / CT_SM, tmp_path / "case01", series_uid="",
                       image_type="DERIVED\\PRIMARY\\AXIAL")  # fmt: skip
    d = discover_ct(str(tmp_path))
    assert [(c.case_id, len(c.files)) for c in d.cases] == [("case01", 30)]
    assert d.ignored == []


def test_one_uid_with_two_orientations_becomes_two_series(
    shared_data: Path, tmp_path: Path
) -> None:
    """An axial stack and its coronal reformat saved under one SeriesInstanceUID in one folder:
    split by orientation, each stacks back to the scan's voxels."""
    folder = tmp_path / "study"
    write_dicom_series(shared_data / CT_SM, folder, series_uid="1.2.3.9", prefix="AX")
    coronal = coronal_copy(shared_data, tmp_path / "coronal.nii.gz")
    write_dicom_series(coronal, folder, series_uid="1.2.3.9", prefix="COR")
    d = discover_ct(str(folder))
    assert sorted(len(c.files) for c in d.cases) == [30, 101]
    assert all(c.series_uid == "1.2.3.9" for c in d.cases)
    assert len({c.case_id for c in d.cases}) == 2
    hu, affine = to_ras(*ct_sm_source(shared_data))
    for case in d.cases:  # both in RAS voxel order: the same voxels on the same grid
        vol = read_series(case.files)
        vol_hu, vol_affine = to_ras(vol.hu, vol.affine)
        assert np.array_equal(vol_hu, hu)
        assert vol_affine == pytest.approx(affine, abs=1e-4)


def test_dicom_series_grouped_by_uid_and_ordered_by_position_not_name(
    shared_data: Path, tmp_path: Path
) -> None:
    """Two UID series in one folder, file names scrambled and InstanceNumber reversed: each is
    found by its UID and stacks back to the exact NIfTI voxels and affine."""
    write_dicom_series(shared_data / CT_SM, tmp_path / "mixed", series_uid="1.2.3.1", prefix="a")
    write_dicom_series(shared_data / CT_SM, tmp_path / "mixed", series_uid="1.2.3.2", prefix="b")
    d = discover_ct(str(tmp_path))
    assert sorted(c.series_uid for c in d.cases) == ["1.2.3.1", "1.2.3.2"]
    assert all(c.case_id.startswith("mixed/series-") for c in d.cases)
    assert all(len(c.files) == 30 for c in d.cases)
    hu, affine = ct_sm_source(shared_data)
    vol = read_series(d.cases[0].files)
    assert np.array_equal(vol.hu, hu)
    assert vol.affine == pytest.approx(affine, abs=1e-4)


@pytest.mark.slow
def test_headers_read_on_a_local_cluster_equal_the_serial_read(hospital_export: Path) -> None:
    serial = discover_ct(str(hospital_export), scheduler=parallel.SYNCHRONOUS)
    on_workers = discover_ct(str(hospital_export), scheduler=parallel.LOCAL, workers=2)
    assert on_workers == serial
    assert len(serial.cases) == 2
