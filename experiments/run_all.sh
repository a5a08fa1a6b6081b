#!/usr/bin/env bash
# Runs every experiment (resumable: rerun after an interruption) with its own sigmad.
#   experiments/setup.sh            # once: creates .venv-exp
#   experiments/run_all.sh          # ~40 min on 2 CPU threads; results in experiments/runs/
#   experiments/run_all.sh --quick  # smoke test (a few minutes, meaningless numbers)
# Extra arguments go to `python -m sigma_exp` (e.g. `ablation`, `recursive`, `report`,
# `--runs DIR`, `--sigmad BIN`, `--threads N`).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv-exp/bin/python}"
export SIGMAD="${SIGMAD:-$ROOT/build/main/server/sigmad}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$HERE"
exec "$PY" -m sigma_exp "$@"
