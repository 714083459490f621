"""``build_dataset --modality ct``: flags reach the CT config; DICOM as scanners and PACS export
it builds through the CLI; the exit status and its one line say what happened; ``stats`` on a
CT store.

CT config errors are checked with the RS ones in test_build_dataset.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless

from data_pipelines.ct.preview import CELL, COLUMNS
from geomed_mim.build_dataset import main, parse_config
from tests.data_pipelines.ct.dicom_files import (
    write_dicom_series,
    write_localizer,
    write_multiframe,
    write_tilted_series,
)
from tests.geomed_mim.conftest import build_printing


def test_ct_flags_parse_into_the_ct_config(tmp_path: Path, demo_data: Path) -> None:
    from data_pipelines.ct.config import CTBuildConfig

    cfg, is_demo = parse_config(
        [
            *("--modality", "ct", "--input", "demo:ct", "--output", str(tmp_path / "o")),
            *("--spacing", "[0.8, 0.8, 1.5]", "--crop-foreground", "--codec", "zstd"),
            *("--chunk-size", "48", "--labels", "none"),
        ]
    )
    assert isinstance(cfg, CTBuildConfig)
    assert not is_demo
    assert cfg.input == str(demo_data / "ct")
    assert cfg.spacing == (0.8, 0.8, 1.5)
    assert (cfg.crop_foreground, cfg.codec, cfg.chunk_size, cfg.labels) == (
        True,
        "zstd",
        48,
        "none",
    )


def test_ct_demo_config_is_the_default_for_modality_ct() -> None:
    cfg, is_demo = parse_config(["--modality", "ct"])
    assert is_demo
    assert cfg.output == "geomed_demo_ct"
    assert cfg.spacing == (1.5, 1.5, 1.5)


# -- DICOM as hospitals export it, through the CLI ---------------------------------------------
CT_SM = "ct/totalsegmentator_example/example_ct_sm.nii.gz"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["--modality", "ct", "--workers", "1", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def hospital_archive(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real exports of one real scan, each as a scanner or PACS writes it:

    anon/       anonymized series (blank UIDs) + a LOCALIZER + a scout of another orientation
    enhanced/   one enhanced multi-frame file, frames out of order, per-frame rescale
    j2k/        the series in JPEG 2000 lossless
    tilted/     the scan on planes of a 12-degree gantry tilt
    uneven/     3 mm slices, then 6 mm slices
    """
    root = tmp_path_factory.mktemp("hospital_ct")
    scan = shared_data / CT_SM
    write_dicom_series(scan, root / "anon", series_uid="", series_number="2")
    write_localizer(root / "anon", scan, "LOC.dcm", "ORIGINAL\\PRIMARY\\LOCALIZER")
    write_localizer(root / "anon", scan, "SCOUT.dcm", None)
    write_multiframe(scan, root / "enhanced" / "ct.dcm", np.random.default_rng(1).permutation(30))
    write_dicom_series(scan, root / "j2k", transfer_syntax=JPEG2000Lossless)
    write_tilted_series(scan, root / "tilted", 12.0)
    write_dicom_series(scan, root / "uneven", drop=tuple(range(17, 28, 2)))
    return root


