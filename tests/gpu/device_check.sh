#!/usr/bin/env bash
# The GPU device check (issues 5, 18), for a lent H200 machine: CUDA, CMake and
# Python with PyTorch + numpy there; no Abseil, GoogleTest, OpenBLAS, gRPC, and
# no network. Before the run, HERE:  bash tests/gpu/prepare_device_deps.sh
# (fills build/device-deps; carry that path to the device).
#
#   0. preflight: nvcc, g++, cmake versions, the architecture, where libcublas,
#      libcusolver and cusolverDn.h are; CUDA >= 12.1 (cuBLAS TRSM fails for
#      more than 524,280 right-hand sides before it). Stops with a clear
#      message when something is missing (see "toolkit elsewhere" below);
#   1. configures tests/gpu/standalone (kernels/ + the GPU tests + the GPU
#      benchmark; CUDA on, CPU BLAS off) with the carried Abseil/GoogleTest;
#   2. builds the GPU test target and the CUDA module, writes float64
#      references with numpy (tests/gpu/make_reference.py) and runs
#      sigma_gpu_test; then the conformance suite through the factory
#      (sigma_kernels_test --gtest_filter='*/cuda*'). A SKIPPED test FAILS the
#      check (tests/gpu/run_without_skips.sh): a run where the module did not
#      load or no device was seen is not a pass;
#   3. only then builds and runs the benchmark (bench/gpu/sigma_gpu_bench), the
#      same seal in torch.linalg (bench/gpu/torch_seal.py) on the same seeded
#      data, and the CPU side of the CPU/GPU seal crossover (torch on the CPU);
#   4. always (EXIT trap) prints the summary table and writes the outputs.
# Every step runs under `timeout -k`; a failed or timed-out step is recorded
# and the script goes on to the next one that does not depend on it. Budget:
# SIGMA_CHECK_BUDGET_S (default 540 s); each step's timeout shrinks to what is
# left.
#
# Outputs (in $OUT, the device tool's output folder, or build/device-check/out):
# exactly two files, so nothing is lost when only a few come back:
#   summary.txt                 the step table, test counts, benchmark table
#   device_check_logs.tar.gz    every log and JSON of the run
#
# Toolkit elsewhere: nvcc is looked up as $CUDACXX, then on PATH, then in
# /usr/local/cuda/bin; pass -DCUDAToolkit_ROOT through SIGMA_CMAKE_ARGS when
# the libraries are not under nvcc's toolkit. When cuBLAS/cuSOLVER exist only
# inside PyTorch's wheels (site-packages/nvidia/{cublas,cusolver}), the
# preflight names them; point CUDAToolkit_ROOT at a full toolkit (the wheels
# carry no nvcc and no static libraries) or install one.
#
# With the device tool: run(command="bash tests/gpu/device_check.sh",
#   carry=["build/device-deps"], timeout_s=600); --quick for a smoke run.
#
# usage: tests/gpu/device_check.sh [--quick] [--build-only]
# env:   SIGMA_DEVICE_DEPS (build/device-deps), SIGMA_DEVICE_BUILD
#        (build/device-check), SIGMA_SHARED_DIR (shared/ or ../shared or the
#        deps' copy), SIGMA_CUDA_ARCHS (90), SIGMA_CMAKE_ARGS, PYTHON
#        (python3), CUDACXX, OUT
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
QUICK=0
BUILD_ONLY=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --build-only) BUILD_ONLY=1 ;;
    *) echo "usage: $0 [--quick] [--build-only]" >&2; exit 2 ;;
  esac
done
DEPS="${SIGMA_DEVICE_DEPS:-$ROOT/build/device-deps}"
BUILD="${SIGMA_DEVICE_BUILD:-$ROOT/build/device-check}"
RESULTS="${OUT:-$BUILD/out}"
LOGS="$BUILD/logs"
PY="${PYTHON:-python3}"
BUDGET="${SIGMA_CHECK_BUDGET_S:-540}"
JOBS="$(nproc 2>/dev/null || echo 4)"
rm -rf "$LOGS"
mkdir -p "$RESULTS" "$BUILD" "$LOGS"

SHARED="${SIGMA_SHARED_DIR:-}"
if [[ -z "$SHARED" ]]; then
  for c in "$ROOT/shared" "$ROOT/../shared" "$DEPS"; do
    if [[ -d "$c/testvectors" ]]; then SHARED="$c"; break; fi
  done
fi
TESTVECTORS="${SHARED:+$SHARED/testvectors}"

