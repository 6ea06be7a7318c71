#!/usr/bin/env bash
# The prepared GPU check: golden parity on the device, 20 training steps of each published bird recipe (batch 10,
# synthetic CUB-shaped data) in fp32 and bf16 + channels_last (+ compile for dm-gan), peak device memory, sampling
# images/s, and `t2i bench --against-reference` beside the original networks. About 8 minutes on one H100.
#
#   benchmarks/gpu_check.sh                      # CUDA, full size; results under $OUT (default: a temp folder)
#   benchmarks/gpu_check.sh --device cpu --tiny  # the same code paths at toy sizes (run by the test suite)
#
# Options go to benchmarks/gpu_check.py (--steps, --batch, --compile-recipes, --skip parity,train,reference,
# --reference-dir DIR).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
cd "$root"
exec "$python" "$here/gpu_check.py" "$@"
