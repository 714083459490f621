"""The training CLI: every shipped config parses into its task, both entry modules are the one
CLI, checkpoints are written atomically, a user mistake is one line."""

from __future__ import annotations

import importlib
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from lightning.pytorch import LightningDataModule
from rasterio.transform import from_origin

from geomed_mim import cli, finetune_seg, pretrain
from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO
from geomed_mim.tasks.pretraining import MIMPretrainTask
from geomed_mim.tasks.segmentation import SegmentationTask
from tests.geomed_mim.conftest import REPO_ROOT, usage_error_line

PRETRAIN_CONFIGS = sorted((REPO_ROOT / "configs" / "pretrain").glob("*.yaml"))
FINETUNE_CONFIGS = sorted((REPO_ROOT / "configs" / "finetune").glob("*.yaml"))


def printed_config(main, config, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(config), "--print_config"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def task_class(printed: str) -> type:
    module, name = yaml.safe_load(printed)["model"]["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("config", PRETRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_pretrain_configs_parse(config, capsys):
    printed = printed_config(pretrain.main, config, capsys)
    # the pretraining task or a subclass of it (SelectiveMAE's adds the pruning option)
    assert issubclass(task_class(printed), MIMPretrainTask)
    assert "class_path: geomed_mim.data.datamodules." in printed


@pytest.mark.parametrize("config", FINETUNE_CONFIGS, ids=lambda p: p.name)
def test_shipped_finetune_configs_parse(config, capsys):
    printed = printed_config(finetune_seg.main, config, capsys)
    assert task_class(printed) is SegmentationTask
    assert "class_path: geomed_mim.data.segmentation." in printed


@pytest.mark.parametrize("config", PRETRAIN_CONFIGS + FINETUNE_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_leave_every_output_folder_to_the_run_root(config):
    """No checkpoint, log or prediction folder of their own: all of a run goes under
    default_root_dir, so a new root is a new run; no config turns the progress display off."""
    cfg = yaml.safe_load(config.read_text())
    trainer = cfg["trainer"]
    assert str(trainer["default_root_dir"]).startswith("runs/")
    assert "logger" not in trainer
    assert "enable_progress_bar" not in trainer
    for callback in trainer.get("callbacks") or []:
        assert "dirpath" not in (callback.get("init_args") or {}), callback
    assert "predict_output" not in cfg["data"]["init_args"]


def test_entry_modules_run_the_one_cli():
    assert pretrain.main is cli.pretrain_main
    assert finetune_seg.main is cli.finetune_seg_main
    assert issubclass(cli.PretrainCLI, cli.TrainingCLI)
    assert issubclass(cli.FinetuneSegCLI, cli.TrainingCLI)
    # what each links from the data module into its task
    assert set(cli.PretrainCLI.linked_fields) == {"in_chans", "img_size", "spatial_dims"}
    assert set(cli.FinetuneSegCLI.linked_fields) >= {"bands", "classes", "mean", "std"}


@pytest.mark.slow
def test_cli_uses_atomic_checkpoint_io(demo_store):
    built = cli.PretrainCLI(
        MIMPretrainTask,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        auto_configure_optimizers=False,
        args=[
            "--config",
            str(REPO_ROOT / "configs/pretrain/demo_cpu.yaml"),
            "--data.init_args.store",
            str(demo_store),
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
        ],
    )
    assert isinstance(built.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert built.model.model.encoder.in_chans == 13  # linked from the store's band list


@pytest.mark.slow
@pytest.mark.parametrize("module", ["geomed_mim.pretrain", "geomed_mim.finetune_seg"])
def test_python_m_entry_points(module, child_env, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", module, "fit", "--help"],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--config" in proc.stdout
    assert "--ckpt_path" in proc.stdout


# -- user mistakes: one line, exit 2 ---------------------------------------------------------------
def empty_store(tmp_path: Path) -> Path:
    """A store build_dataset wrote from a flat raster: every tile excluded, nothing usable."""
    from geomed_mim.build_dataset import main as build_dataset

    flat = tmp_path / "flat.tif"
    with rasterio.open(
        flat, "w", driver="GTiff", height=64, width=64, count=13, dtype="uint16",
        crs="EPSG:32633", transform=from_origin(500000, 4000000, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(np.full((13, 64, 64), 1000, np.uint16))
    out = tmp_path / "empty_store"
    args = ["--input", str(flat), "--output", str(out), "--profile", "sentinel2_l1c",
            "--tile-size", "32", "--workers", "1", "--scheduler", "synchronous"]  # fmt: skip
    assert build_dataset(args) == 1  # "nothing was written", but the folder is there
    assert (out / "manifest.parquet").is_file()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("store", ["missing", "empty"])
def test_pretraining_on_a_missing_or_empty_store_is_at_most_three_lines(store, tmp_path, child_env):
    path = tmp_path / "no_store" if store == "missing" else empty_store(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "geomed_mim.pretrain", "fit", "--config",
         str(REPO_ROOT / "configs/pretrain/demo_cpu.yaml"), "--data.init_args.store", str(path)],
        cwd=tmp_path, env=child_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2, lines
    assert len(lines) <= 3, lines
    (error,) = [line for line in lines if line.startswith("error:")]
    assert f"--data.init_args.store {path}" in error
    assert ("no such folder" if store == "missing" else "no usable train sample") in error
    assert "build_dataset" in error or "rebuild" in error  # the fix
    assert not (tmp_path / "runs").exists()  # nothing started


# the training commands may print Lightning's warnings beside their error line
cli_error = partial(usage_error_line, alone=False)


LULC = str(REPO_ROOT / "configs/finetune/lulc_demo_cpu.yaml")


@pytest.mark.slow
def test_fine_tuning_mistakes_are_one_line_naming_the_flag(
    demo_store, lulc_store, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    store = ["--data.init_args.store", str(lulc_store)]
    unlabeled = cli_error(
        finetune_seg.main, ["fit", "--config", LULC, "--data.init_args.store", str(demo_store)],
        capsys,
    )  # fmt: skip
    assert "--data.init_args.store" in unlabeled
    assert "--labels and --classes" in unlabeled
    missing_init = cli_error(
        finetune_seg.main,
        ["fit", "--config", LULC, *store, "--model.init_args.init_from", "runs/x/last.ckpt"],
        capsys,
    )
    assert "--model.init_args.init_from runs/x/last.ckpt: no such file" in missing_init
    for subcommand in ("predict", "validate", "test"):
        untrained = cli_error(finetune_seg.main, [subcommand, "--config", LULC, *store], capsys)
        assert f"{subcommand} needs a trained model: pass --ckpt_path" in untrained
    gone = cli_error(
        finetune_seg.main,
        ["predict", "--config", LULC, *store, "--ckpt_path", "runs/gone/last.ckpt"],
        capsys,
    )
    assert "--ckpt_path runs/gone/last.ckpt: no such file" in gone


@pytest.mark.slow
def test_a_pretraining_checkpoint_is_no_fine_tuning_checkpoint(lulc_store, tmp_path, capsys):
    from tests.geomed_mim.training import task_checkpoint

    ckpt, _ = task_checkpoint(tmp_path, model="mae_vit_tiny_patch16", in_chans=13, img_size=32,
                              model_kwargs={"depth": 1, "patch_size": 4})  # fmt: skip
    torch_ckpt = torch.load(ckpt, weights_only=True)
    torch_ckpt["hyper_parameters"] = {"_class_path": "geomed_mim.tasks.pretraining.MIMPretrainTask"}
    torch.save(torch_ckpt, ckpt)
    line = cli_error(
        finetune_seg.main,
        ["predict", "--config", LULC, "--data.init_args.store", str(lulc_store),
         "--ckpt_path", str(ckpt)],
        capsys,
    )  # fmt: skip
    assert "a checkpoint of MIMPretrainTask, not of SegmentationTask" in line
    assert "--model.init_args.init_from" in line  # where a pretraining checkpoint goes


# -- runs: a new root is a new run, only the same run resumes -------------------------------------
DEMO = str(REPO_ROOT / "configs/pretrain/demo_cpu.yaml")


def fit_demo(store: Path, root: Path, capsys, *extra: str) -> str:
    """One epoch of the shipped demo config into ``root``; returns what it printed."""
    run = ["--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1", *extra]
    pretrain.main(["fit", "--config", DEMO, "--data.init_args.store", str(store), *run])
    return capsys.readouterr().out


@pytest.mark.slow
def test_a_new_root_is_a_new_run_and_only_the_same_run_resumes(demo_store, tmp_path, capsys):
    first, second = tmp_path / "runs" / "exp1", tmp_path / "runs" / "exp2"
    out = fit_demo(demo_store, first, capsys)
    assert "new run: checkpoints in" in out
    ckpt = first / "checkpoints" / "last.ckpt"
    written = ckpt.stat().st_mtime_ns
    assert "done: 4 steps" in out
    # the same command once more, one epoch further: resumes and says so
    out = fit_demo(demo_store, first, capsys, "--trainer.max_epochs", "2")
    assert f"resuming {ckpt}" in out
    assert "done: 4 steps (resumed at step 4)" in out
    assert torch.load(ckpt, weights_only=True)["global_step"] == 8
    assert sorted(p.name for p in (first / "logs").iterdir()) == ["version_0", "version_1"]
    # another model in the same root: refused in one line, nothing touched
    written = ckpt.stat().st_mtime_ns
    line = cli_error(
        pretrain.main,
        ["fit", "--config", DEMO, "--data.init_args.store", str(demo_store),
         "--trainer.default_root_dir", str(first), "--model.init_args.model_kwargs.depth", "2"],
        capsys,
    )  # fmt: skip
    assert "holds the checkpoint of a different run" in line
    assert "model_kwargs" in line
    assert "--ckpt_path null" in line
    assert "--trainer.default_root_dir" in line
    assert ckpt.stat().st_mtime_ns == written
    # a new root: a new run, the first one untouched
    out = fit_demo(demo_store, second, capsys, "--model.init_args.model_kwargs.depth", "2")
    assert "new run" in out
    assert (second / "checkpoints" / "last.ckpt").is_file()
    assert [p.name for p in (second / "logs").iterdir()] == ["version_0"]
    assert ckpt.stat().st_mtime_ns == written


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_with_images_per_second(demo_store, tmp_path, child_env):
    """Under a (pseudo) terminal: Lightning's bar with the loss and images/s, no epoch lines."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "geomed_mim.pretrain", "fit", "--config", DEMO,
         "--data.init_args.store", str(demo_store), "--trainer.max_epochs", "1"],
        cwd=tmp_path, env=child_env, stdin=follower, stdout=follower, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    out = b"".join(chunks).decode(errors="replace").replace("\r", "\n")
    assert "Epoch 0: 100%" in out
    assert "images/s=" in out
    assert "train/loss" in out
    assert "\nepoch 1/1 " not in out  # the bar replaces the per-epoch lines
    assert "done: 4 steps" in out


def test_every_cli_has_a_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {
        "geomed-build-dataset": "geomed_mim.build_dataset:main",
        "geomed-pretrain": "geomed_mim.pretrain:main",
        "geomed-finetune-seg": "geomed_mim.finetune_seg:main",
        "geomed-export": "geomed_mim.export:main",
        "geomed-convert": "geomed_mim.convert:main",
        "geomed-evaluate": "geomed_mim.evaluate:main",
    }
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name))


def test_a_checkpoint_class_path_outside_the_task_package_is_never_imported(tmp_path, monkeypatch):
    """A checkpoint names the class Lightning rebuilds; a module outside geomed_mim.tasks is
    refused before it is imported (importing is running its code)."""
    marker = tmp_path / "imported"
    (tmp_path / "ckpt_payload_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Task:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    class Command:
        task_class = MIMPretrainTask

    def ok(class_path: str) -> bool:
        return cli.TrainingCLI.checkpoint_task_ok(Command(), class_path)  # type: ignore[arg-type]

    assert not ok("ckpt_payload_module.Task")
    assert not marker.exists()
    assert "ckpt_payload_module" not in sys.modules
    assert not ok("geomed_mim.export.main")  # the project's, but no task module
    assert not ok("geomed_mim.tasks.segmentation.SegmentationTask")  # a task, of another command
    assert ok("geomed_mim.tasks.pretraining.MIMPretrainTask")
    assert "geomed_mim.tasks.pretraining" in cli.project_task_modules()


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("1", 1), ("2", 2), ("1.0", 1.0), ("0.25", 0.25), ("=3", 3)],
)
def test_a_batch_limit_typed_as_a_count_stays_a_count(typed, expected):
    """Lightning's own parser turns ``--trainer.limit_train_batches 1`` into 1.0 (100 %); the
    command hands the Trainer the count the user typed."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningArgumentParser

    from geomed_mim.cli import batch_limit_counts

    argv = (
        [f"--trainer.limit_train_batches{typed}"]
        if typed.startswith("=")
        else ["--trainer.limit_train_batches", typed]
    )
    parser = LightningArgumentParser()
    parser.add_lightning_class_args(Trainer, "trainer")
    trainer = parser.parse_args(argv).trainer
    value = batch_limit_counts(trainer, argv).get(
        "limit_train_batches", trainer.limit_train_batches
    )
    assert value == expected
    assert type(value) is type(expected)
