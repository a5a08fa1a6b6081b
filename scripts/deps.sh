#!/usr/bin/env bash
# Installs what the build and the tests need, and only what is missing.
# Idempotent: a second run does nothing but check. Debian packages via apt-get,
# Python test tools into a venv at .venv (override with SIGMA_VENV).
#   scripts/deps.sh --test-extras   only the Python test extras (torch, transformers,
#                                   lightning, tensorboard) into the venv; `make test`
#                                   runs it, `make run` does not (docs/python-client.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SIGMA_VENV:-.venv}"

# torch from PyPI (the only torch index reachable here besides Debian's 1.13, which needs
# 178 Debian packages and numpy < 2): the Linux wheel links the CUDA libraries (nvidia-*
# wheels, about 3 GB) even on a CPU-only machine, and `import torch` fails without them.
# --no-compile skips byte-compiling its ~20k .py files, most of the install time.
TEST_EXTRAS=(torch==2.15.0 transformers accelerate lightning tensorboard)
if [ "${1:-}" = "--test-extras" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "deps: no venv at $VENV (run scripts/deps.sh first)" >&2
    exit 1
  fi
  if "$VENV/bin/python" -c "import torch, transformers, accelerate, lightning, tensorboard" 2>/dev/null; then
    echo "deps: Python test extras present"
  else
    echo "deps: installing Python test extras: ${TEST_EXTRAS[*]} (torch pulls ~4 GB of CUDA wheels)"
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-compile "${TEST_EXTRAS[@]}"
  fi
  exit 0
fi

DEBIAN_PACKAGES=(
  build-essential cmake pkg-config python3-venv
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  prometheus-cpp-dev libopenblas-dev liblapacke-dev libsqlite3-dev
  libabsl-dev libbenchmark-dev libgtest-dev libgmock-dev
  libyaml-cpp-dev nlohmann-json3-dev
  postgresql libpq-dev
  clang libclang-rt-14-dev
  prometheus prometheus-alertmanager
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if ((${#missing[@]})); then
  echo "deps: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "deps: Debian packages present"
fi

PY_PACKAGES=(numpy pytest grpcio grpcio-tools protobuf ml_dtypes matplotlib pyyaml)
if [ ! -x "$VENV/bin/python" ]; then
  echo "deps: creating venv $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import numpy, pytest, grpc, grpc_tools, google.protobuf, ml_dtypes, matplotlib, yaml" 2>/dev/null; then
  echo "deps: installing Python packages: ${PY_PACKAGES[*]}"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
else
  echo "deps: Python packages present"
fi
