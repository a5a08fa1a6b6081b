#!/usr/bin/env bash
# Runs a GoogleTest binary with its arguments and fails if any test skipped
# or none ran: for ctest cases whose point is that every test RUNS (e.g. the
# CUDA cases on the host CUDA emulator, which would otherwise skip quietly
# when the module is not picked up).
#
# usage: run_without_skips.sh BINARY [GTEST ARGS...]
set -uo pipefail
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$@" >"$log" 2>&1
rc=$?
cat "$log"
((rc == 0)) || { echo "FAIL: rc $rc"; exit 1; }
if grep -q '^\[  SKIPPED \]' "$log"; then echo "FAIL: tests skipped (see above)"; exit 1; fi
grep -Eq '^\[  PASSED  \] [1-9][0-9]* test' "$log" || { echo "FAIL: no test ran"; exit 1; }
echo PASS
