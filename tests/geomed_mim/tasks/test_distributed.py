"""Distributed pretraining through the real CLI: torchrun, 2 CPU processes (gloo).

* ranks hold identical parameters after training;
* a 2-process run with per-sample seeded masks equals a 1-process run at the same global batch;
* SIGTERM to the torchrun agent after k steps → every rank saves ``last.ckpt`` and exits 143;
  re-running the same command resumes and ends with the weights of an uninterrupted run.

One uninterrupted 2-process run (module fixture) serves all three checks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
DEMO_CONFIG = REPO_ROOT / "configs" / "pretrain" / "demo_cpu.yaml"
STEPS_PER_EPOCH = 4  # 53 training tiles / global batch 16, the last batch short
EPOCHS = 2
INTERRUPT_AT = 5  # optimizer steps: inside the second epoch, so the resumed sampler epoch matters

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(run_dir: Path, store: Path, extra_callbacks: list[dict]) -> Path:
    """demo_cpu.yaml as shipped (previews, loggers, checkpoints), its run under ``run_dir``,
    2 epochs, global batch 16, plus the tests' recording callbacks."""
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())
    cfg["trainer"].update(
        default_root_dir=str(run_dir),
        max_epochs=EPOCHS,
        log_every_n_steps=1,
        check_val_every_n_epoch=1,
    )
    cfg["trainer"]["callbacks"] += [
        {
            "class_path": "cluster_callbacks.SaveRankParameters",
            "init_args": {
                "dirpath": str(run_dir / "params"),
                "start_dirpath": str(run_dir / "params_start"),
            },
        },
        *extra_callbacks,
    ]
    cfg["data"]["init_args"].update(store=str(store), global_batch_size=16)
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def child_env_with_helpers(child_env: dict[str, str]) -> dict[str, str]:
    env = dict(child_env)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env["PYTHONPATH"]])
    env["OMP_NUM_THREADS"] = "1"  # two processes on a small shared CPU
    return env


def cli(config: Path, nproc: int) -> list[str]:
    fit = ["-m", "geomed_mim.pretrain", "fit", "--config", str(config)]
    if nproc == 1:
        return [sys.executable, *fit]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    return [*launcher, f"--master-port={free_port()}", *fit]


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def load_params(run_dir: Path, rank: int, folder: str = "params") -> dict[str, torch.Tensor]:
    """A rank's parameters at the end of training (``folder`` "params_start": at its start)."""
    return torch.load(run_dir / folder / f"rank{rank}.pt", weights_only=True)


@pytest.fixture(scope="module")
def two_process_run(demo_store, tmp_path_factory, child_env) -> Path:
    """An uninterrupted 2-process run of 2 epochs (8 optimizer steps)."""
    run_dir = tmp_path_factory.mktemp("cluster_ddp") / "run"
    config = write_config(run_dir, demo_store, [])
    proc = run(cli(config, 2), run_dir.parent, child_env_with_helpers(child_env))
    assert "effective batch 16" in proc.stdout + proc.stderr
    return run_dir


