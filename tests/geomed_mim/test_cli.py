"""The training CLI: every shipped config parses into its task, both entry modules are the one
CLI, checkpoints are written atomically, a user mistake is one line."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import yaml
from lightning.pytorch import LightningDataModule

from geomed_mim import cli, finetune_seg, pretrain
from geomed_mim.tasks.checkpoint_io import AtomicCheckpointIO
from geomed_mim.tasks.pretraining import MIMPretrainTask
from geomed_mim.tasks.segmentation import SegmentationTask
from tests.geomed_mim.conftest import REPO_ROOT

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
