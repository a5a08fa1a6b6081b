#!/usr/bin/env python3
"""The numpy pipeline a researcher would write for one SIGMA seal (spec §3),
timed against `sigmactl eval` on the same data in the same script.

numpy side: C_A = X^T X / n_A; numpy.linalg.slogdet of the three shifted
matrices; numpy.linalg.solve(C_A + delta I, X^T) for q; inv for tr(A), tr(A^2).
sigmactl side: the `seal_seconds` that `sigmactl eval --json` reports (the
seal alone, without process start-up or file loading), same .npy file.

  .venv/bin/python bench/numpy_reference.py --sigmactl build/client/cli/sigmactl
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np


def numpy_seal(x, n, delta, rho):
    n_a, m = x.shape
    f = n_a / n
    c_a = (x.T @ x) / n_a
    eye = np.eye(m)
    lower = np.linalg.slogdet(f * c_a + delta * eye)[1]
    upper = np.linalg.slogdet(f * c_a + (delta + (1 - f) * rho) * eye)[1]
    shifted = c_a + delta * eye
    raw = np.linalg.slogdet(shifted)[1]
    solved = np.linalg.solve(shifted, x.T)
    q = np.einsum("ij,ji->i", x, solved)
    a = np.linalg.inv(shifted)
    return lower, upper, raw, q.mean(), q.std(ddof=1), np.trace(a), np.sum(a * a)


def best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigmactl", required=True)
    parser.add_argument("--m", type=int, nargs="+", default=[384, 768, 1024, 2048])
    parser.add_argument("--n-a", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    delta, rho = 1e-6, 1.0
    rng = np.random.default_rng(20261128)
    print(f"{'m':>6} {'n_A':>7} {'numpy s':>9} {'sigma s':>9} {'sigma/numpy':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.m:
            for n_a in args.n_a:
                x = rng.standard_normal((n_a, m)) * (1.0 + np.arange(m) % 7)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                n = 10 * n_a
                path = os.path.join(tmp, f"x_{m}_{n_a}.npy")
                np.save(path, x)
                t_numpy = best_of(lambda: numpy_seal(x, n, delta, rho), args.repeats)
                t_sigma = float("inf")
                for _ in range(args.repeats):
                    out = subprocess.run(
                        [args.sigmactl, "eval", path, "--json", "--backend", "cpu",
                         "--n-a", str(n_a), "--n", str(n), "--delta", str(delta)],
                        check=True, capture_output=True, text=True).stdout
                    result = json.loads(out)
                    t_sigma = min(t_sigma, result["seal_seconds"])
                # Same numbers on both sides (a wrong pipeline is no benchmark).
                lower, upper, raw = numpy_seal(x, n, delta, rho)[:3]
                assert abs(result["track1_upper"] - upper) < 1e-6 * max(1, abs(upper)), "upper"
                assert abs(result["track2_raw"] - raw) < 1e-6 * max(1, abs(raw)), "raw"
                print(f"{m:>6} {n_a:>7} {t_numpy:>9.3f} {t_sigma:>9.3f} {t_sigma / t_numpy:>12.2f}",
                      flush=True)


if __name__ == "__main__":
    main()
