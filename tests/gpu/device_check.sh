#!/usr/bin/env bash
# The GPU device check (issue 5), for a lent H200 machine: CUDA, CMake and
# Python with PyTorch + numpy there; no Abseil, GoogleTest, OpenBLAS, gRPC, and
# no network. Before the run, HERE:  tests/gpu/prepare_device_deps.sh
# (fills build/device-deps; carry that path to the device).
#
#   1. builds kernels/ alone (cmake -S kernels, CUDA on, CPU BLAS off) with the
#      carried Abseil/GoogleTest: targets sigma_gpu_test and sigma_gpu_bench;
#   2. writes float64 references with numpy (tests/gpu/make_reference.py);
#   3. runs sigma_gpu_test against them and the shared test vectors;
#   4. runs the benchmark (bench/gpu/sigma_gpu_bench) and the same seal with
#      torch.linalg (bench/gpu/torch_seal.py) on the same seeded data;
#   4b. the CPU-vs-GPU seal crossover (RoutedBackend's gpu_min_m, sigmad
#      --gpu-min-m): sigma_gpu_bench times the CUDA seal for m in {64 .. 1024}
#      at n_A = 4096; the CPU side is the CPU backend when the build has one,
#      else (this build: no OpenBLAS on the device, CPU BLAS off) the same seal
#      in torch.linalg on the device machine's CPU (torch_seal.py --device cpu);
#   5. prints a short table last, with a suggested gpu_min_m.
# Budget: everything within SIGMA_CHECK_BUDGET_S (default 540 s); each step's
# timeout shrinks to what is left. Logs and JSON go to $OUT (the device tool's
# output folder) or build/device-check/results.
#
# With the device tool: run(command="bash tests/gpu/device_check.sh",
#   carry=["build/device-deps"], timeout_s=600); --quick for a smoke run.
#
# usage: tests/gpu/device_check.sh [--quick] [--build-only]
# env:   SIGMA_DEVICE_DEPS (build/device-deps), SIGMA_DEVICE_BUILD
#        (build/device-check), SIGMA_SHARED_DIR (shared/ or ../shared or the
#        deps' copy), SIGMA_CUDA_ARCHS (90), PYTHON (python3), OUT
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
RESULTS="${OUT:-$BUILD/results}"
PY="${PYTHON:-python3}"
BUDGET="${SIGMA_CHECK_BUDGET_S:-540}"
JOBS="$(nproc 2>/dev/null || echo 4)"
mkdir -p "$RESULTS" "$BUILD"

SHARED="${SIGMA_SHARED_DIR:-}"
if [[ -z "$SHARED" ]]; then
  for c in "$ROOT/shared" "$ROOT/../shared" "$DEPS"; do
    if [[ -d "$c/testvectors" ]]; then SHARED="$c"; break; fi
  done
fi
TESTVECTORS="${SHARED:+$SHARED/testvectors}"

log() { echo "[device_check +${SECONDS}s] $*"; }
# Seconds left for a step: min(cap, budget - elapsed - reserve for the table).
left() {
  local cap=$1 rest=$((BUDGET - SECONDS - 15))
  ((rest < 5)) && rest=5
  ((cap < rest)) && echo "$cap" || echo "$rest"
}
declare -A STATE
STATE[configure]=skipped; STATE[build]=skipped; STATE[reference]=skipped
STATE[tests]=skipped; STATE[bench]=skipped; STATE[torch]=skipped; STATE[torch_cpu]=skipped
TEST_COUNTS="not run"

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/[gpu] /'
else
  log "nvidia-smi not found"
