"""An independent float64 numpy version of SIGMA-SPEC §3 (for the daemon-free tests)."""
from __future__ import annotations

import numpy as np

Z95 = 1.959963984540054


def preprocess(rows: np.ndarray, preprocessing: str) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    if preprocessing == "l2":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.where(norms > 0, x / np.where(norms > 0, norms, 1), 0.0)
    return x


def tracks(rows: np.ndarray, n: float, delta: float, rho: float, preprocessing: str = "l2") -> dict:
    x = preprocess(rows, preprocessing)
    n_a, m = x.shape
    f = n_a / n
    c = x.T @ x / n_a
    eye = np.eye(m)
    t1l = np.linalg.slogdet(f * c + delta * eye)[1]
    t1u = np.linalg.slogdet(f * c + (delta + (1 - f) * rho) * eye)[1]
    L = np.linalg.cholesky(c + delta * eye)
    raw = 2 * np.log(np.diag(L)).sum()
    y = np.linalg.solve(L, x.T)
    q = (y * y).sum(axis=0)
    a = np.linalg.inv(c + delta * eye)
    tr_ac2 = m - 2 * delta * np.trace(a) + delta ** 2 * np.trace(a @ a)
    bias = -(np.mean(q ** 2) - tr_ac2) / (2 * n_a)
    t2 = raw - (1 - f) * bias
    half = Z95 * (np.std(q, ddof=1) if n_a > 1 else 0.0) * np.sqrt(max(0.0, 1 - f) / n_a)
    return {"track1_lower": t1l, "track1_upper": t1u, "track2": t2, "track2_raw": raw,
            "track2_bias": bias, "track2_ci_halfwidth": half}
