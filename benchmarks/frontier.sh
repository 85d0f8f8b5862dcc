#!/usr/bin/env bash
# The accuracy-per-byte frontier on Fashion-MNIST (docs/frontier.md): for seeds 0-2, the best
# supermask ticket at each budget (find --budget, edge-popup over width multiples of
# lenet-300-100), then the baselines a user would pick instead (supermask baseline), then the
# table and plot. Every step resumes where it stopped; re-run the script after an interruption.
# Usage: benchmarks/frontier.sh [RUNS_DIR] [DATA_DIR]   (about 2 CPU-hours on 2 cores)
set -euo pipefail
RUNS=${1:-runs/frontier}
DATA=${2:-../shared/data}
BUDGETS=4KiB,8KiB,16KiB,32KiB,64KiB
for s in 0 1 2; do
  supermask find --model lenet-300-100 --dataset fashion-mnist --data-dir "$DATA" --method edge-popup \
      --budget "$BUDGETS" --widths 0.125,0.25,0.5,1,2 --seed "$s" --threads 1 --out "$RUNS/tickets/s$s" -q
done
# One hidden layer (40, 80, 160 wide) for the small budgets.
for s in 0 1 2; do
  supermask find --model mlp-40 --dataset fashion-mnist --data-dir "$DATA" --method edge-popup \
      --budget 4KiB,8KiB,16KiB --widths 1,2,4 --seed "$s" --threads 1 --out "$RUNS/tickets-1layer/s$s" -q
done
supermask baseline --dataset fashion-mnist --data-dir "$DATA" --widths 8,12,16,24,32,48,64,96,128,192,256,384,512 \
    --seeds 0,1,2 --threads 1 -o "$RUNS/baselines"
supermask frontier "$RUNS/tickets" "$RUNS/tickets-1layer" "$RUNS/baselines" --budgets "$BUDGETS" -o docs/frontier

# The same searches at 30 epochs, the training budget of the fine-tuned baselines (20 float + 10
# fine-tune epochs). Width 2 only where it did not collapse at 20 epochs (32 and 64 KiB).
for s in 0 1 2; do
  supermask find --model lenet-300-100 --dataset fashion-mnist --data-dir "$DATA" --method edge-popup --epochs 30 \
      --budget "$BUDGETS" --widths 0.125,0.25,0.5,1 --seed "$s" --threads 1 --out "$RUNS/tickets-e30/s$s" -q
  supermask find --model lenet-300-100 --dataset fashion-mnist --data-dir "$DATA" --method edge-popup --epochs 30 \
      --budget 32KiB,64KiB --widths 2 --seed "$s" --threads 1 --out "$RUNS/tickets-e30-w2/s$s" -q
done
supermask frontier "$RUNS/tickets-e30" "$RUNS/tickets-e30-w2" "$RUNS/baselines" --budgets "$BUDGETS" \
    --title "accuracy per byte, tickets at 30 epochs" -o docs/frontier-e30
