"""CT build on real TotalSegmentator volumes: geometry, labels, duplicates, bad inputs, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from data_pipelines.ct.config import CTBuildConfig
from data_pipelines.ct.pipeline import build_ct
from data_pipelines.ct.volume import to_int16_hu
from tests.build_hooks import STOP_AFTER_PARTS_ENV, STOPPED_EXIT_CODE

pytestmark = pytest.mark.shared_data

# the sample files (as in this folder's conftest.py)
CT_SM = "ct/totalsegmentator_example/example_ct_sm.nii.gz"
SEG_SM = "ct/totalsegmentator_example/example_seg.nii.gz"
CTPA = "ct/totalsegmentator_ctpa_crop/ct_cropped.nii.gz"
CTPA_SEG = "ct/totalsegmentator_ctpa_crop/pulmonary_artery.nii.gz"


def _rows(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}


def _array(out: Path, path: str) -> np.ndarray:
    return zarr.open_array(str(out / "store.zarr" / path), mode="r")[...]


# soft-tissue labels of example_seg (TotalSegmentator ids): spleen, kidneys, gallbladder, liver,
# stomach, inferior vena cava, autochthon muscles; lungs, bone and colon sit next to air or
# bone, so interpolation legitimately moves their mean by tens of HU
SOFT_TISSUE = (1, 2, 3, 4, 5, 6, 63, 86, 87)


def _source(shared_data: Path, image: str, label: str) -> tuple:
    src = nib.load(str(shared_data / image))
    seg = np.asarray(nib.load(str(shared_data / label)).dataobj)
    return np.asarray(src.dataobj).astype(np.float64), seg, src.affine


@pytest.mark.parametrize(
    ("case", "image", "label"),
    [("abdomen", CT_SM, SEG_SM), ("chest/ctpa", CTPA, CTPA_SEG)],  # RAS 3 mm; LPS 1.5 mm
)
def test_stored_grid_matches_source_where_grids_coincide(
    ct_build: dict, shared_data: Path, case: str, image: str, label: str
) -> None:
    """Every stored voxel whose centre is a source voxel centre (in world mm, through both
    affines) holds exactly that voxel's HU and label: no shift, flip or swap anywhere."""
    out = ct_build["out"]
    row = _rows(out)[case]
    hu_src, seg, src_affine = _source(shared_data, image, label)
    stored, stored_lab = _array(out, row["array"]), _array(out, row["label_array"])
    affine = np.asarray(row["affine"]).reshape(4, 4)
    assert row["spacing"] == pytest.approx([1.5, 1.5, 1.5])
    assert np.linalg.norm(affine[:3, :3], axis=0) == pytest.approx([1.5, 1.5, 1.5])
    assert np.all(np.diag(affine)[:3] > 0), "stored axes must run to R, A, S"
    assert tuple(row["shape"]) == stored.shape == stored_lab.shape
    assert row["orig_shape"] == list(hu_src.shape)
    assert np.asarray(row["orig_affine"]).reshape(4, 4) == pytest.approx(src_affine)

    grid = np.stack(np.meshgrid(*[np.arange(n) for n in stored.shape], indexing="ij"), -1)
    pts = grid.reshape(-1, 3)
    src_idx = (np.linalg.inv(src_affine) @ affine @ np.c_[pts, np.ones(len(pts))].T)[:3].T
    on_grid = np.all(np.abs(src_idx - np.rint(src_idx)) < 1e-3, axis=1)
    on_grid &= np.all((np.rint(src_idx) >= 0) & (np.rint(src_idx) < hu_src.shape), axis=1)
    assert on_grid.sum() > 0.1 * len(pts)
    s_idx = tuple(np.rint(src_idx[on_grid]).astype(int).T)
    d_idx = tuple(pts[on_grid].T)
    assert np.array_equal(stored[d_idx], hu_src[s_idx])
    assert np.array_equal(stored_lab[d_idx], seg[s_idx])


