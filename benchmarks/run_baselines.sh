#!/bin/sh
# The baselines of docs/baselines.md on Fashion-MNIST: 7 widths x 6 methods x 3 seeds, one torch
# thread. Resumable: if it is killed, run it again with the same arguments.
#   usage: benchmarks/run_baselines.sh [OUT]     (default OUT: /work/runs/baselines)
set -eu
OUT=${1:-/work/runs/baselines}
exec "${SUPERMASK:-/work/main/.venv/bin/supermask}" baseline --dataset fashion-mnist --data-dir "${DATA_DIR:-/work/shared/data}" \
    --widths 8,16,32,64,128,256,512 \
    --methods float,int8-ptq,int4-ptq,int4-qat,ternary-qat,deep-compression \
    --seeds 0,1,2 --threads 1 -o "$OUT"
