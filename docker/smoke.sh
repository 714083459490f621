#!/usr/bin/env bash
# Builds the image on the local Debian base and runs it: demo build_dataset, then a 2-process
# CPU torchrun pretraining of a few steps, then checks the checkpoint. Needs root (Docker).
#   bash docker/smoke.sh            (about 4-6 min here on 2 cores, most of it the image build)
# Environment:
#   BASE_IMAGE       default geomed-base:bookworm (made by ../shared/tools/docker-local-base.sh,
#                    which is run first when the image is missing and the script exists)
#   IMAGE            tag to build, default geomed-mim:smoke
#   TORCH_WHEELS     folder holding a CPU torch wheel to install instead of PyPI's CUDA build
#                    (default /opt/wheels when it has one); served to the build over localhost
#   TORCH_INDEX_URL  else: an index with CPU wheels, default https://download.pytorch.org/whl/cpu
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

# A CPU-only torch keeps the smoke image small (PyPI's Linux torch pulls several GB of CUDA
# wheels). The default CUDA base images bring their own torch and take neither path.
build_args=(--build-arg "BASE_IMAGE=${BASE_IMAGE}")
server_pid=""
cleanup() {
    [[ -n "${server_pid}" ]] && kill "${server_pid}" 2>/dev/null || true
    [[ -n "${workdir:-}" ]] && rm -rf "${workdir}"
}
trap cleanup EXIT
cpu_wheel=$(find "${TORCH_WHEELS}" -maxdepth 1 -name 'torch-*+cpu-*.whl' 2>/dev/null | sort | tail -1 || true)
if [[ -n "${cpu_wheel}" ]]; then
    port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    python3 -m http.server --bind 127.0.0.1 --directory "${TORCH_WHEELS}" "${port}" >/dev/null 2>&1 &
    server_pid=$!
    version=$(basename "${cpu_wheel}" | cut -d- -f2)
    build_args+=(--build-arg "TORCH_REQUIREMENT=torch==${version}"
                 --build-arg "PIP_EXTRA_ARGS=--find-links http://127.0.0.1:${port}/ --trusted-host 127.0.0.1")
    say "CPU torch ${version} from ${cpu_wheel}"
else
    index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
    build_args+=(--build-arg "TORCH_REQUIREMENT=torch<2.15"
                 --build-arg "PIP_EXTRA_ARGS=--extra-index-url ${index}")
    say "CPU torch from ${index}"
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
# (geomed_demo, runs/demo_cpu) land there
run() { docker run --rm --network none --shm-size 1g -v "${workdir}:/work" -w /work "${IMAGE}" "$@"; }

say "non-root user, entrypoint help"
[[ "$(run id -u)" != "0" ]] || { echo "error: the image runs as root" >&2; exit 1; }
run help >/dev/null

say "build_dataset (embedded demo archive)"
run build_dataset --output geomed_demo --workers 2

say "torchrun: 2 CPU processes, gloo, 1 epoch (4 steps of 2 x 8 tiles)"
run torchrun --standalone --nproc-per-node 2 -m geomed_mim.pretrain fit \
    --config /opt/geomed/configs/pretrain/demo_cpu.yaml \
    --data.init_args.global_batch_size 16 --trainer.max_epochs 1 \
    --model.init_args.preview_every_n_steps 0

say "checking the checkpoint"
run python - <<'PY'
import torch
ckpt = torch.load("runs/demo_cpu/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
meta = ckpt["geomed_mim"]
assert ckpt["global_step"] == 4, ckpt["global_step"]
assert meta["in_chans"] == 13 and meta["bands"][0] == "B01", meta
assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"], "no loader position"
print(f"ok: global_step {ckpt['global_step']}, {len(ckpt['state_dict'])} tensors, "
      f"bands {meta['bands'][:3]}..., torch {torch.__version__}")
PY
say "passed"
if [[ "${KEEP_IMAGE:-0}" != "1" ]]; then
    docker image rm "${IMAGE}" >/dev/null
    docker image prune -f >/dev/null
fi