fi
[[ -d "$DEPS/include/absl" ]] || log "WARNING: $DEPS has no Abseil; run tests/gpu/prepare_device_deps.sh here first and carry build/device-deps"
export LD_LIBRARY_PATH="$DEPS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ---- 1. configure + build ------------------------------------------------------
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
[[ -f "$BUILD/CMakeCache.txt" ]] && GEN=()  # keep the generator of an existing tree
CMAKE_ARGS=(-S kernels -B "$BUILD" "${GEN[@]}"
  -DCMAKE_BUILD_TYPE=Release
  -DSIGMA_WITH_CUDA=ON -DSIGMA_WITH_CPU_BLAS=OFF
  -DCMAKE_CUDA_ARCHITECTURES="${SIGMA_CUDA_ARCHS:-90}"
  -DCMAKE_PREFIX_PATH="$DEPS"
  -Dabsl_DIR="$DEPS/lib/x86_64-linux-gnu/cmake/absl"
  -DGTest_DIR="$DEPS/lib/x86_64-linux-gnu/cmake/GTest"
  -Dnlohmann_json_DIR="$DEPS/share/cmake/nlohmann_json"
  -DSIGMA_BUILD_BENCH=ON -DSIGMA_BUILD_GPU_TESTS=ON
  # Debian's Abseil 20220623 predates GCC 13's leaner headers (some of its
  # headers use uint8_t without <cstdint>); force-include it for C++ only.
  -DCMAKE_CXX_FLAGS="-include cstdint")
[[ -n "$SHARED" ]] && CMAKE_ARGS+=(-DSIGMA_SHARED_DIR="$SHARED")
log "configure (kernels/ alone, CUDA on, CPU BLAS off)"
if timeout "$(left 120)" cmake "${CMAKE_ARGS[@]}" -DSIGMA_BUILD_TESTS=ON >"$RESULTS/configure.log" 2>&1; then
  STATE[configure]=ok
else
  # tests/kernels (not ours) may need something the device lacks: GPU tests only.
  log "configure with all kernel tests failed (tail below); retrying with only the GPU tests"
  tail -5 "$RESULTS/configure.log"
  if timeout "$(left 120)" cmake "${CMAKE_ARGS[@]}" -DSIGMA_BUILD_TESTS=OFF >>"$RESULTS/configure.log" 2>&1; then
    STATE[configure]="ok (gpu tests only)"
  else
    STATE[configure]=FAILED
    tail -20 "$RESULTS/configure.log"
  fi
fi
if [[ "${STATE[configure]}" == ok* ]]; then
  log "build sigma_gpu_test sigma_gpu_bench (-j$JOBS)"
  # sigma_cuda_backend: the module the factory dlopens (MakeBackend(kCuda)).
  if timeout "$(left 300)" cmake --build "$BUILD" -j "$JOBS" --target sigma_gpu_test sigma_gpu_bench \
      sigma_cuda_backend >"$RESULTS/build.log" 2>&1; then
    STATE[build]=ok
  else
    STATE[build]=FAILED
    grep -E -m 20 "error|Error" "$RESULTS/build.log"
    tail -10 "$RESULTS/build.log"
  fi
fi
TEST_BIN="$(find "$BUILD" -name sigma_gpu_test -type f -perm -u+x 2>/dev/null | head -1)"
BENCH_BIN="$(find "$BUILD" -name sigma_gpu_bench -type f -perm -u+x 2>/dev/null | head -1)"

