#!/usr/bin/env bash
# Preflight of the device check (device_check.sh step 0): prints the
# architecture, the GPU, nvcc / g++ / cmake versions and where libcublas,
# libcusolver and cusolverDn.h are; exits 1 with a "MISSING:" or "too old"
# line for each problem. Prints "nvcc: PATH" for the caller to export as
# CUDACXX.
#
# nvcc: $CUDACXX, else PATH, else /usr/local/cuda/bin. The libraries and the
# header are looked up under nvcc's toolkit, $CUDAToolkit_ROOT and the system
# folders; when they exist only in PyTorch's wheels (site-packages/nvidia/...)
# the line says so: those wheels carry no nvcc, so install or point
# CUDAToolkit_ROOT (SIGMA_CMAKE_ARGS=-DCUDAToolkit_ROOT=...) at a full toolkit.
# CUDA >= 12.1 is required (cuBLAS TRSM fails for more than 524,280
# right-hand sides before it; the backend refuses older runtimes at start).
#
# env: CUDACXX, CUDAToolkit_ROOT, PYTHON (python3), SIGMA_DEVICE_DEPS
set -uo pipefail
PY="${PYTHON:-python3}"
DEPS="${SIGMA_DEVICE_DEPS:-build/device-deps}"
status=0
missing() { echo "MISSING: $*"; status=1; }

echo "architecture: $(uname -m)"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 ||
  echo "nvidia-smi: not available"
nvcc="${CUDACXX:-}"
[[ -z "$nvcc" ]] && nvcc="$(command -v nvcc 2>/dev/null)"
[[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
if [[ -n "$nvcc" && -x "$nvcc" ]]; then
  echo "nvcc: $nvcc"
  "$nvcc" --version | tail -2
else
  missing "nvcc (set CUDACXX=/path/to/nvcc or put the toolkit's bin on PATH)"
  nvcc=""
fi
if command -v g++ >/dev/null; then g++ --version | head -1; else missing "g++"; fi
if command -v cmake >/dev/null; then cmake --version | head -1; else missing "cmake (>= 3.22)"; fi

toolkit=""
[[ -n "$nvcc" ]] && toolkit="$(cd "$(dirname "$nvcc")/.." && pwd)"
roots=()
for d in "$toolkit" "${CUDAToolkit_ROOT:-}" /usr/local/cuda /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/include; do
  [[ -n "$d" && -d "$d" && " ${roots[*]:-} " != *" $d "* ]] && roots+=("$d")
done
wheels="$("$PY" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)"
for what in libcublas.so libcusolver.so cusolverDn.h; do
  hit="$(find -L "${roots[@]}" -name "$what*" 2>/dev/null | head -1)"
  if [[ -n "$hit" ]]; then
    echo "$what: $hit"
    continue
  fi
  wheel=""
  for w in $wheels; do
    [[ -d "$w/nvidia" ]] && wheel="$(find "$w/nvidia" -name "$what*" 2>/dev/null | head -1)"
    [[ -n "$wheel" ]] && break
  done
  missing "$what under ${roots[*]:-no toolkit}${wheel:+ (only in a Python wheel: $wheel; pass -DCUDAToolkit_ROOT=<a full toolkit> in SIGMA_CMAKE_ARGS)}"
done

if [[ -n "$nvcc" ]]; then
  v="$("$nvcc" --version | grep -E -o 'release [0-9]+\.[0-9]+' | grep -E -o '[0-9]+\.[0-9]+')"
  if [[ -z "$v" ]] || ! awk -v v="$v" 'BEGIN { split(v, a, "."); exit !(a[1] > 12 || (a[1] == 12 && a[2] >= 1)) }'; then
    echo "CUDA ${v:-(unknown version)} is too old: the CUDA backend needs CUDA >= 12.1"
    status=1
  fi
fi
[[ -d "$DEPS/include/absl" ]] ||
  missing "$DEPS/include/absl (run bash tests/gpu/prepare_device_deps.sh on the build machine and carry build/device-deps)"
exit $status
