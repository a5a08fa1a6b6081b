#!/usr/bin/env python3
"""Writes float64 reference cases for the CUDA backend tests (sigma_gpu_test,
CudaNumpyReference.*) into a folder: for each case <name>.json (parameters,
the rows file, expected SealMoments and track values) and <name>.bin (the
rows, [n_A, m] row-major, little-endian, in the case's dtype).

The expected values are computed here with numpy (and scipy's triangular
solves when present) in float64, from the exact float64 values of the stored
fp16/bf16/fp32/fp64 elements, following SIGMA-SPEC.md §2-§3 and
kernels/src/backend.cc (TrackShifts, QStatistics). Used by the device check,
where there is no OpenBLAS CPU backend to compare with.

usage: make_reference.py OUT_DIR [--quick]
"""
import json
import math
import os
import sys

import numpy as np

try:
    from scipy.linalg import solve_triangular as _scipy_solve_triangular
except Exception:  # scipy is optional
    _scipy_solve_triangular = None

Z95 = 1.959963984540054


def solve_lower(l, b):
    if _scipy_solve_triangular is not None:
        return _scipy_solve_triangular(l, b, lower=True, check_finite=False)
    return np.linalg.solve(l, b)


def to_bf16_bits(x32):
    """float32 -> bf16 bits, round to nearest even (as sigma::DoubleToBFloat16)."""
    bits = x32.view(np.uint32).astype(np.uint64)
    rounding = 0x7FFF + ((bits >> 16) & 1)
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_f64(b):
    return (b.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def make_rows(rng, n_a, m, dtype, scale=1.0):
    """Anisotropic, correlated rows; returns (raw bytes, exact float64 values)."""
    z = rng.standard_normal((n_a, m))
    common = rng.standard_normal((n_a, 1))
    scales = 1.0 + 0.25 * (np.arange(m) % 7)
    x = scale * (z * scales + 0.3 * common)
    x32 = x.astype(np.float32)
    if dtype == "fp64":
        raw = x.astype("<f8")
        vals = raw.astype(np.float64)
    elif dtype == "fp32":
        raw = x32.astype("<f4")
        vals = raw.astype(np.float64)
    elif dtype == "fp16":
        raw = x32.astype("<f2")
        vals = raw.astype(np.float64)
    elif dtype == "bf16":
        raw = to_bf16_bits(x32).astype("<u2")
        vals = bf16_bits_to_f64(raw)
    else:
        raise ValueError(dtype)
    return raw.tobytes(), vals


def moments(vals, preprocessing, n, delta, rho):
    x = np.array(vals, dtype=np.float64, copy=True)
    n_a, m = x.shape
    if preprocessing == "l2":
        e = np.einsum("ij,ij->i", x, x)
        nz = e > 0
        x[nz] *= (1.0 / np.sqrt(e[nz]))[:, None]
    # preprocess.cc's rule: a normalised row has energy exactly 1 (0 if zero);
    # raw rows their exactly rounded sum of squares.
    if preprocessing == "l2":
        energy = np.where(np.einsum("ij,ij->i", x, x) > 0, 1.0, 0.0)
    else:
        energy = np.array([math.fsum(row) for row in x * x])
    limit = rho
    g = x.T @ x
    f = n_a / n
    shifts = [(1.0 / n, delta), (1.0 / n, delta + (1.0 - f) * rho), (1.0 / n_a, delta)]
    ok, log_det, factors = [], [], []
    for scale, shift in shifts:
        mat = scale * g
        mat[np.diag_indices(m)] += shift
        try:
            l = np.linalg.cholesky(mat)
            ok.append(True)
            log_det.append(float(2.0 * np.sum(np.log(np.diag(l)))))
            factors.append(l)
        except np.linalg.LinAlgError:
            ok.append(False)
            log_det.append(0.0)
            factors.append(None)
    out = {
        "ok": ok,
        "log_det": log_det,
        "energy_count": int(n_a),
        "energy_max": float(energy.max()),
        "energy_sum": float(energy.sum()),
        "rho_violations": int(np.count_nonzero(energy > limit)),
        "q_mean": 0.0, "q_sq_mean": 0.0, "q_sd": 0.0, "trace_a": 0.0, "trace_a2": 0.0,
    }
    tracks = None
    if ok[2]:
        l = factors[2]
        y = solve_lower(l, x.T)
        q = np.einsum("ij,ij->j", y, y)
        mean = float(q.mean())
        out["q_mean"] = mean
        out["q_sq_mean"] = float(np.mean(q * q))
        out["q_sd"] = float(math.sqrt(np.sum((q - mean) ** 2) / (n_a - 1))) if n_a > 1 else 0.0
        linv = solve_lower(l, np.eye(m))
        linv = np.tril(linv)
        out["trace_a"] = float(np.sum(linv * linv))
        a = linv.T @ linv
        out["trace_a2"] = float(np.sum(a * a))
        if all(ok):
            trace_ac2 = m - 2.0 * delta * out["trace_a"] + delta * delta * out["trace_a2"]
            bias = -(out["q_sq_mean"] - trace_ac2) / (2.0 * n_a)
            tracks = {
                "track1_lower": log_det[0],
                "track1_upper": log_det[1],
                "track2_raw": log_det[2],
                "track2_bias": bias,
                "track2": log_det[2] - (1.0 - f) * bias,
                "track2_ci_halfwidth": Z95 * out["q_sd"] * math.sqrt(max(0.0, 1.0 - f) / n_a),
            }
    return out, tracks


# name, dtype, preprocessing, m, n_A, n, delta, rho
CASES = [
    ("ref_fp64_l2_m64", "fp64", "l2", 64, 1024, 4096, 1e-6, 1.0),
    ("ref_fp32_none_m96", "fp32", "none", 96, 800, 2000, 1e-3, 330.0),
    ("ref_fp16_l2_m128", "fp16", "l2", 128, 2048, 20000, 1e-6, 1.0),
    ("ref_fp32_l2_m48_na_below_m", "fp32", "l2", 48, 30, 300, 1e-4, 1.0),
    ("ref_fp16_l2_m256", "fp16", "l2", 256, 768, 7680, 1e-6, 1.0),
    ("ref_bf16_l2_m257", "bf16", "l2", 257, 600, 6000, 1e-6, 1.0),
    ("ref_bf16_l2_m1100", "bf16", "l2", 1100, 4400, 44000, 1e-6, 1.0),
]
QUICK_SKIP = {"ref_bf16_l2_m1100"}


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    out_dir = argv[1]
    quick = "--quick" in argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20261129)
    for name, dtype, prep, m, n_a, n, delta, rho in CASES:
        raw, vals = make_rows(rng, n_a, m, dtype)
        if quick and name in QUICK_SKIP:
            continue
        mo, tracks = moments(vals, prep, n, delta, rho)
        rows_file = name + ".bin"
        with open(os.path.join(out_dir, rows_file), "wb") as f:
            f.write(raw)
        case = {
            "name": name, "dtype": dtype, "preprocessing": prep, "m": m, "n_A": n_a, "n": n,
            "delta": delta, "rho": rho, "rows_file": rows_file, "expected_moments": mo,
        }
        if tracks is not None:
            case["expected_tracks"] = tracks
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(case, f, indent=1)
        print(f"{name}: m={m} n_A={n_a} {dtype} {prep} log_det={mo['log_det']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