log() { echo "[device_check +${SECONDS}s] $*"; }
# Seconds left for a step: min(cap, budget - elapsed - reserve for the summary).
left() {
  local cap=$1 rest=$((BUDGET - SECONDS - 20))
  ((rest < 5)) && rest=5
  ((cap < rest)) && echo "$cap" || echo "$rest"
}

STEPS=(preflight configure build_tests reference gpu_tests conformance build_bench bench torch torch_cpu)
declare -A STATE
for s in "${STEPS[@]}"; do STATE[$s]="not run"; done
TEST_COUNTS="not run"

# step NAME CAP CMD...: runs CMD under timeout -k with its output in
# $LOGS/NAME.log; records ok / FAILED (rc N) / TIMEOUT. Returns CMD's status.
step() {
  local name=$1 cap=$2
  shift 2
  local t
  t=$(left "$cap")
  log "$name (timeout ${t}s)"
  timeout -k 10 "$t" "$@" >>"$LOGS/$name.log" 2>&1
  local rc=$?
  if ((rc == 0)); then
    STATE[$name]=ok
  elif ((rc == 124 || rc == 137)); then
    STATE[$name]="TIMEOUT after ${t}s"
  else
    STATE[$name]="FAILED (rc $rc)"
  fi
  ((rc == 0)) || tail -15 "$LOGS/$name.log" | sed "s/^/  [$name] /"
  return $rc
}

# gtest counts of a log: "P passed, F failed, S skipped".
counts() {
  local f=$1 p fl sk
  p=$(grep -E -o '^\[  PASSED  \] [0-9]+' "$f" 2>/dev/null | grep -E -o '[0-9]+$' | tail -1)
  fl=$(grep -E -o '^\[  FAILED  \] [0-9]+ test' "$f" 2>/dev/null | grep -E -o '[0-9]+' | tail -1)
  sk=$(grep -E -o '^\[  SKIPPED \] [0-9]+' "$f" 2>/dev/null | grep -E -o '[0-9]+$' | tail -1)
  echo "${p:-0} passed, ${fl:-0} failed, ${sk:-0} skipped"
}

summary() {
  local rc_overall=$1
  {
    local gpu
    gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
    echo "=== SIGMA CUDA device check: ${gpu:-no GPU seen} ($(date -u +%FT%TZ), ${SECONDS}s) ==="
    for s in "${STEPS[@]}"; do printf '%-12s %s\n' "$s" "${STATE[$s]}"; done
    echo "tests: $TEST_COUNTS"
    "$PY" tests/gpu/device_check_table.py "$LOGS/bench_cuda.jsonl" "$LOGS/bench_torch.jsonl" \
      "$LOGS/bench_torch_cpu.jsonl" 2>&1 || echo "(no benchmark table)"
    echo "result: $([[ $rc_overall == 0 ]] && echo PASS || echo FAIL)"
  } | tee "$RESULTS/summary.txt"
  tar -czf "$RESULTS/device_check_logs.tar.gz" -C "$BUILD" logs 2>/dev/null ||
    echo "could not archive $LOGS" | tee -a "$RESULTS/summary.txt"
}

# The check passes when everything it was asked to do for correctness passed.
verdict() {
  local need=(preflight configure build_tests)
  ((BUILD_ONLY)) && need+=(build_bench) || need+=(gpu_tests conformance)
  for s in "${need[@]}"; do [[ "${STATE[$s]}" == ok ]] || return 1; done
  return 0
}
finish() {
  local rc=1
  verdict && rc=0
  summary "$rc"
  exit "$rc"
}
trap finish EXIT

# ---- 0. preflight -----------------------------------------------------------------
step preflight 30 env PYTHON="$PY" SIGMA_DEVICE_DEPS="$DEPS" bash tests/gpu/device_preflight.sh
cat "$LOGS/preflight.log"
CUDACXX="$(sed -n 's/^nvcc: //p' "$LOGS/preflight.log" | head -1)"
[[ -n "$CUDACXX" ]] && export CUDACXX
export LD_LIBRARY_PATH="$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[[ "${STATE[preflight]}" == ok ]] || exit 1  # the EXIT trap prints why