@pytest.fixture(scope="module")
def hospital_build(hospital_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("hospital_store") / "store"
    rc, printed = build_printing("--modality", "ct", "--input", str(hospital_archive),
                                 "--output", str(out), "--workers", "1")  # fmt: skip
    return {"rc": rc, "out": out, "stdout": printed}


def _rows(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}


def test_hospital_exports_build_into_volumes(hospital_build: dict) -> None:
    assert hospital_build["rc"] == 0
    rows = _rows(hospital_build["out"])
    assert sorted(rows) == ["anon", "enhanced", "j2k", "tilted", "uneven"]
    assert rows["anon"]["series_uid"] is None  # blank in the files
    # the same scan, grouped without UIDs, from one multi-frame file and from JPEG 2000: the
    # very same stored voxels
    assert rows["enhanced"]["dup_of"] == "anon"
    assert rows["j2k"]["dup_of"] == "anon"
    assert rows["tilted"]["gantry_tilt_deg"] == pytest.approx(12.0, abs=0.01)
    assert rows["anon"]["gantry_tilt_deg"] == 0.0
    assert rows["uneven"]["slice_steps"] == pytest.approx([3.0, 6.0], abs=1e-4)
    counts = json.loads((hospital_build["out"] / "build.json").read_text())["counts"]
    assert counts["volumes_gantry_tilt_corrected"] == 1
    # preview.png: one mid-axial slice per stored volume, windowed (not a blank canvas)
    preview = np.asarray(Image.open(hospital_build["out"] / "preview.png"))
    assert preview.shape[1] == COLUMNS * CELL
    assert preview[:CELL, :CELL].std() > 20
    assert counts["volumes_uneven_slices_resampled"] == 1
    assert (
        "files ignored        2  (localizer/scout image: 1, single slice whose geometry differs "
        "from the series beside it: 1)" in hospital_build["stdout"]
    )


def test_strict_accepts_an_export_with_localizers_and_fails_on_other_ignored_files(
    hospital_archive: Path, hospital_build: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PACS export holds a localizer and a scout beside its series: ignored (listed with the
    reason), and no reason for --strict to fail; a label map without its image is."""
    rc, _, err = _run(["--input", str(hospital_archive), "--output", str(hospital_build["out"]),
                       "--strict"], capsys)  # fmt: skip
    assert rc == 0, err
    orphan = hospital_archive / "orphans" / "lost_seg.nii.gz"
    orphan.parent.mkdir()
    orphan.write_bytes(b"")  # named like a label map: ignored as one without its image
    try:
        rc, _, err = _run(["--input", str(hospital_archive), "--output",
                           str(hospital_build["out"]), "--strict"], capsys)  # fmt: skip
    finally:
        orphan.unlink()
        orphan.parent.rmdir()
    assert rc == 1
    assert err.strip().splitlines()[-1] == (
        "error: --strict: 0 input(s) quarantined, 1 file(s) ignored (see build.json)"
    )


def test_stats_on_a_ct_store_are_exact_hu_statistics(
    hospital_build: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    import zarr

    out = hospital_build["out"]
    assert main(["stats", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"HU statistics of {out} (3 kept, non-duplicate volumes")
    rows = [r for r in _rows(out).values() if r["dup_of"] is None]
    voxels = np.concatenate(
        [zarr.open_array(str(out / "store.zarr" / r["array"]), mode="r")[...].ravel() for r in rows]
    ).astype(np.float64)
    attrs = zarr.open_group(str(out / "store.zarr"), mode="r").attrs["hu_stats"]
    assert attrs["voxels"] == voxels.size
    assert attrs["mean"] == pytest.approx(voxels.mean(), rel=1e-12)
    assert attrs["std"] == pytest.approx(voxels.std(), rel=1e-9)
    assert (attrs["min"], attrs["max"]) == (voxels.min(), voxels.max())
    assert attrs["percentiles"]["p50"] == np.sort(voxels)[(voxels.size - 1) // 2]


def test_nothing_usable_exits_1_with_the_reason(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a localizer and an MR slice: nothing to build, so exit 1 and one line why; a
    series that is quarantined as a whole: the same."""
    only = tmp_path / "only_scouts"
    write_localizer(only, shared_data / CT_SM, "LOC.dcm", "ORIGINAL\\PRIMARY\\LOCALIZER")
    mr = write_localizer(only, shared_data / CT_SM, "MR.dcm", None)
    ds = pydicom.dcmread(mr)
    ds.Modality = "MR"
    ds.save_as(mr)
    rc, _, err = _run(["--input", str(only), "--output", str(tmp_path / "o1")], capsys)
    assert rc == 1
    assert err.strip().splitlines()[-1] == (
        f"error: nothing was written to {tmp_path / 'o1'}: no usable input: 2 file(s) ignored "
        f"(DICOM Modality MR is not CT: 1, localizer/scout image: 1)"
    )
    lost = tmp_path / "lost"
    write_dicom_series(shared_data / CT_SM, lost / "series", drop=(12,))
    rc, _, err = _run(["--input", str(lost), "--output", str(tmp_path / "o2")], capsys)
    assert rc == 1
    assert "all 1 input(s) were quarantined (e.g. " in err.strip().splitlines()[-1]
    assert "missing slice: gap of 6.00 mm" in err.strip().splitlines()[-1]
