#!/usr/bin/env bash
# What else was tried to push the ticket frontier (docs/frontier.md, "What was tried"), seed 0:
# the best edge-popup candidate of each budget from benchmarks/frontier.sh again with
#   - 30 epochs instead of 20 (the training budget the fine-tuned baselines get: 20 + 10), and
#   - trained biases stored in the ticket (--affine trained, "+BN"),
# very low keeps with the remedies for their collapse (output layer left unmasked, a lower
# score learning rate, the unscaled init), one hidden layer at 4 KiB, and 4x lenet's widths at
# 64 KiB. Prints one line per try: run, keep, ticket bytes,
# accuracy. Resumable: finished runs are reused.
# Usage: benchmarks/frontier_tries.sh [RUNS_DIR] [DATA_DIR]
set -euo pipefail
RUNS=${1:-runs/frontier}/tries
DATA=${2:-../shared/data}
try() {  # name model keep [find options...]
  local name=$1 model=$2 keep=$3; shift 3
  supermask find --model "$model" --dataset fashion-mnist --data-dir "$DATA" --method edge-popup --keep "$keep" \
      --seed 0 --threads 1 -q --out "$RUNS/$name" "$@" > /dev/null
  supermask pack --run "$RUNS/$name" -o "$RUNS/$name.smask" --json --threads 1 | python -c \
      "import json,sys; s=json.load(sys.stdin); print('$name', $keep, s['file_bytes'], round(100*s['metadata']['accuracy'], 2), sep='\t')"
}
for spec in "mlp-150-50 0.1" "mlp-150-50 0.4" "mlp-300-100 0.3" "mlp-600-200 0.25"; do
  set -- $spec
  try "$1-k$2-e30" "$1" "$2" --epochs 30
  try "$1-k$2-bias" "$1" "$2" --affine trained
done
try "mlp-300-100-k0.012-nofc3" mlp-300-100 0.012 --exclude fc3
try "mlp-300-100-k0.012-lr0.01" mlp-300-100 0.012 --lr 0.01
try "mlp-300-100-k0.012-gain2" mlp-300-100 0.012 --gain-sq 2
try "mlp-75-25-k0.08-nofc3" mlp-75-25 0.08 --exclude fc3
try "mlp-40-k0.2" mlp-40 0.2
try "mlp-1200-400-k0.06" mlp-1200-400 0.06