def test_world_points_keep_their_anatomy_at_other_spacing(
    ct_good_archive: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Resampled to a non-nested anisotropic grid, a world point still lands in the same tissue:
    mean HU of each soft-tissue organ, looked up through the stored affine and inside the
    resampled label, stays within a few HU of the source."""
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    for name in ("abdomen.nii.gz", "abdomen_seg.nii.gz"):
        (src_dir / name).symlink_to(ct_good_archive / name)
    build_ct(
        CTBuildConfig(input=str(src_dir), output=str(tmp_path / "out"), spacing=(2.0, 1.7, 2.2))
    )
    row = _rows(tmp_path / "out")["abdomen"]
    affine = np.asarray(row["affine"]).reshape(4, 4)
    assert np.linalg.norm(affine[:3, :3], axis=0) == pytest.approx([2.0, 1.7, 2.2])
    stored = _array(tmp_path / "out", row["array"])
    stored_lab = _array(tmp_path / "out", row["label_array"])
    hu_src, seg, src_affine = _source(shared_data, CT_SM, SEG_SM)
    for i in SOFT_TISSUE:
        vox = np.argwhere(seg == i)
        world = src_affine @ np.c_[vox, np.ones(len(vox))].T
        idx = np.rint(np.linalg.inv(affine) @ world)[:3].astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(stored.shape)[:, None]), axis=0)
        assert inside.mean() > 0.99
        before = hu_src[seg == i].mean()
        assert abs(stored[tuple(idx[:, inside])].mean() - before) < 5.0, i
        assert abs(stored[stored_lab == i].mean() - before) < 5.0, i


def test_manifest_records_source_geometry_stats_and_dicom_ids(ct_build: dict) -> None:
    rows = _rows(ct_build["out"])
    nii, dcm = rows["abdomen"], rows["dicom_abdomen"]
    assert (nii["format"], dcm["format"]) == ("nifti", "dicom")
    assert nii["orig_spacing"] == pytest.approx([3.0, 3.0, 3.0])
    assert nii["shape"] == [243, 201, 59]  # (n - 1) * 3 / 1.5 + 1 voxels per axis
    assert nii["hu_p0_5"] <= nii["hu_p50"] <= nii["hu_p99_5"]
    assert -1100 <= nii["hu_min"] < nii["hu_max"] <= 1207
    assert dcm["series_uid"]
    assert dcm["study_uid"]
    assert dcm["patient_id"] == "PAT-0001"
    assert rows["chest/ctpa"]["orig_orientation"] == "LPS"
    assert len(nii["label_ids"]) == 41
    assert rows["chest/ctpa"]["label_ids"] == [1]


def test_exact_duplicates_marked_including_nifti_vs_dicom(ct_build: dict) -> None:
    rows = _rows(ct_build["out"])
    assert rows["abdomen"]["dup_of"] is None
    assert rows["abdomen_copy"]["dup_of"] == "abdomen"
    # the pydicom series written from the NIfTI resamples to the very same int16 voxels
    assert rows["dicom_abdomen"]["dup_of"] == "abdomen"
    assert rows["dicom_abdomen"]["exact_hash"] == rows["abdomen"]["exact_hash"]
    assert rows["chest/ctpa"]["dup_of"] is None
    # a duplicate follows its original's split, so one scan never sits in train and val
    assert rows["abdomen_copy"]["split"] == rows["dicom_abdomen"]["split"]
    assert rows["abdomen_copy"]["split"] == rows["abdomen"]["split"]


def test_bad_inputs_quarantined_with_one_line_reasons(ct_build: dict) -> None:
    out = ct_build["out"]
    assert ct_build["rc"] == 0  # the build goes on and exits 0 without --strict
    lines = (out / "quarantine.jsonl").read_text().splitlines()
    reasons = {Path(q["source"]).name: q["reason"] for q in map(json.loads, lines)}
    assert set(reasons) == {
        "truncated.nii.gz",
        "flat2d.nii.gz",
        "zero_spacing.nii.gz",
        "dicom_missing",
    }
    assert "truncated" in reasons["truncated.nii.gz"]
    assert "2-D" in reasons["flat2d.nii.gz"]
    assert "zero voxel spacing" in reasons["zero_spacing.nii.gz"]
    assert "missing slice" in reasons["dicom_missing"]
    assert all("\n" not in r for r in reasons.values())
    for name, reason in reasons.items():
        assert f"{name}: {reason}" in ct_build["stdout"]
    rows = _rows(out)
    assert not any("bad/" in cid for cid in rows)
    assert not (out / "store.zarr" / "volumes" / "bad__truncated").exists()


def test_strict_exits_1_when_anything_was_quarantined(ct_build: dict, capsys) -> None:
    """Re-running resumes (finished volumes are skipped), the bad inputs fail again."""
    from geomed_mim.build_dataset import main

    config = json.loads((ct_build["out"] / "build.json").read_text())["config"]
    rc = main(
        [
            *("--modality", "ct", "--input", config["input"], "--output", str(ct_build["out"])),
            *("--workers", "1", "--val-fraction", "0.5", "--strict"),
        ]
    )
    assert rc == 1
    assert "--strict" in capsys.readouterr().err


def test_int16_conversion_clips_never_wraps() -> None:
    hu, clipped = to_int16_hu(np.array([-40000.0, -1024.4, 40.6, 40000.0], dtype=np.float32))
    assert hu.tolist() == [-32768, -1024, 41, 32767]
    assert clipped == 2


def test_foreground_crop_shrinks_grid_and_keeps_world_positions(
    ct_good_archive: Path, ct_build: dict, tmp_path: Path
) -> None:
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    (src_dir / "abdomen.nii.gz").symlink_to(ct_good_archive / "abdomen.nii.gz")
    cfg = CTBuildConfig(input=str(src_dir), output=str(tmp_path / "cropped"), crop_foreground=True)
    report = build_ct(cfg)
    assert not report.quarantined
    crop = _rows(tmp_path / "cropped")["abdomen"]
    full = _rows(ct_build["out"])["abdomen"]
    assert np.prod(crop["shape"]) < np.prod(full["shape"])
    off = np.array(crop["crop_offset"])
    a_full = _array(ct_build["out"], full["array"])
    a_crop = _array(tmp_path / "cropped", crop["array"])
    sl = tuple(slice(o, o + s) for o, s in zip(off, a_crop.shape, strict=True))
    assert np.array_equal(a_full[sl], a_crop)
    aff_full = np.asarray(full["affine"]).reshape(4, 4)
    aff_crop = np.asarray(crop["affine"]).reshape(4, 4)
    assert aff_crop @ [0, 0, 0, 1] == pytest.approx(aff_full @ [*off, 1])


@pytest.mark.slow
def test_resume_after_hard_stop_gives_identical_manifest(
    ct_good_archive: Path, tmp_path: Path, child_env: dict[str, str]
) -> None:
    """A CLI build (its own process) ends abruptly right after its first finished volume (the
    runner's stop hook, as sudden as a kill); re-running the same build equals an uninterrupted
    one: same manifest, same arrays."""
    ref_cfg = CTBuildConfig(input=str(ct_good_archive), output=str(tmp_path / "ref"))
    build_ct(ref_cfg)
    cfg = CTBuildConfig(input=str(ct_good_archive), output=str(tmp_path / "killed"))
    cmd = [sys.executable, "-m", "tests.build_hooks", "--modality", "ct"]
    cmd += ["--input", cfg.input, "--output", cfg.output, "--workers", "1"]
    env = {**child_env, STOP_AFTER_PARTS_ENV: "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == STOPPED_EXIT_CODE, proc.stderr
    done = list((tmp_path / "killed" / "parts").glob("*.parquet"))
    assert len(done) == 1
    assert not (tmp_path / "killed" / "manifest.parquet").exists()

    report = build_ct(cfg)
    assert report.resumed_parts == len(done)
    ref = pq.read_table(tmp_path / "ref" / "manifest.parquet")
    got = pq.read_table(tmp_path / "killed" / "manifest.parquet")
    assert got.equals(ref)
    for row in ref.to_pylist():
        assert np.array_equal(
            _array(tmp_path / "ref", row["array"]), _array(tmp_path / "killed", row["array"])
        )


def test_label_on_another_voxel_grid_is_resampled_through_world_coordinates(
    ct_good_archive: Path, ct_build: dict, tmp_path: Path
) -> None:
    """The chest mask re-saved in RAS voxel order (same world positions, flipped axes and a new
    affine), paired by CSV with the LPS image, lands on exactly the labels of the plain build."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "ctpa.nii.gz").symlink_to(ct_good_archive / "chest" / "ctpa.nii.gz")
    mask = nib.load(str(ct_good_archive / "chest" / "ctpa_seg.nii.gz"))
    nib.save(nib.as_closest_canonical(mask), str(tmp_path / "pa_in_ras.nii.gz"))
    (tmp_path / "pairs.csv").write_text("image,label\nin/ctpa.nii.gz,pa_in_ras.nii.gz\n")
    report = build_ct(
        CTBuildConfig(input=str(src), output=str(tmp_path / "out"),
                      labels_csv=str(tmp_path / "pairs.csv"))
    )  # fmt: skip
    assert not report.quarantined
    row = _rows(tmp_path / "out")["ctpa"]
    ref = _rows(ct_build["out"])["chest/ctpa"]
    assert row["label_source"].endswith("pa_in_ras.nii.gz")
    assert np.array_equal(
        _array(tmp_path / "out", row["label_array"]), _array(ct_build["out"], ref["label_array"])
    )
