#!/bin/sh
# GPU-only checks in under 4 minutes on one GPU (bench/gpu_check.py says what each measures).
# Results land under $OUT (the device tool's output folder) as each section finishes.
set -eu
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/operator:$PWD/trainer_image${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 230 python bench/gpu_check.py --out "${OUT:-gpu-check}" "$@"
