#!/usr/bin/env bash
# The paper-scale rows, one after another, one thread, resumable: relaunching this script skips
# finished runs and continues an interrupted one from its last epoch checkpoint (`sweep`).
# Run folders go to runs/paper-scale/<row> (not committed); the committed write-ups are made from
# them by `python benchmarks/paper_scale/collect.py`. SWEEP_ARGS are passed to `sweep` (e.g.
# SWEEP_ARGS=--stack: runs of one rule that differ only by seed train as one stacked model, with
# the same run folders and numbers).
set -u
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 BIOPLAUSIBLE_THREADS=1
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/paper-scale}
mkdir -p "$OUT"
ROWS=${ROWS:-"np_fig2_mnist bfa_table1_mnist_1x400 ghost_mb_500"}
for row in $ROWS; do
  echo "== $row $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) ${SWEEP_ARGS:-}"
  /usr/bin/time -v "$BIN/bioplausible" sweep "benchmarks/paper_scale/$row.yaml" \
      --out "$OUT/$row" ${SWEEP_ARGS:-} 2>> "$OUT/$row.time" || echo "== $row exited $?"
  echo "== $row done $(date -u +%FT%TZ)"
done
