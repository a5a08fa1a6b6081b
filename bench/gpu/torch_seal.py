#!/usr/bin/env python3
"""The SIGMA seal (spec §3-§4) done with torch.linalg in float64 on the GPU, on
the same seeded data as bench/gpu/sigma_gpu_bench (bench_data.cu):

    u = splitmix64(idx ^ splitmix64(seed)), idx = row * m + col, seed = m * 1000003 + n_A
    element = bf16(float32((u >> 11) * 2^-53 - 0.5))

l2 preprocessing, n = 10 n_A, delta = 1e-6, rho = 1. Timed end to end from a
bf16 CPU tensor (upload included, like SealBatch from host memory), and device
only (data already on the GPU). Prints a table and, with --json, one JSON line
per configuration with the values to cross-check against the CUDA backend.
With --device cpu the JSON lines say "impl": "torch_cpu": the device check uses
them as the CPU side of the CPU-vs-GPU seal crossover when its build has no
CPU backend (tests/gpu/device_check.sh).

usage: torch_seal.py [--quick] [--reps N] [--json FILE] [--configs m:n,...] [--device cuda|cpu]
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch

MASK64 = (1 << 64) - 1


def _signed(c):
    c &= MASK64
    return c - (1 << 64) if c >= (1 << 63) else c


C1 = _signed(0x9E3779B97F4A7C15)
C2 = _signed(0xBF58476D1CE4E5B9)
C3 = _signed(0x94D049BB133111EB)


def splitmix64_int(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _lsr(z, k):
    """Logical right shift of int64 tensors holding uint64 bit patterns."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64_tensor(x):
    """splitmix64 on int64 tensors (two's-complement wrap-around = uint64 arithmetic)."""
    z = x + C1
    z = (z ^ _lsr(z, 30)) * C2
    z = (z ^ _lsr(z, 27)) * C3
    return z ^ _lsr(z, 31)


def make_rows(m, n_a, device, chunk_rows=4096):
    """bf16 [n_a, m] on `device`, identical to bench_data.cu."""
    seed_mix = _signed(splitmix64_int(m * 1000003 + n_a))
    out = torch.empty((n_a, m), dtype=torch.bfloat16, device=device)
    cols = torch.arange(m, dtype=torch.int64, device=device)
    for start in range(0, n_a, chunk_rows):
        rows = torch.arange(start, min(n_a, start + chunk_rows), dtype=torch.int64, device=device)
        idx = rows[:, None] * m + cols[None, :]
        u = splitmix64_tensor(idx ^ seed_mix)
        v = _lsr(u, 11).to(torch.float64) * (2.0 ** -53) - 0.5
        out[start:start + rows.numel()] = v.to(torch.float32).to(torch.bfloat16)
    return out


def seal(x_bf16, n, delta, rho, device):
    """Returns (log_dets[3], q_mean, q_sq_mean, q_sd, trace_a, trace_a2) as a tensor."""
    x = x_bf16.to(device).to(torch.float64)
    n_a, m = x.shape
    x = x * torch.rsqrt((x * x).sum(dim=1, keepdim=True)).nan_to_num(posinf=0.0)  # l2
    g = x.T @ x
    f = n_a / n
    eye = torch.eye(m, dtype=torch.float64, device=device)
    mats = torch.stack([g / n + delta * eye, g / n + (delta + (1 - f) * rho) * eye, g / n_a + delta * eye])
    l, info = torch.linalg.cholesky_ex(mats)
    log_dets = 2.0 * torch.log(torch.diagonal(l, dim1=-2, dim2=-1)).sum(-1)
    l2 = l[2]
    y = torch.linalg.solve_triangular(l2, x.T, upper=False)
    q = (y * y).sum(0)
    q_mean = q.mean()
    linv = torch.linalg.solve_triangular(l2, eye, upper=False)
    a = linv.T @ linv
    out = torch.stack([log_dets[0], log_dets[1], log_dets[2], q_mean, (q * q).mean(), q.std(correction=1),
                       (linv * linv).sum(), (a * a).sum(), info.abs().sum().to(torch.float64)])
    return out.cpu()  # synchronises


def timed(fn, reps, device):
    fn()  # warm-up
    times = []
    result = None
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", default="")
    p.add_argument("--configs", default="")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.configs:
        configs = [tuple(int(v) for v in item.split(":")) for item in args.configs.split(",")]
    elif args.quick:
        configs = [(1024, 8192)]
    else:
        configs = [(m, n_a) for m in (1024, 4096, 8192) for n_a in (8192, 65536)]
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("torch_seal: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"torch {torch.__version__} on {name}")
    print(f"{'m':>6} {'n_A':>6} | {'e2e ms':>9} {'device ms':>9} | {'track2_raw':>20} {'q_mean':>12}")
    out = open(args.json, "w") if args.json else None
    for m, n_a in configs:
        x_dev = make_rows(m, n_a, device)
        x_host = x_dev.cpu()
        n, delta, rho = 10.0 * n_a, 1e-6, 1.0
        e2e_ms, r = timed(lambda: seal(x_host, n, delta, rho, device), args.reps, device)
        dev_ms, _ = timed(lambda: seal(x_dev, n, delta, rho, device), args.reps, device)
        v = [float(t) for t in r]
        ok = v[8] == 0 and all(math.isfinite(t) for t in v)
        print(f"{m:>6} {n_a:>6} | {e2e_ms:>9.1f} {dev_ms:>9.1f} | {v[2]:>20.12f} {v[3]:>12.6f}" + ("" if ok else "  (cholesky failed)"))
        sys.stdout.flush()
        if out:
            out.write(json.dumps({
                "impl": "torch" if device == "cuda" else "torch_cpu", "m": m, "n_a": n_a, "ok": ok, "seal_ms": e2e_ms, "device_ms": dev_ms,
                "track1_lower": v[0], "track1_upper": v[1], "track2_raw": v[2], "q_mean": v[3],
                "q_sq_mean": v[4], "q_sd": v[5], "trace_a": v[6], "trace_a2": v[7]}) + "\n")
            out.flush()
        del x_dev, x_host
        if device == "cuda":
            torch.cuda.empty_cache()
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
