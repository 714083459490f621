"""Scene classification through the command, with the shipped EuroSAT and BigEarthNet configs
shrunk in size only (steps, encoder width) on fixtures in their on-disk layouts: every method ×
fraction × seed row, the feature baseline equal to an independent computation, the results
folder, and user mistakes as one line naming the flag with exit status 2."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from geomed_mim.evaluate import is_scene_task, main
from tests.conftest import REPO_ROOT
from tests.geomed_mim.evaluation.eurosat_fixture import EUROSAT_DIR, write_eurosat

CONFIG = REPO_ROOT / "configs/evaluate/eurosat_ms.yaml"
STEPS = {"linear": 12, "attentive": 12, "finetune": 4}
SHRINK = [
    "--steps", yaml.safe_dump(STEPS, default_flow_style=True).strip(),
    "--check_every", "4",
    "--task.encoder", "{embed_dim: 32, depth: 1, num_heads: 2, patch_size: 16}",
]  # fmt: skip


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("eurosat")
    return root, write_eurosat(root)


def band_statistics(root: Path, items: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: its 13 band means, then stds (reflectance), read with rasterio."""
    rows = []
    for name, _ in items:
        with rasterio.open(root / EUROSAT_DIR / name.split("_")[0] / f"{name}.tif") as f:
            x = f.read().astype(np.float64) * 1e-4
        rows.append(np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))]))
    return np.array(rows), np.array([k for _, k in items])


def test_cli_end_to_end_on_the_shipped_config(eurosat, tmp_path, child_env):
    root, splits = eurosat
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "geomed_mim.evaluate", "--config", str(CONFIG),
           "--data.root", str(root), "--encoders", "[scratch]", *SHRINK,
           "--output", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shipped = yaml.safe_load(CONFIG.read_text())
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    probes, fractions, seeds = shipped["probes"], shipped["fractions"], shipped["seeds"]
    baselines = {"band mean/std + logistic regression", "band mean/std + random forest"}
    assert len(shipped["baselines"]) == len(baselines)
    assert len(rows) == len(fractions) * len(seeds) * (len(baselines) + len(probes))
    methods = {r["method"] for r in rows}
    assert methods == {*baselines, *(f"scratch / {p}" for p in probes)}
    for r in rows:
        assert 0 <= float(r["top1"]) <= 1
        if r["kind"] in STEPS:  # the kept state is one of the checked steps
            assert int(r["step"]) in range(4, STEPS[r["kind"]] + 1, 4)
            assert int(r["select_units"]) == len(splits["val"])

    # the baseline at the full fraction, recomputed from the GeoTIFFs
    train, test = band_statistics(root, splits["train"]), band_statistics(root, splits["test"])
    for seed in seeds:
        regression = LogisticRegression(max_iter=2000, random_state=seed)
        model = make_pipeline(StandardScaler(), regression)
        pred = model.fit(*train).predict(test[0])
        (row,) = [r for r in rows if r["method"] == "band mean/std + logistic regression"
                  and float(r["budget"]) == 1.0 and int(r["seed"]) == seed]  # fmt: skip
        assert float(row["top1"]) == pytest.approx(np.mean(pred == test[1]))
        forest = RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1)
        forest_pred = forest.fit(*train).predict(test[0])
        (forest_row,) = [r for r in rows if r["method"] == "band mean/std + random forest"
                         and float(r["budget"]) == 1.0 and int(r["seed"]) == seed]  # fmt: skip
        assert float(forest_row["top1"]) == pytest.approx(np.mean(forest_pred == test[1]))
        f1 = f1_score(test[1], pred, average="macro", labels=[0, 1, 2], zero_division=0)
        assert float(row["macro_f1"]) == pytest.approx(f1)
        assert int(row["train_units"]) == len(splits["train"])

    table = (out / "results.md").read_text()
    assert "| scratch / attentive | 0.01 | 3 | 6 | 3 |" in table  # one image of each class
    used = yaml.safe_load((out / "config.yaml").read_text())
    assert used["data"]["root"] == str(root)
    assert used["steps"] == STEPS
    assert (out / "score_vs_budget.png").stat().st_size > 0


