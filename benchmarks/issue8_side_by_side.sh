#!/bin/bash
# Issue 8 side by side with ../shared/bench-reference, one case after the other: run on an otherwise idle machine.
# Writes one JSON per case to $OUT (default benchmarks/results/latest). About 25 minutes on 2 cores.
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/latest}; mkdir -p "$OUT"
export PYTHONPATH=${BENCH_DEPS:-/work/bench-deps}  # pyyaml + easydict, which only the original code needs
B="--against-reference --impl reference --impl t2i"
date -u; uptime
echo "== DM-GAN B=10 train, interleaved"
.venv/bin/t2i bench dmgan_bird --what train --batch 10 $B --no-isolated --interleave 2 --warmup 1 --no-flops --json $OUT/dmgan_b10_train_interleaved.json
date -u; echo "== DM-GAN B=10 train, isolated"
.venv/bin/t2i bench dmgan_bird --what train --batch 10 $B --repeat 1 --warmup 0 --json $OUT/dmgan_b10_train_isolated.json
date -u; echo "== DM-GAN B=10 sample, interleaved"
.venv/bin/t2i bench dmgan_bird --what sample --batch 10 $B --no-isolated --interleave 3 --warmup 1 --no-flops --json $OUT/dmgan_b10_sample_interleaved.json
date -u; echo "== DM-GAN B=4 train, isolated"
.venv/bin/t2i bench dmgan_bird --what train --batch 4 $B --repeat 1 --warmup 0 --json $OUT/dmgan_b4_train_isolated.json
date -u; echo "== DM-GAN B=4 train, interleaved"
.venv/bin/t2i bench dmgan_bird --what train --batch 4 $B --no-isolated --interleave 3 --warmup 1 --no-flops --json $OUT/dmgan_b4_train_interleaved.json
date -u; echo "== AttnGAN B=10 train, interleaved"
.venv/bin/t2i bench attngan_bird --what train --batch 10 $B --no-isolated --interleave 2 --warmup 1 --no-flops --json $OUT/attngan_b10_train_interleaved.json
date -u; echo "== AttnGAN B=10 train, isolated"
.venv/bin/t2i bench attngan_bird --what train --batch 10 $B --repeat 1 --warmup 0 --json $OUT/attngan_b10_train_isolated.json
date -u; echo "== AttnGAN B=10 sample, interleaved"
.venv/bin/t2i bench attngan_bird --what sample --batch 10 $B --no-isolated --interleave 3 --warmup 1 --no-flops --json $OUT/attngan_b10_sample_interleaved.json
date -u; uptime; echo DONE
