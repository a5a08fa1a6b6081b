#!/usr/bin/env bash
# ctest emulated:numpy_reference: the device check's reference path end to
# end, here: tests/gpu/make_reference.py writes the float64 numpy references,
# then sigma_gpu_emulated_test checks the CUDA backend (on the host CUDA
# emulator) and the CPU backend against them (CudaNumpyReference.*,
# CpuNumpyReference.*). Exits 77 (ctest: skipped) when PYTHON has no numpy.
#
# usage: emulated_numpy_reference.sh PYTHON TEST_BINARY WORKDIR
set -uo pipefail
PY="$1" BIN="$2" WORK="$3"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! "$PY" -c "import numpy" 2>/dev/null; then
  echo "SKIP: $PY has no numpy (make test passes the venv's Python as SIGMA_TEST_PYTHON)"
  exit 77
fi
rm -rf "$WORK" && mkdir -p "$WORK"
"$PY" "$HERE/make_reference.py" "$WORK/ref" >"$WORK/reference.log" 2>&1 ||
  { cat "$WORK/reference.log"; echo "FAIL: make_reference.py"; exit 1; }
# Both reference tests must run (they skip without references).
SIGMA_GPU_REF_DIR="$WORK/ref" exec bash "$HERE/run_without_skips.sh" "$BIN" \
  --gtest_filter='CudaNumpyReference.*:CpuNumpyReference.*'
