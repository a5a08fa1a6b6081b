#!/usr/bin/env python3
"""The device check's summary table (tests/gpu/device_check.sh, step 5).

usage: device_check_table.py BENCH_CUDA.jsonl BENCH_TORCH.jsonl BENCH_TORCH_CPU.jsonl

Reads the JSON lines written by bench/gpu/sigma_gpu_bench (--json) and
bench/gpu/torch_seal.py (--json); a missing or empty file is skipped. Prints
the seal/Gram table against the issue's targets, the batched-potrf switch and
the CPU/GPU seal crossover with a suggested gpu_min_m. Exits 1 when there is
no CUDA seal row at all.
"""
import json, sys
def load(p):
    try:
        return [json.loads(l) for l in open(p) if l.strip()]
    except OSError:
        return []
cu, to, tc = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
seal = {(r["m"], r["n_a"]): r for r in cu if r.get("impl") == "cuda"}
tor = {(r["m"], r["n_a"]): r for r in to if r.get("impl") == "torch"}
if seal:
    print(f"{'m':>5} {'n_A':>6} | {'seal ms':>8} {'torch ms':>8} {'x':>5} | {'gram TF/s':>9} {'%DGEMM':>6} {'%67':>5} {'algo':>7} | {'DGEMM TF/s':>10} | {'raw logdet rel diff':>19}")
    for key in sorted(seal):
        r = seal[key]; t = tor.get(key, {})
        rates = {a: r.get(f"gram_{a}_useful_tflops", 0.0) for a in ("syrk", "gemm", "blocked")}
        algo = max(rates, key=rates.get)
        useful = rates[algo]
        # A rate that rounds to 0 in the JSON (the emulator under load) prints nan.
        pct_dgemm = 200 * useful / r["dgemm_tflops"] if r["dgemm_tflops"] > 0 else float("nan")
        tms = t.get("seal_ms")
        speed = f"{tms / r['seal_ms']:5.2f}" if tms else "  n/a"
        diff = abs(r["track2_raw"] - t["track2_raw"]) / abs(t["track2_raw"]) if t.get("track2_raw") else float("nan")
        print(f"{key[0]:>5} {key[1]:>6} | {r['seal_ms']:>8.1f} {tms if tms else float('nan'):>8.1f} {speed} | "
              f"{useful:>9.1f} {pct_dgemm:>5.0f}% {100 * useful / 67:>4.0f}% {algo:>7} | "
              f"{r['dgemm_tflops']:>10.1f} | {diff:>19.2e}")
    big = seal.get((8192, 65536))
    g = [max(r.get(f"gram_{a}_useful_tflops", 0.0) for a in ("syrk", "gemm", "blocked"))
         for (m, n), r in seal.items() if m >= 4096 and n >= 8192]
    print("targets: gram >= 60% of 67 TF/s (useful flops m^2 n_A, m>=4096): "
          + ("yes" if g and min(g) >= 0.6 * 67 else "NO" if g else "n/a")
          + "; seal(8192, 65536) < 500 ms: " + ("n/a" if not big else ("yes" if big["seal_ms"] < 500 else "NO") + f" ({big['seal_ms']:.0f} ms)")
          + "; faster than torch: " + ("n/a" if not tor else ("yes" if all(seal[k]["seal_ms"] < tor[k]["seal_ms"] for k in seal if k in tor) else "NO")))
    print("(%DGEMM = useful Gram rate / half the raw DGEMM rate, i.e. Gram vs a DGEMM doing the same useful work)")
sug = [r for r in cu if r.get("impl") == "cuda_potrf_suggestion"]
if sug:
    print(f"potrf switch: batched wins up to m = {sug[-1]['batched_max_m']} (set kDefaultBatchedPotrfMaxM in kernels/cuda/cuda_backend.h)")
# CPU vs GPU seal crossover: the CPU side is the CPU backend when the bench had
# one (cpu_ms), else torch.linalg on this machine's CPU (torch_cpu).
xo = {r["m"]: r for r in cu if r.get("impl") == "cuda_crossover"}
tcpu = {r["m"]: r for r in tc if r.get("impl") == "torch_cpu"}
if xo:
    n_a = next(iter(xo.values()))["n_a"]
    src = "sigma CPU backend" if any(r.get("cpu_ms") is not None for r in xo.values()) else "torch.linalg on the CPU (no CPU backend in this build)"
    print(f"CPU vs GPU seal crossover, n_A = {n_a}, one snapshot per call; CPU side: {src}")
    print(f"{'m':>5} | {'cuda ms':>8} {'/snap x8':>8} | {'cpu ms':>8} {'torch cpu':>9} | faster")
    wins = []
    for m in sorted(xo):
        r = xo[m]; t = tcpu.get(m, {}).get("seal_ms")
        ref = r.get("cpu_ms") if r.get("cpu_ms") is not None else t
        faster = "-" if ref is None else ("cuda" if r["cuda_ms"] < ref else "cpu")
        if ref is not None:
            wins.append((m, r["cuda_ms"] < ref))
        cpu_s = f"{r['cpu_ms']:8.3f}" if r.get("cpu_ms") is not None else f"{'n/a':>8}"
        t_s = f"{t:9.3f}" if t is not None else f"{'n/a':>9}"
        print(f"{m:>5} | {r['cuda_ms']:8.3f} {r['cuda_batch8_per_snapshot_ms']:8.3f} | {cpu_s} {t_s} | {faster}")
    suggested = None
    for m, win in reversed(wins):
        if not win:
            break
        suggested = m
    if wins:
        text = ("> %d (the CPU won at the largest m)" % wins[-1][0] if suggested is None
                else "%d%s" % (suggested, " or lower (cuda won at every m tried)" if suggested == wins[0][0] else ""))
        print(f"suggested gpu_min_m: {text} (kDefaultGpuMinM in kernels/include/sigma/kernels/routed_backend.h, sigmad --gpu-min-m); "
              "the CPU side here is this machine's CPU, not the daemon host's")
sys.exit(0 if seal else 1)
