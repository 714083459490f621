#!/usr/bin/env bash
# Image build helper (docker/Dockerfile), run as root inside the build:
#   geomed-install python           Python 3 with venv (apt only when the base lacks it)
#   geomed-install project DIST     /opt/venv on top of the base's torch + the wheel in DIST
# Environment: PIP_CERT (CA bundle for pip), PIP_EXTRA_ARGS (more pip options, e.g. where a
# CPU torch comes from), TORCH_REQUIREMENT (installed only when the base has no torch).
set -euo pipefail

ensure_python() {
    if command -v python3 >/dev/null && python3 -c "import venv, ensurepip" 2>/dev/null; then
        return
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip ca-certificates
    rm -rf /var/lib/apt/lists/*
}

base_pins() {  # name==version of the torch stack the image already has
    "$1" - <<'PY'
import importlib.metadata as md
for name in ("torch", "torchvision", "torchaudio", "triton"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PY
}

install_project() {
    local dist=$1 venv=/opt/venv
    local -a pip_args=(--no-cache-dir)
    [[ -n "${PIP_CERT:-}" ]] && pip_args+=(--cert "${PIP_CERT}")
    # shellcheck disable=SC2206  # PIP_EXTRA_ARGS is a list of options on purpose
    [[ -n "${PIP_EXTRA_ARGS:-}" ]] && pip_args+=(${PIP_EXTRA_ARGS})
    # --system-site-packages: the base image's torch (NGC's or PyTorch's CUDA build) stays in use
    python3 -m venv --system-site-packages "${venv}"
    local pins=/tmp/geomed-base-pins.txt
    base_pins "${venv}/bin/python" >"${pins}"
    if ! grep -q '^torch==' "${pins}"; then
        echo "base image has no torch: installing ${TORCH_REQUIREMENT}"
        local -a torch_reqs
        read -ra torch_reqs <<<"${TORCH_REQUIREMENT}"  # e.g. "torch==2.13.0+cpu torchvision==0.28.0+cpu"
        "${venv}/bin/pip" install "${pip_args[@]}" "${torch_reqs[@]}"
        base_pins "${venv}/bin/python" >"${pins}"
    fi
    echo "keeping the base's packages:"; cat "${pins}"
    # the pins are constraints on top of any the base image sets itself (NGC: $PIP_CONSTRAINT)
    "${venv}/bin/pip" install "${pip_args[@]}" --constraint "${pins}" "${dist}"/*.whl
    local after
    after=$(base_pins "${venv}/bin/python" | grep '^torch==')
    if [[ "${after}" != "$(grep '^torch==' "${pins}")" ]]; then
        echo "error: installing the project changed torch (${after})" >&2
        exit 1
    fi
    rm -f "${pins}"
    find "${venv}" -name __pycache__ -type d -prune -exec rm -rf {} +
}

case "${1:-}" in
    python) ensure_python ;;
    project) install_project "$2" ;;
    *) echo "usage: geomed-install python | project DIST" >&2; exit 2 ;;
esac
