#!/bin/bash
# Every side-by-side case of benchmarks/RESULTS.md on the CPU: t2i beside the original networks of the bench-reference
# harness, one case after the other (interleaved rounds for speed ratios, fresh processes for peak RSS). Run it on an
# otherwise idle machine: about 25 minutes on 2 cores. Writes one JSON per case to $OUT (default
# benchmarks/results/latest).
#
#   benchmarks/side_by_side_cpu.sh             # measure
#   benchmarks/side_by_side_cpu.sh --dry-run   # print each command and check its options; measure nothing
#
# Environment: REFERENCE_DIR (the harness's folder; default: t2i bench's, ../shared/bench-reference),
# BENCH_DEPS (pyyaml + easydict, which only the original code needs; default /work/bench-deps),
# T2I and PYTHON (default .venv/bin/t2i and .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/latest}
T2I=${T2I:-.venv/bin/t2i}
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH=${BENCH_DEPS:-/work/bench-deps}${PYTHONPATH:+:$PYTHONPATH}
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi

# Parse a t2i command line as the command would, without running it: a renamed or mistyped option fails here.
PARSE='
import sys, typer
from t2i.cli import app
root = typer.main.get_command(app)
name, *rest = sys.argv[1:]
ctx = typer.Context(root, info_name="t2i")
try:
    root.get_command(ctx, name).make_context(name, rest, parent=ctx)
except Exception as exc:
    sys.exit(f"t2i {name}: {exc}")
'

bench() {
  if [ "$DRY" = 1 ]; then
    echo "+ t2i bench $*"
    "$PYTHON" -c "$PARSE" bench "$@"
  else
    "$T2I" bench "$@"
  fi
}

B=(--against-reference --impl reference --impl t2i)
if [ -n "${REFERENCE_DIR:-}" ]; then B+=(--reference-dir "$REFERENCE_DIR"); fi
I=(--no-isolated --warmup 1 --no-flops)
if [ "$DRY" = 0 ]; then mkdir -p "$OUT"; date -u; uptime; fi
echo "== DM-GAN B=10 train, interleaved"
bench dmgan_bird --what train --batch 10 "${B[@]}" "${I[@]}" --interleave 2 --json "$OUT/dmgan_b10_train_interleaved.json"
echo "== DM-GAN B=10 train, isolated"
bench dmgan_bird --what train --batch 10 "${B[@]}" --repeat 1 --warmup 0 --json "$OUT/dmgan_b10_train_isolated.json"
echo "== DM-GAN B=10 sample, interleaved"
bench dmgan_bird --what sample --batch 10 "${B[@]}" "${I[@]}" --interleave 3 --json "$OUT/dmgan_b10_sample_interleaved.json"
echo "== DM-GAN B=4 train, isolated"
bench dmgan_bird --what train --batch 4 "${B[@]}" --repeat 1 --warmup 0 --json "$OUT/dmgan_b4_train_isolated.json"
echo "== DM-GAN B=4 train, interleaved"
bench dmgan_bird --what train --batch 4 "${B[@]}" "${I[@]}" --interleave 3 --json "$OUT/dmgan_b4_train_interleaved.json"
echo "== AttnGAN B=10 train, interleaved"
bench attngan_bird --what train --batch 10 "${B[@]}" "${I[@]}" --interleave 2 --json "$OUT/attngan_b10_train_interleaved.json"
echo "== AttnGAN B=10 train, isolated"
bench attngan_bird --what train --batch 10 "${B[@]}" --repeat 1 --warmup 0 --json "$OUT/attngan_b10_train_isolated.json"
echo "== AttnGAN B=10 sample, interleaved"
bench attngan_bird --what sample --batch 10 "${B[@]}" "${I[@]}" --interleave 3 --json "$OUT/attngan_b10_sample_interleaved.json"
if [ "$DRY" = 0 ]; then date -u; uptime; fi
echo DONE