# ---- 1. configure ----------------------------------------------------------------
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
[[ -f "$BUILD/CMakeCache.txt" ]] && GEN=()  # keep the generator of an existing tree
read -r -a EXTRA <<<"${SIGMA_CMAKE_ARGS:-}"
CMAKE_ARGS=(-S tests/gpu/standalone -B "$BUILD" "${GEN[@]}"
  -DCMAKE_BUILD_TYPE=Release
  -DSIGMA_WITH_CUDA=ON -DSIGMA_WITH_CPU_BLAS=OFF
  -DCMAKE_CUDA_ARCHITECTURES="${SIGMA_CUDA_ARCHS:-90}"
  -DCMAKE_PREFIX_PATH="$DEPS"
  -Dabsl_DIR="$DEPS/lib/x86_64-linux-gnu/cmake/absl"
  -DGTest_DIR="$DEPS/lib/x86_64-linux-gnu/cmake/GTest"
  -Dnlohmann_json_DIR="$DEPS/share/cmake/nlohmann_json"
  # Debian's Abseil 20220623 predates GCC 13's leaner headers (some of its
  # headers use uint8_t without <cstdint>); force-include it for C++ only.
  -DCMAKE_CXX_FLAGS="-include cstdint"
  "${EXTRA[@]}")
[[ -n "$SHARED" ]] && CMAKE_ARGS+=(-DSIGMA_SHARED_DIR="$SHARED")
FULL_TESTS=1
if ! step configure 120 cmake "${CMAKE_ARGS[@]}" -DSIGMA_BUILD_KERNEL_TESTS=ON; then
  # tests/kernels may need something the device lacks: the GPU tests only.
  log "configure with the kernel tests failed; retrying with only the GPU tests"
  FULL_TESTS=0
  step configure 120 cmake "${CMAKE_ARGS[@]}" -DSIGMA_BUILD_KERNEL_TESTS=OFF &&
    STATE[configure]="ok (gpu tests only: no conformance)"
fi
[[ "${STATE[configure]}" == ok* ]] || exit 1

# ---- 2. tests first ---------------------------------------------------------------
# sigma_cuda_backend: the module the factory dlopens (MakeBackend(kCuda)).
TARGETS=(sigma_gpu_test sigma_cuda_backend)
((FULL_TESTS)) && TARGETS+=(sigma_kernels_test)
step build_tests 300 cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"
TEST_BIN="$(find "$BUILD" -name sigma_gpu_test -type f -perm -u+x 2>/dev/null | head -1)"
KT="$(find "$BUILD" -name sigma_kernels_test -type f -perm -u+x 2>/dev/null | head -1)"
if ((BUILD_ONLY == 0)) && [[ "${STATE[build_tests]}" == ok ]]; then
  REF="$BUILD/ref"
  rm -rf "$REF"
  QFLAG=()
  ((QUICK)) && QFLAG=(--quick)
  step reference 90 "$PY" tests/gpu/make_reference.py "$REF" "${QFLAG[@]}"
  # A skipped case fails (no device seen, module not loaded, no references).
  step gpu_tests 180 env SIGMA_GPU_REF_DIR="$([[ "${STATE[reference]}" == ok ]] && echo "$REF")" \
    SIGMA_TESTVECTORS_DIR="${TESTVECTORS:-/nonexistent}" bash tests/gpu/run_without_skips.sh "$TEST_BIN"
  TEST_COUNTS="sigma_gpu_test: $(counts "$LOGS/gpu_tests.log")"
  if [[ -n "$KT" ]]; then
    step conformance 90 env SIGMA_SHARED_DIR="$SHARED" bash tests/gpu/run_without_skips.sh "$KT" \
      --gtest_filter='*/cuda*'
    TEST_COUNTS="$TEST_COUNTS; conformance (*/cuda*): $(counts "$LOGS/conformance.log")"
  else
    STATE[conformance]="FAILED (sigma_kernels_test not built)"
  fi
fi

# ---- 3. then the benchmark ----------------------------------------------------------
step build_bench 240 cmake --build "$BUILD" -j "$JOBS" --target sigma_gpu_bench
BENCH_BIN="$(find "$BUILD" -name sigma_gpu_bench -type f -perm -u+x 2>/dev/null | head -1)"
if ((BUILD_ONLY == 0)); then
  BQ=()
  ((QUICK)) && BQ=(--quick)
  [[ "${STATE[build_bench]}" == ok ]] &&
    step bench 200 "$BENCH_BIN" "${BQ[@]}" --json "$LOGS/bench_cuda.jsonl"
  step torch 150 "$PY" bench/gpu/torch_seal.py "${BQ[@]}" --json "$LOGS/bench_torch.jsonl"
  # The CPU side of the seal crossover (the CPU backend is not built here).
  step torch_cpu 90 "$PY" bench/gpu/torch_seal.py --device cpu --reps 5 \
    --configs 64:4096,128:4096,256:4096,512:4096,1024:4096 --json "$LOGS/bench_torch_cpu.jsonl"
fi
exit 0  # the EXIT trap decides the status