def test_the_dispatch_reads_the_data_class():
    assert is_scene_task(["--config", str(CONFIG)])
    assert not is_scene_task(["--config", str(REPO_ROOT / "configs/evaluate/ct_organs_demo.yaml")])
    assert not is_scene_task(["--config", str(CONFIG), "--data.class_path", "x.RSSegDataModule"])


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "--data.root is not set"),
        (["--data.root", "/no/such/folder"], "--data.root /no/such/folder: no such folder"),
        (["--data.root", "EMPTY"], "--data.root EMPTY: no EuroSAT there"),
        (["--seeds", "[0, 1]"], "--seeds [0, 1]: give at least 3"),
        (["--fractions", "[0, 1.0]"], "--fractions [0.0, 1.0]: give fractions in (0, 1]"),
        (["--probes", "[knn, svm]"], "--probes: unknown probe 'svm'"),
        (["--steps", "{linear: 0, attentive: 1, finetune: 1}"], "--steps.linear: give"),
        (["--encoders", "[runs/none.ckpt]"], "--encoders runs/none.ckpt: no such file"),
        (["--data.class_path", "torchgeo.datasets.NoSuch"], "--data.class_path torchgeo"),
        (["--data.bands", "[B99]"], "--data.bands ['B99']:"),
        (["--knn_k", "0"], "--knn_k 0: give a number of neighbours"),
        (["--baselines", "[pixels]"], "--baselines: unknown baseline 'pixels'"),
        (["--stepz", "3"], "--stepz"),
        (["--task.encoder", "{patch_size: 24}"], "--task.encoder.patch_size 24: does not divide"),
        (["--task.encoder", "{width: 8}"], "--task.encoder.width: not an encoder setting"),
        (["--data.init_args", "{bandz: s2}"], "--data.init_args {'bandz': 's2'}: EuroSAT refuses"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(eurosat, tmp_path, capsys, flags, expected):
    root, _ = eurosat
    (tmp_path / "EMPTY").mkdir()
    flags = [str(tmp_path / f) if f == "EMPTY" else f for f in flags]
    if not any(f == "--data.root" for f in flags) and expected != "--data.root is not set":
        flags = ["--data.root", str(root), *flags]
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(CONFIG), *flags, "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.replace(str(tmp_path / "EMPTY"), "EMPTY")
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    assert expected in err, err


def test_bigearthnet_multilabel_through_the_command(shared_data, tmp_path, capsys):
    """The shipped BigEarthNet config, shrunk in size, on the real patches in torchgeo's layout:
    mAP columns, uniform draws, and the band-statistics baseline at the full fraction equal to
    one logistic regression per class computed here."""
    from torchgeo.datasets import BigEarthNet

    from tests.geomed_mim.evaluation.bigearthnet_fixture import write_bigearthnet

    root, out = tmp_path / "ben", tmp_path / "out"
    splits = write_bigearthnet(root)
    test_set = BigEarthNet(root, split="test", bands="s2", download=False)
    assert len(test_set) == len(splits["test"])
    config = REPO_ROOT / "configs/evaluate/bigearthnet_s2.yaml"
    main(["--config", str(config), "--data.root", str(root), "--encoders", "[scratch]", *SHRINK,
          "--task.encoder", "{embed_dim: 32, depth: 1, num_heads: 2, patch_size: 20}",  # 120 px
          "--data.num_workers", "0", "--output", str(out)])  # fmt: skip
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3 * 6  # fractions × seeds × (2 baselines + 4 probes)
    assert (
        "| method | budget | train units | select units | seeds | map | micro_map |"
        in (out / "results.md").read_text()
    )
    for r in rows:
        assert 0 <= float(r["map"]) <= 1
        assert int(r["train_units"]) == (6 if float(r["budget"]) == 1.0 else 1)

    def statistics(split: str) -> tuple[np.ndarray, np.ndarray]:
        ds = BigEarthNet(root, split=split, bands="s2", download=False)
        x = torch.stack([ds[i]["image"] for i in range(len(ds))]).double() * 1e-4
        feats = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)], dim=1)
        return feats.numpy(), torch.stack([ds[i]["label"] for i in range(len(ds))]).numpy()

    (x, y), (xt, yt) = statistics("train"), statistics("test")
    scores = np.zeros(yt.shape)
    for c in range(y.shape[1]):
        if 0 < y[:, c].sum() < len(y):
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            scores[:, c] = model.fit(x, y[:, c]).predict_proba(xt)[:, 1]
        else:
            scores[:, c] = y[0, c]
    present = yt.sum(0) > 0
    expected = average_precision_score(yt[:, present], scores[:, present], average="macro")
    (row,) = [r for r in rows if r["method"] == "band mean/std + logistic regression"
              and float(r["budget"]) == 1.0 and r["seed"] == "0"]  # fmt: skip
    assert float(row["map"]) == pytest.approx(expected)


