"""CT discovery: the label naming rule and the CSV of pairs (DICOM series: test_dicom_grouping)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipelines.ct.discover import discover_ct
from data_pipelines.errors import InputError

CT_SM = "ct/totalsegmentator_example/example_ct_sm.nii.gz"


def _touch(root: Path, *names: str) -> None:
    # discovery never opens a NIfTI, so empty files are enough to test the rule
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"")


def test_naming_rule_suffix_and_label_folders(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "a/case01.nii.gz",
        "a/case01_seg.nii.gz",
        "a/case02.nii",
        "a/case02_Mask.nii",
        "a/case03.nii.gz",
        "a/orphan_gt.nii.gz",
        "msd/imagesTr/la_003_0000.nii.gz",
        "msd/labelsTr/la_003.nii.gz",
        "ts/s01.nii.gz",
        "ts/segmentations/s01.nii.gz",
        "a/notes.txt",
    )
    d = discover_ct(str(tmp_path))
    got = {c.case_id: (Path(c.label).relative_to(tmp_path).as_posix() if c.label else None)
           for c in d.cases}  # fmt: skip
    assert got == {
        "a/case01": "a/case01_seg.nii.gz",
        "a/case02": "a/case02_Mask.nii",
        "a/case03": None,
        "msd/imagesTr/la_003_0000": "msd/labelsTr/la_003.nii.gz",
        "ts/s01": "ts/segmentations/s01.nii.gz",
    }
    assert [(Path(p).name, why) for p, why in d.ignored] == [
        ("orphan_gt.nii.gz", "label map (by the naming rule) without its image")
    ]


def test_labels_none_makes_every_nifti_an_image(tmp_path: Path) -> None:
    _touch(tmp_path, "x.nii.gz", "x_seg.nii.gz")
    d = discover_ct(str(tmp_path), labels="none")
    assert [(c.case_id, c.label) for c in d.cases] == [("x", None), ("x_seg", None)]


def test_csv_pairs_win_and_carry_patient_ids(tmp_path: Path) -> None:
    _touch(tmp_path, "img/ct_a.nii.gz", "img/ct_b.nii.gz", "seg/organs_a.nii.gz", "x_seg.nii.gz")
    (tmp_path / "pairs.csv").write_text(
        "image,label,patient_id\nimg/ct_a.nii.gz,seg/organs_a.nii.gz,P1\nimg/ct_b.nii.gz,,P1\n"
    )
    d = discover_ct(str(tmp_path / "img"), labels_csv=str(tmp_path / "pairs.csv"))
    assert [
        (c.case_id, Path(c.label).name if c.label else None, c.patient_id) for c in d.cases
    ] == [
        ("ct_a", "organs_a.nii.gz", "P1"),
        ("ct_b", None, "P1"),
    ]
    (tmp_path / "bad.csv").write_text("path,mask\n")
    with pytest.raises(InputError, match=r"--labels-csv: .* columns 'image' and 'label'"):
        discover_ct(str(tmp_path / "img"), labels_csv=str(tmp_path / "bad.csv"))


def test_missing_input_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--input: .* does not exist"):
        discover_ct(str(tmp_path / "nope"))
