#!/usr/bin/env bash
# Runs the benchmarks of docs/benchmarks.md. Usage: bench/run.sh [BUILD_DIR]
# Figures are ratios against a baseline measured in the same process/script.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
python="${PYTHON:-.venv/bin/python}"

echo "== seal vs raw BLAS/LAPACK calls, and dsyrk vs dgemm (Google Benchmark)"
"$build/bench/kernels/sigma_seal_bench" --benchmark_counters_tabular=true

echo "== seal vs the numpy pipeline, same data"
"$python" bench/numpy_reference.py --sigmactl "$build/client/cli/sigmactl"

if [ -x "$build/bench/store/sigma_store_bench" ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "== seal commit latency, SQLite vs PostgreSQL"
  bench/store/run_store_bench.sh "$build"
fi

if [ -x "$build/server/bench_ingest/sigma_ingest_bench" ]; then
  echo "== sigmad ingest vs a do-nothing gRPC sink"
  "$build/server/bench_ingest/sigma_ingest_bench"
fi
