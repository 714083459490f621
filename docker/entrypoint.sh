#!/usr/bin/env bash
# Entry point of the geomed_mim image: the first argument names what to run.
#   build_dataset [ARGS]      python -m geomed_mim.build_dataset ARGS   (dask: --scheduler tcp://...)
#   pretrain fit [ARGS]       python -m geomed_mim.pretrain fit ARGS    (one process)
#   finetune_seg fit [ARGS]   python -m geomed_mim.finetune_seg fit ARGS (when the image has it)
#   export CKPT --output DIR  python -m geomed_mim.export ...
#   torchrun [TORCHRUN ARGS] -m geomed_mim.pretrain fit [ARGS]   distributed launch; torchrun
#                             also reads its options from PET_* variables (Kubeflow sets them)
#   help                      this text;  anything else is run as a command (bash, python ...)
# The CLI's exit status is the container's (143 after a preemption checkpoint: see
# geomed_mim/tasks/preemption.py); exec keeps signals going straight to Python.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

run_module() {  # run_module NAME ARGS...: python -m geomed_mim.NAME, with a clear error if absent
    local name=$1
    shift
    if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('geomed_mim.${name}') is None)"; then
        echo "error: geomed_mim.${name} is not installed in this image" >&2
        exit 2
    fi
    exec python -m "geomed_mim.${name}" "$@"
}

case "${1:-help}" in
    build_dataset | build-dataset) shift; run_module build_dataset "$@" ;;
    pretrain) shift; run_module pretrain "$@" ;;
    finetune_seg | finetune-seg) shift; run_module finetune_seg "$@" ;;
    export) shift; run_module export "$@" ;;
    torchrun) shift; exec torchrun "$@" ;;
    help | --help | -h) usage ;;
    *) exec "$@" ;;
esac
