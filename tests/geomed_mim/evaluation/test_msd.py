"""CT segmentation on a Medical Segmentation Decathlon task folder: the folder as MONAI reads it,
its held-out cases as MONAI's DecathlonDataset draws them, the shipped msd_spleen.yaml through
the command (sizes shrunk: steps and crop size), the HU-window Dice against NumPy on the built
store, and the user's mistakes as one line with exit status 2."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from geomed_mim.evaluate import main
from geomed_mim.evaluation.msd import CASES_FILE, STORE_DIR, split_cases
from tests.conftest import REPO_ROOT
from tests.geomed_mim.evaluation.msd_fixture import (
    TASK,
    real_ct_volumes,
    synthetic_volumes,
    write_nifti,
    write_task,
)

CONFIG = REPO_ROOT / "configs/evaluate/msd_spleen.yaml"
SMALL = ["--data.crop_size", "32"]  # the fixture's volumes are 32-36 voxels across


@pytest.fixture
def synthetic_task(tmp_path: Path) -> Path:
    return write_task(tmp_path / "msd", synthetic_volumes())


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def check_table(out: Path, steps: int, cases: int, held_out: int) -> list[dict[str, str]]:
    """Rows for the HU window and each mode, three seeds each; Dice per class and their mean;
    the note says which cases validate; the configuration is copied beside the table."""
    rows = read_rows(out)
    methods = [r["method"] for r in rows]
    assert (
        methods
        == ["HU window (per organ)"] * 3 + ["scratch / probe"] * 3 + ["scratch / finetune"] * 3
    )
    for r in rows:
        assert int(r["train_units"]) == cases - held_out
        assert 0 <= float(r["dice_spleen"]) <= 1
        assert float(r["mean_organ_dice"]) == pytest.approx(float(r["dice_spleen"]))
        if r["kind"] != "baseline":
            assert int(r["step"]) == steps
    table = (out / "results.md").read_text()
    assert f"{held_out} of the task's {cases} labeled training cases held out" in table
    assert "| mean_organ_dice | dice_spleen |" in table
    assert "| scratch / finetune | 1 |" in table
    assert "| HU window (per organ) | 1 |" in table
    copied = yaml.safe_load((out / "config.yaml").read_text())
    assert copied["data"]["class_path"] == "geomed_mim.evaluation.msd.MSDTask"
    return rows


def test_monai_reads_the_task_folder_and_holds_out_the_same_cases(synthetic_task):
    """MONAI's own reader lists every pair of the fixture, and DecathlonDataset (no download,
    nothing cached) holds out exactly the cases the split here marks ``val``, for several
    fractions and seeds."""
    from monai.apps import DecathlonDataset
    from monai.data import load_decathlon_datalist

    pairs = load_decathlon_datalist(synthetic_task / "dataset.json", True, "training")
    assert len(pairs) == 5
    assert all(Path(p["image"]).is_file() and Path(p["label"]).is_file() for p in pairs)
    assert Path(pairs[0]["image"]) == synthetic_task / "imagesTr" / "spleen_2.nii.gz"
    for val_frac, seed in [(0.2, 0), (0.4, 0), (0.4, 7), (0.6, 123)]:
        splits = split_cases(len(pairs), val_frac, seed)
        for section, side in (("validation", "val"), ("training", "train")):
            ds = DecathlonDataset(synthetic_task.parent, TASK, section, download=False,
                                  val_frac=val_frac, seed=seed, cache_rate=0.0,
                                  progress=False)  # fmt: skip
            expected = [p["image"] for p, s in zip(pairs, splits, strict=True) if s == side]
            assert sorted(d["image"] for d in ds.data) == sorted(expected)
    assert ds.get_properties("labels") == {"labels": {"0": "background", "1": "spleen"}}


def test_shipped_config_through_the_command_on_synthetic_pixels(synthetic_task, tmp_path):
    """``python -m geomed_mim.evaluate --config configs/evaluate/msd_spleen.yaml --data.root``
    as a user runs it (steps and crop size shrunk): the table, the config copy and the store
    (its ``val`` split the held-out case)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "geomed_mim.evaluate", "--config", str(CONFIG),
           "--data.root", str(synthetic_task), *SMALL, "--steps", "{probe: 2, finetune: 2}",
           "--output", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MSD Spleen: 4 training and 1 held-out cases" in done.stdout
    check_table(out, steps=2, cases=5, held_out=1)
    from data_pipelines.store.read import read_manifest

    manifest = read_manifest(out / STORE_DIR).to_pandas()
    held = [c for c, s in zip(["spleen_2", "spleen_5", "spleen_8", "spleen_11", "spleen_14"],
                              split_cases(5, 0.2, 0), strict=True) if s == "val"]  # fmt: skip
    assert sorted(manifest.loc[manifest.split == "val", "id"]) == held
    assert json.loads((out / CASES_FILE).read_text())["root"] == str(synthetic_task)


