#!/usr/bin/env bash
# ctest emulated:gpu_bench_and_device_check_table: runs the GPU benchmark
# (bench/gpu/sigma_gpu_bench) built against the host CUDA emulator at toy
# sizes, then the device check's summary table (device_check_table.py) on its
# JSON, and checks that every section the device check reads came out. The
# timings are meaningless; the point is that the harness and the table work
# before they meet a device.
#
# usage: emulated_bench_smoke.sh BENCH_BINARY PYTHON WORKDIR
set -euo pipefail
BENCH="$1" PY="$2" WORK="$3"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rm -rf "$WORK" && mkdir -p "$WORK"
"$BENCH" --quick --reps 1 --configs 96:384,128:256 --sweep-ms 16,48 --crossover-ms 32,64 --crossover-n-a 96 --json "$WORK/bench_cuda.jsonl" \
  >"$WORK/bench.log" 2>&1 || { cat "$WORK/bench.log"; echo "FAIL: the benchmark exited non-zero"; exit 1; }
cat "$WORK/bench.log"
fail=0
need() {  # need FILE PATTERN WHAT
  if ! grep -q -- "$2" "$1"; then echo "FAIL: $3 missing (no '$2' in $(basename "$1"))"; fail=1; fi
}
J="$WORK/bench_cuda.jsonl"
need "$J" '"impl": "cuda", "m": 96, "n_a": 384, "ok": true' "seal row m=96"
need "$J" '"impl": "cuda", "m": 128, "n_a": 256, "ok": true' "seal row m=128"
need "$J" '"impl": "cuda_potrf"' "potrf switch rows"
need "$J" '"impl": "cuda_potrf_suggestion"' "potrf switch suggestion"
need "$J" '"impl": "cuda_crossover"' "CPU/GPU crossover rows"
# Every line is JSON with finite numbers where the table reads them.
"$PY" - "$J" <<'PY' || fail=1
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bad = [r for r in rows if r["impl"] == "cuda" and not all(
    math.isfinite(r[k]) for k in ("seal_ms", "dgemm_tflops", "gram_syrk_useful_tflops",
                                  "gram_gemm_useful_tflops", "gram_blocked_useful_tflops", "track2_raw",
                                  "q_mean", "trace_a"))]
if bad:
    print("FAIL: non-finite values in", bad)
    sys.exit(1)
PY
# The table, with a torch file made from the CUDA rows (same schema as
# torch_seal.py writes) and no torch-cpu file.
"$PY" - "$J" "$WORK/bench_torch.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as out:
    for l in open(sys.argv[1]):
        r = json.loads(l)
        if r["impl"] == "cuda":
            out.write(json.dumps({"impl": "torch", "m": r["m"], "n_a": r["n_a"], "seal_ms": 2 * r["seal_ms"],
                                  "track2_raw": r["track2_raw"]}) + "\n")
PY
"$PY" "$HERE/device_check_table.py" "$J" "$WORK/bench_torch.jsonl" "$WORK/missing.jsonl" >"$WORK/table.txt" 2>&1 ||
  { cat "$WORK/table.txt"; echo "FAIL: device_check_table.py exited non-zero"; exit 1; }
cat "$WORK/table.txt"
T="$WORK/table.txt"
need "$T" "targets: gram" "target line"
need "$T" "potrf switch: batched wins up to m" "potrf switch line"
need "$T" "CPU vs GPU seal crossover" "crossover table"
need "$T" "suggested gpu_min_m" "gpu_min_m suggestion"
grep -E -q '^ +96 +384 \|' "$T" || { echo "FAIL: no table row for m=96"; fail=1; }
((fail == 0)) && echo "PASS"
exit $fail