if ((BUILD_ONLY == 0)) && [[ "${STATE[build]}" == ok ]]; then
  # ---- 2. float64 references --------------------------------------------------
  log "numpy references"
  REF="$BUILD/ref"
  rm -rf "$REF"
  QFLAG=()
  ((QUICK)) && QFLAG=(--quick)
  if timeout "$(left 90)" "$PY" tests/gpu/make_reference.py "$REF" "${QFLAG[@]}" >"$RESULTS/reference.log" 2>&1; then
    STATE[reference]=ok
  else
    STATE[reference]=FAILED
    tail -5 "$RESULTS/reference.log"
  fi

  # ---- 3. GPU tests ---------------------------------------------------------------
  log "sigma_gpu_test"
  SIGMA_GPU_REF_DIR="$([[ "${STATE[reference]}" == ok ]] && echo "$REF")" \
  SIGMA_TESTVECTORS_DIR="${TESTVECTORS:-/nonexistent}" \
    timeout "$(left 180)" "$TEST_BIN" >"$RESULTS/gpu_test.log" 2>&1
  rc=$?
  passed=$(grep -E -o '^\[  PASSED  \] [0-9]+' "$RESULTS/gpu_test.log" | grep -E -o '[0-9]+$' || echo 0)
  failed=$(grep -E -o '^\[  FAILED  \] [0-9]+ test' "$RESULTS/gpu_test.log" | grep -E -o '[0-9]+' || echo 0)
  skipped=$(grep -E -o '^\[  SKIPPED \] [0-9]+' "$RESULTS/gpu_test.log" | grep -E -o '[0-9]+$' || echo 0)
  TEST_COUNTS="${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
  if ((rc == 0)); then STATE[tests]=ok; else STATE[tests]="FAILED (rc $rc)"; fi
  grep -E "^\[  (FAILED|SKIPPED) \]|Failure|Skipped|^.*: got " "$RESULTS/gpu_test.log" | head -40

  # The backend conformance suite through the factory (dlopen of the module),
  # when the full kernel tests configured (they need nothing but GTest/json).
  if [[ "${STATE[configure]}" == ok ]] &&
     timeout "$(left 200)" cmake --build "$BUILD" -j "$JOBS" --target sigma_kernels_test \
       >>"$RESULTS/build.log" 2>&1; then
    KT="$(find "$BUILD" -name sigma_kernels_test -type f -perm -u+x | head -1)"
    log "sigma_kernels_test --gtest_filter='*/cuda*' (factory + module, plain and routed)"
    if SIGMA_SHARED_DIR="$SHARED" timeout "$(left 60)" "$KT" \
         --gtest_filter='*/cuda*' >"$RESULTS/conformance.log" 2>&1; then
      TEST_COUNTS="$TEST_COUNTS; conformance ok"
    else
      STATE[tests]="FAILED (conformance)"
      grep -E "Failure|FAILED" "$RESULTS/conformance.log" | head -20
    fi
  fi

  # ---- 4. benchmarks ----------------------------------------------------------------
  BQ=()
  ((QUICK)) && BQ=(--quick)
  log "sigma_gpu_bench"
  if timeout "$(left 200)" "$BENCH_BIN" "${BQ[@]}" --json "$RESULTS/bench_cuda.jsonl" >"$RESULTS/bench_cuda.log" 2>&1; then
    STATE[bench]=ok
  else
    STATE[bench]="FAILED (rc $?)"
  fi
  cat "$RESULTS/bench_cuda.log"
  log "torch_seal.py"
  if timeout "$(left 150)" "$PY" bench/gpu/torch_seal.py "${BQ[@]}" --json "$RESULTS/bench_torch.jsonl" \
      >"$RESULTS/bench_torch.log" 2>&1; then
    STATE[torch]=ok
  else
    STATE[torch]="FAILED (rc $?)"
  fi
  cat "$RESULTS/bench_torch.log"
  # The CPU side of the seal crossover (the CPU backend is not built here).
  log "torch_seal.py --device cpu (crossover)"
  if timeout "$(left 90)" "$PY" bench/gpu/torch_seal.py --device cpu --reps 5 \
      --configs 64:4096,128:4096,256:4096,512:4096,1024:4096 --json "$RESULTS/bench_torch_cpu.jsonl" \
      >"$RESULTS/bench_torch_cpu.log" 2>&1; then
    STATE[torch_cpu]=ok
  else
    STATE[torch_cpu]="FAILED (rc $?)"
  fi
  cat "$RESULTS/bench_torch_cpu.log"
fi

# ---- 5. the table ----------------------------------------------------------------------
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
echo
echo "=== SIGMA CUDA device check: ${GPU_NAME:-no GPU seen} ($(date -u +%FT%TZ), ${SECONDS}s) ==="
printf '%-10s %s\n' configure "${STATE[configure]}" build "${STATE[build]}" reference "${STATE[reference]}" \
  gpu_tests "${STATE[tests]}: $TEST_COUNTS" bench "${STATE[bench]}" torch "${STATE[torch]}" \
  torch_cpu "${STATE[torch_cpu]}"
"$PY" tests/gpu/device_check_table.py "$RESULTS/bench_cuda.jsonl" "$RESULTS/bench_torch.jsonl" \
  "$RESULTS/bench_torch_cpu.jsonl" || echo "(no benchmark table)"
[[ "${STATE[build]}" == ok && ( $BUILD_ONLY == 1 || "${STATE[tests]}" == ok ) ]]
