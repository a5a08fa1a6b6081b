"""Streaming embeddings into a real sigmad through sigma_client, and the exact reference."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def reference():
    """tests/python/reference.py: the float64 numpy version of SIGMA-SPEC §3."""
    p = str(ROOT / "tests" / "python")
    if p not in sys.path:
        sys.path.insert(0, p)
    import reference as ref  # noqa: E402
    return ref


def exact_logdet(rows: np.ndarray, delta: float = 1e-6, preprocessing: str = "l2") -> float:
    """S = log det(G/n + delta I), G = sum_j x_j x_j^T over every row (spec §2)."""
    x = reference().preprocess(rows, preprocessing)
    n, m = x.shape
    s, v = np.linalg.slogdet(x.T @ x / n + delta * np.eye(m))
    if s <= 0:
        raise ValueError("G/n + delta I not positive definite")
    return float(v)


def start_daemon(workdir: Path, binary: Optional[str] = None):
    from sigma_client.daemon import find_sigmad, start_sigmad
    b = binary or find_sigmad(None) or str(ROOT / "build" / "main" / "server" / "sigmad")
    if not Path(b).exists():
        cand = ROOT / "build" / "main" / "server" / "sigmad"
        b = str(cand)
    return start_sigmad(b, workdir, extra_args=["--backend", "cpu"])


def report_dict(rep) -> dict:
    d = rep.to_dict() if hasattr(rep, "to_dict") else dict(rep)
    return d


def stream(target: str, job: str, tap: str, k: int, emb: np.ndarray,
           ids: Optional[np.ndarray] = None, n_a: Optional[int] = None, seed: int = 0,
           baseline_job: Optional[str] = None, baseline_generation: Optional[int] = None,
           timeout: float = 300.0, **config) -> dict:
    """Streams one generation (one snapshot) and returns its report as a dict, plus the
    client-side wall times. A snapshot already sealed (resume) is returned as stored.
    `config`: further job settings for sigma_client.Monitor (probe, trend_k, ...)."""
    import sigma_client
    mon = sigma_client.Monitor(target, job=job, tap=tap, n_a=n_a, seed=seed,
                               baseline_job=baseline_job,
                               baseline_generation=baseline_generation, timeout=timeout,
                               **config)
    try:
        try:
            old = mon.get_report(k)
        except sigma_client.SigmaError as e:  # unknown job: nothing sealed yet
            if "NOT_FOUND" not in str(getattr(e, "code", "")) and "NOT_FOUND" not in str(e):
                raise
            old = None
        if old is not None:
            d = report_dict(old)
            d["client"] = {"resumed": True}
            return d
        t0 = time.time()
        with mon.generation(k, corpus_size=len(emb)) as gen:
            gen.send(np.ascontiguousarray(emb, dtype=np.float32), sample_ids=ids)
        t1 = time.time()
        rep = gen.wait(timeout)
        t2 = time.time()
        d = report_dict(rep)
        d["client"] = {"resumed": False, "send_seconds": t1 - t0, "seal_wait_seconds": t2 - t1,
                       "total_seconds": t2 - t0}
        return d
    finally:
        mon.close()