def numpy_hu_window_dice(store: Path, window: tuple[float, float]) -> float:
    """The HU-window baseline recomputed from the store's own arrays: the 2nd-98th percentile
    of the training cases' spleen HU (clipped to the window), its Dice on the held-out
    cases' labeled voxels."""
    import zarr

    from data_pipelines.store.read import read_manifest

    root = zarr.open_group(str(store / "store.zarr"), mode="r")
    voxels: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": []}
    for row in read_manifest(store).to_pylist():
        hu = np.clip(np.asarray(root[row["array"]][:], dtype=float), *window)
        label = np.asarray(root[row["label_array"]][:])
        keep = label != 255
        voxels[row["split"]].append((hu[keep], label[keep]))
    hu_train, label_train = (np.concatenate(v) for v in zip(*voxels["train"], strict=True))
    lo, hi = np.percentile(hu_train[label_train == 1], [2, 98])
    hu_val, label_val = (np.concatenate(v) for v in zip(*voxels["val"], strict=True))
    pred, target = (hu_val >= lo) & (hu_val <= hi), label_val == 1
    return 2 * float(np.sum(pred & target)) / float(pred.sum() + target.sum())


def test_shipped_config_on_real_ct(shared_data, tmp_path, capsys):
    """Crops of the real abdominal CT around its spleen as a Decathlon task: every row, and the
    HU-window Dice equals NumPy's on the stored voxels."""
    task = write_task(tmp_path / "msd", real_ct_volumes(shared_data))
    out = tmp_path / "out"
    main(["--config", str(CONFIG), "--data.root", str(task), *SMALL,
          "--steps", "{probe: 1, finetune: 1}", "--output", str(out)])  # fmt: skip
    rows = check_table(out, steps=1, cases=5, held_out=1)
    expected = numpy_hu_window_dice(out / STORE_DIR, (-175.0, 250.0))
    assert expected > 0.3  # the window finds real spleen
    for r in rows[:3]:
        assert float(r["dice_spleen"]) == pytest.approx(expected, abs=1e-6)
    assert all(math.isfinite(float(r["dice_spleen"])) for r in rows)


def break_training(task: Path) -> None:
    meta = json.loads((task / "dataset.json").read_text())
    meta["train"] = meta.pop("training")
    (task / "dataset.json").write_text(json.dumps(meta))


def misshape_label(task: Path) -> None:
    write_nifti(task / "labelsTr" / "spleen_8.nii.gz", np.zeros((16, 16, 11), np.uint8), np.eye(4))


MISTAKES = {
    "root missing": (lambda t: None, "missing", "no such folder"),
    "no dataset.json": (lambda t: (t / "dataset.json").unlink(), "", "no dataset.json in it"),
    "no training list": (break_training, "", 'has no "training" list'),
    "file missing": (lambda t: (t / "imagesTr" / "spleen_5.nii.gz").unlink(), "",
                     "training[1].image ./imagesTr/spleen_5.nii.gz does not exist"),
    "label shape": (misshape_label, "", "label spleen_8.nii.gz has shape [16, 16, 11], its "
                    "image spleen_8.nii.gz [16, 16, 12]"),
}  # fmt: skip


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_broken_task_folder_is_one_line_with_status_2(synthetic_task, tmp_path, mistake, capsys):
    """Each mistake stops the command before any build, in one line naming --data.root."""
    breaks, suffix, message = MISTAKES[mistake]
    breaks(synthetic_task)
    root = str(synthetic_task) + suffix
    with pytest.raises(SystemExit) as stop:
        main(["--config", str(CONFIG), "--data.root", root, "--output", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert err.startswith(f"error: --data.root {root}"), err
    assert message in err, err
    assert not (tmp_path / "o" / STORE_DIR).exists()


def test_a_fraction_that_holds_out_no_case_is_one_line(synthetic_task, tmp_path, capsys):
    """int(5 x 0.1) = 0 cases held out: the fraction is refused before any build."""
    with pytest.raises(SystemExit) as stop:
        main(["--config", str(CONFIG), "--data.root", str(synthetic_task),
              "--data.val_frac", "0.1", "--output", str(tmp_path / "o")])  # fmt: skip
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --data.val_frac 0.1: holds out 0 of the 5 training cases"), err
    assert not (tmp_path / "o" / STORE_DIR).exists()