def test_a_converted_swin_v2_is_an_encoder_entry_like_any_other(eurosat, tmp_path, capsys):
    """A Swin V2 folder as ``convert --from satvision`` writes it: its bands matched by name,
    every probe a row, and the frozen tokens those of timm's own SwinTransformerV2 with the same
    weights (its normed last-stage map)."""
    from timm.models.swin_transformer_v2 import SwinTransformerV2

    from geomed_mim.evaluation.scene_data import PatchTokens, SceneData
    from geomed_mim.evaluation.scene_protocol import SceneProtocol, build_swin_encoder, open_splits
    from tests.geomed_mim.tasks.test_segmentation_swin import SWIN2, converted_swinv2

    root, _ = eurosat
    folder, state = converted_swinv2(tmp_path)
    out = tmp_path / "out"
    main(["--config", str(CONFIG), "--data.root", str(root), *SHRINK, "--seeds", "[0, 1, 2]",
          "--encoders", f"[{folder}]", "--baselines", "[]", "--output", str(out)])  # fmt: skip
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    shipped = yaml.safe_load(CONFIG.read_text())
    probes = {r["method"].rsplit(" / ", 1)[1] for r in rows}
    assert probes == set(shipped["probes"])
    assert len(rows) == len(shipped["fractions"]) * 3 * len(shipped["probes"])
    assert all(0 <= float(r["top1"]) <= 1 for r in rows)
    assert "Swin V2" in capsys.readouterr().out

    # the tokens: timm's model with the folder's weights on the same (band-matched) input
    p = SceneProtocol(data=SceneData(root=str(root)))
    splits = open_splits(p)
    enc, _, _ = build_swin_encoder(str(folder), splits, (np.zeros(13), np.ones(13)), print)
    sizes = {k: v for k, v in SWIN2.items() if k != "patch_size"}
    timm_model = SwinTransformerV2(img_size=splits.image_size, patch_size=4, in_chans=13,
                                   num_classes=0, **sizes).eval()  # fmt: skip
    weights = {k: v for k, v in enc.state_dict().items() if k != "mask_token"}
    timm_model.load_state_dict(weights)  # strict: the same parameters, timm's names
    x = torch.randn(2, 13, *splits.image_size)
    with torch.no_grad():
        ours = PatchTokens(enc.eval())(x)
        theirs = timm_model.forward_features(x).flatten(1, 2)
    assert torch.allclose(ours, theirs, atol=1e-5)
    rgb = [splits.bands.index(b) for b in ("B02", "B03", "B04")]
    patch_weight = enc.state_dict()["patch_embed.proj.weight"]
    assert torch.equal(patch_weight[:, rgb], state["patch_embed.proj.weight"])