def test_two_ranks_hold_identical_parameters(two_process_run):
    rank0, rank1 = load_params(two_process_run, 0), load_params(two_process_run, 1)
    assert int(rank0["__global_step__"]) == EPOCHS * STEPS_PER_EPOCH
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # and training changed them (a run that never stepped would pass the check above too)
    ckpt = torch.load(two_process_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # loader position saved


def _without_key_bias(name: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` without the key third of an attention ``qkv.bias``: softmax ignores a bias
    added to every key, so its gradient is zero up to rounding, and AdamW turns that rounding
    noise into full-size steps whose sign depends on the reduction order (one batch of 16 vs
    two of 8 averaged), not on the data."""
    if not name.endswith("attn.qkv.bias"):
        return value
    third = value.numel() // 3
    return torch.cat([value[:third], value[2 * third :]])


def test_two_process_step_equals_one_process_step(two_process_run, demo_store, tmp_path, child_env):
    """Same global batch (16 = 1 × 16 = 2 × 8), same per-sample masks and augmentation: the
    averaged gradients of two ranks equal the one-process gradient, so both runs take the same
    steps from the same start.

    Float sums in another order differ in the last bits, and AdamW divides each gradient by its
    own running magnitude, so the runs may differ by rounding-sized amounts that have nothing to
    do with the claim. The tolerance is therefore relative to how far training moved the
    weights: a different batch, mask or lr changes the update itself (a relative difference of
    order 1); rounding changes all weights together by a few % of their update."""
    run_dir = tmp_path / "single"
    config = write_config(run_dir, demo_store, [])
    run(cli(config, 1), tmp_path, child_env_with_helpers(child_env))
    single, ddp = load_params(run_dir, 0), load_params(two_process_run, 0)
    start = load_params(run_dir, 0, "params_start")
    ddp_start = load_params(two_process_run, 0, "params_start")
    init = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert init["global_step"] == EPOCHS * STEPS_PER_EPOCH
    diff_sq = update_sq = 0.0
    moved_tensors = 0
    for name, value in single.items():
        if not value.is_floating_point():
            continue
        torch.testing.assert_close(ddp_start[name], start[name], rtol=0, atol=0, msg=name)
        ours, theirs = _without_key_bias(name, value), _without_key_bias(name, ddp[name])
        update = float((ours.double() - _without_key_bias(name, start[name]).double()).norm())
        if update == 0.0:  # frozen buffers (fixed position embeddings): equal outright
            torch.testing.assert_close(theirs, ours, rtol=0, atol=0, msg=name)
            continue
        moved_tensors += 1
        diff = float((theirs.double() - ours.double()).norm())
        # a tensor with a tiny gradient (the class token) may take rounding-driven AdamW steps
        # of several % of its update; a different batch, mask or lr moves it by its whole update
        assert diff < 0.5 * update, f"{name}: runs differ by {diff / update:.2e} of the update"
        diff_sq, update_sq = diff_sq + diff**2, update_sq + update**2
    assert moved_tensors > 10  # training moved the weights (a run that never stepped passes above)
    # all weights together: rounding gave 2.3 % of the update (8 steps, torch 2.14 on CPU); a
    # different batch, mask or lr gives tens of %
    assert diff_sq**0.5 < 0.1 * update_sq**0.5


def test_sigterm_checkpoints_and_same_command_resumes(
    two_process_run, demo_store, tmp_path, child_env
):
    run_dir = tmp_path / "preempted"
    wait = {
        "class_path": "cluster_callbacks.WaitForSignalAtStep",
        "init_args": {"step": INTERRUPT_AT, "dirpath": str(run_dir / "markers")},
    }
    config = write_config(run_dir, demo_store, [wait])
    env = child_env_with_helpers(child_env)
    cmd = cli(config, 2)
    agent = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    markers = [run_dir / "markers" / f"at_step.rank{r}" for r in (0, 1)]
    deadline = time.monotonic() + 300
    while not all(m.exists() for m in markers) and agent.poll() is None:
        assert time.monotonic() < deadline, "the run never reached the interrupt step"
        time.sleep(0.2)
    agent.send_signal(signal.SIGTERM)  # as Kubernetes / docker stop / SLURM do to the launcher
    out, _ = agent.communicate(timeout=120)
    assert agent.returncode != 0, out[-3000:]  # interrupted, not "finished"
    # the preemption callback saved on SIGTERM and chose exit status 128 + 15
    assert "signal SIGTERM: saving" in out, out[-3000:]
    assert "checkpoint written; exiting with status 143" in out, out[-3000:]
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["global_step"] == INTERRUPT_AT
    assert not list(ckpt_path.parent.glob("*.tmp"))
    assert not (run_dir / "params").exists()  # training did not run to the end

    # the same command again: resumes from last.ckpt (fit's default --ckpt_path last) and finishes
    proc = run(cmd, tmp_path, env)
    assert "Restoring states from the checkpoint path" in proc.stdout + proc.stderr
    assert f"resuming {ckpt_path.relative_to(tmp_path)}" in proc.stdout  # said by rank 0
    assert proc.stdout.count("resuming ") == 1
    resumed, reference = load_params(run_dir, 0), load_params(two_process_run, 0)
    assert int(resumed["__global_step__"]) == EPOCHS * STEPS_PER_EPOCH
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), name


# -- every shipped config family, as shipped (previews on), under torchrun ------------------------
def family_args(name: str, store: Path, ct_store: Path) -> list[str]:
    """The data override each demo config needs here, and the size it is shrunk to."""
    if "_ct_" in name:  # 3-D: 32³ crops instead of 96³
        return ["--data.init_args.stores", f"[{ct_store}]", "--data.init_args.crop_size", "32"]
    return ["--data.init_args.store", str(store)]


@pytest.mark.parametrize(
    "config",
    [
        "demo_cpu.yaml",  # MAE
        "selective_mae_demo_cpu.yaml",  # SelectiveMAE
        "hi_end_mae_demo_cpu.yaml",  # Hi-End-MAE, 2-D
        "hi_end_mae_demo_ct_cpu.yaml",  # Hi-End-MAE, 3-D
    ],
)
def test_each_shipped_config_family_trains_under_torchrun(
    config, demo_store, ct_demo_store, tmp_path, child_env
):
    """Two processes, two steps: the preview due at the first step is written (rank 0 only,
    with no collective inside its branch) and both ranks reach the checkpoint."""
    path = REPO_ROOT / "configs" / "pretrain" / config
    shipped = yaml.safe_load(path.read_text())
    assert shipped["model"]["init_args"]["preview_every_n_steps"] > 0  # previews ship on
    root = tmp_path / "run"
    fit = ["-m", "geomed_mim.pretrain", "fit", "--config", str(path)]
    size = ["--trainer.max_steps", "2", "--trainer.default_root_dir", str(root)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd = [
        *launcher,
        "--nproc-per-node=2",
        *fit,
        *size,
        *family_args(config, demo_store, ct_demo_store),
    ]
    proc = run(cmd, tmp_path, child_env_with_helpers(child_env))
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    (log_dir,) = root.glob("logs/version_*")  # CSV and TensorBoard in one folder
    assert (log_dir / "metrics.csv").is_file()
    assert list(log_dir.glob("events.out.tfevents.*"))
    previews = {p.name for p in log_dir.glob("previews/*.png")}
    assert "step_0000001.png" in previews  # the training preview due at the first step
    if "_ct_" not in config:  # and the validation preview (the CT demo validates every 50)
        assert "val_step_0000000.png" in previews
    assert "done: 2 steps" in proc.stdout
