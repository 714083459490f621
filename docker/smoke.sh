#!/usr/bin/env bash
# Builds the image on the local Debian base and runs it: demo build_dataset, then a 2-process
# CPU torchrun pretraining of a few steps, then checks the checkpoint. Needs root (Docker).
#   bash docker/smoke.sh            (see docs/cluster.md for the time it takes here)
# Environment:
#   BASE_IMAGE       default geomed-base:bookworm (made by ../shared/tools/docker-local-base.sh,
#                    which is run first when the image is missing and the script exists)
#   IMAGE            tag to build, default geomed-mim:smoke
#   TORCH_WHEELS     folder with CPU torch and torchvision wheels to use instead of PyPI's CUDA
#                    build (default /opt/wheels); served to the build over localhost
#   TORCH_INDEX_URL  else: an index with CPU wheels, e.g. https://download.pytorch.org/whl/cpu
#   KEEP_IMAGE=1     keep the image afterwards (default: removed, and dangling layers pruned)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-geomed-base:bookworm}
IMAGE=${IMAGE:-geomed-mim:smoke}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
start=$(date +%s)
say() { echo "== smoke [$(( $(date +%s) - start ))s] $*"; }

if ! docker image inspect "${BASE_IMAGE}" >/dev/null 2>&1; then
    base_tool=../shared/tools/docker-local-base.sh
    [[ -x "${base_tool}" || -f "${base_tool}" ]] || { echo "no ${BASE_IMAGE} and no ${base_tool}" >&2; exit 1; }
    say "making ${BASE_IMAGE}"
    bash "${base_tool}" "${BASE_IMAGE}"
fi

# A CPU-only torch + torchvision pair keeps the smoke image small (PyPI's Linux torch is the CUDA
# build and pulls several GB of nvidia-* wheels), when one is at hand: both wheels in TORCH_WHEELS
# (served to the build over localhost) or TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu).
# A CPU torch alone is not enough: PyPI's torchvision wheels are CUDA builds and fail to import on
# it. Otherwise PyPI's torch is used (this machine: no CPU torchvision anywhere reachable).
# The default CUDA base images bring their own torch and take none of these paths.
build_args=(--build-arg "BASE_IMAGE=${BASE_IMAGE}")
server_pid=""
cleanup() {
    [[ -n "${server_pid}" ]] && kill "${server_pid}" 2>/dev/null || true
    [[ -n "${workdir:-}" ]] && rm -rf "${workdir}"
}
trap cleanup EXIT
cpu_torch=$(find "${TORCH_WHEELS}" -maxdepth 1 -name 'torch-*+cpu-*.whl' 2>/dev/null | sort | tail -1 || true)
cpu_vision=$(find "${TORCH_WHEELS}" -maxdepth 1 -name 'torchvision-*+cpu-*.whl' 2>/dev/null | sort | tail -1 || true)
if [[ -n "${cpu_torch}" && -n "${cpu_vision}" ]]; then
    port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    python3 -m http.server --bind 127.0.0.1 --directory "${TORCH_WHEELS}" "${port}" >/dev/null 2>&1 &
    server_pid=$!
    t=$(basename "${cpu_torch}" | cut -d- -f2)
    v=$(basename "${cpu_vision}" | cut -d- -f2)
    build_args+=(--build-arg "TORCH_REQUIREMENT=torch==${t} torchvision==${v}"
                 --build-arg "PIP_EXTRA_ARGS=--find-links http://127.0.0.1:${port}/ --trusted-host 127.0.0.1")
    say "CPU torch ${t}, torchvision ${v} from ${TORCH_WHEELS}"
elif [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    build_args+=(--build-arg "TORCH_REQUIREMENT=torch<2.15 torchvision"
                 --build-arg "PIP_EXTRA_ARGS=--extra-index-url ${TORCH_INDEX_URL}")
    say "torch from ${TORCH_INDEX_URL}"
else
    say "no CPU torch + torchvision wheels: PyPI's torch (CUDA build, several GB)"
fi
# the local base carries the host's CA bundle for pip (docker-local-base.sh)
if docker run --rm "${BASE_IMAGE}" test -f /opt/host-ca.crt 2>/dev/null; then
    build_args+=(--build-arg PIP_CERT=/opt/host-ca.crt)
fi

say "building ${IMAGE} on ${BASE_IMAGE}"
docker build --network host -f docker/Dockerfile -t "${IMAGE}" "${build_args[@]}" .
say "image built: $(docker image inspect "${IMAGE}" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"

workdir=$(mktemp -d /tmp/geomed_smoke.XXXXXX)
chmod 777 "${workdir}"
# the run folder is mounted as the working directory, so the demo config's relative paths
# (geomed_demo, runs/demo_cpu) land there. No network; --hostname localhost because torchrun's
# rendezvous resolves the container's own hostname, which --network none leaves unresolvable.
run() {
    docker run --rm -i --network none --hostname localhost --shm-size 1g \
        -v "${workdir}:/work" -w /work "${IMAGE}" "$@"
}

say "non-root user, entrypoint help"
[[ "$(run id -u)" != "0" ]] || { echo "error: the image runs as root" >&2; exit 1; }
run help >/dev/null

say "build_dataset (embedded demo archive)"
run build_dataset --output geomed_demo --workers 2

# the shipped demo config as it is (previews, logs, checkpoints), only shorter
say "torchrun: 2 CPU processes, gloo, 1 epoch (4 steps of 2 x 8 tiles)"
run torchrun --standalone --nproc-per-node 2 -m geomed_mim.pretrain fit \
    --config /opt/geomed/configs/pretrain/demo_cpu.yaml \
    --data.init_args.global_batch_size 16 --trainer.max_epochs 1

say "checking the checkpoint"
(run python - <<'PY'
from pathlib import Path

import torch
ckpt = torch.load("runs/demo_cpu/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
meta = ckpt["geomed_mim"]
assert ckpt["global_step"] == 4, ckpt["global_step"]
assert meta["in_chans"] == 13 and meta["bands"][0] == "B01", meta
assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"], "no loader position"
previews = sorted(p.name for p in Path("runs/demo_cpu/logs").glob("version_*/previews/*.png"))
assert "step_0000001.png" in previews, previews  # written by rank 0 while both ranks trained
print(f"checkpoint ok: global_step {ckpt['global_step']}, {len(ckpt['state_dict'])} tensors, "
      f"bands {meta['bands'][:3]}..., previews {previews}, torch {torch.__version__}")
PY
) | tee /dev/stderr | grep -q "^checkpoint ok:" || { echo "error: checkpoint check did not run" >&2; exit 1; }
say "passed"
if [[ "${KEEP_IMAGE:-0}" != "1" ]]; then
    docker image rm "${IMAGE}" >/dev/null
    docker image prune -f >/dev/null
fi
