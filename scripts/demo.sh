#!/usr/bin/env bash
# make demo: sigmad + a simulated S1/S2 recursion streamed by the Python client.
# Usage: scripts/demo.sh [SIGMAD_BINARY] [extra args of python -m sigma_client.demo]
# The binary: $1, else $SIGMAD, else build/sigmad, build/*/sigmad, build/*/server/sigmad.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then export SIGMAD="$1"; shift; fi
export PYTHONPATH="$PWD/client/python/src${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
exec "$PY" -m sigma_client.demo --out var/demo "$@"
