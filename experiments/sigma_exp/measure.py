"""Experiments 1 (measurement stability: two sketch seeds, several n_A) and 2 (n_A
ablation against the exact log-det of the full corpus) on MiniLM embeddings of the corpus."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .state import Steps, atomic_write_json
from .stream import exact_logdet, stream

Z95 = 1.959963984540054


def corpus_embeddings(runs: Path, docs: list[str], steps: Steps, log=print) -> np.ndarray:
    path = runs / "corpus_minilm.npy"
    if not steps.done("corpus/embed_minilm"):
        from .encoder import MiniLM
        t0 = time.time()
        e = MiniLM().encode(docs)
        np.save(path, e)
        steps.mark("corpus/embed_minilm", {"n": len(docs), "m": int(e.shape[1])},
                   time.time() - t0)
        log(f"corpus: {len(docs)} docs embedded with MiniLM in {time.time() - t0:.0f}s")
    return np.load(path)


def run(runs: Path, target: str, emb: np.ndarray, steps: Steps, factors=(1, 4, 16, 64),
        seeds=(1, 2, 3, 4, 5, 6, 7, 8), log=print) -> dict:
    n, m = emb.shape
    S = steps.run("corpus/exact_logdet", lambda: exact_logdet(emb))
    log(f"exact S of the full corpus: {S:.4f} (n={n}, m={m})")
    ids = np.arange(n, dtype=np.uint64)
    rows = []
    for fct in factors:
        n_a = fct * m
        for seed in seeds:
            job = f"abl-na{n_a}-seed{seed}"
            # seed >= 2 measures against seed 1 (same corpus, another I_A): its drift is the
            # stability check (should lie within drift_half).
            bj = f"abl-na{n_a}-seed1" if seed != seeds[0] else None

            def do():
                return stream(target, job, "minilm", 0, emb, ids, n_a=n_a, seed=seed,
                              baseline_job=bj, baseline_generation=0 if bj else None)
            r = steps.run(f"ablation/{job}", do)
            half = r["track2_ci_halfwidth"]
            rows.append({
                "n_a": n_a, "n_a_over_m": fct, "seed": seed, "f": n_a / n,
                "track1_lower": r["track1_lower"], "track1_upper": r["track1_upper"],
                "track2": r["track2"], "track2_raw": r["track2_raw"], "half": half,
                "error": r["track2"] - S, "raw_error": r["track2_raw"] - S,
                "covered": abs(r["track2"] - S) <= half,
                "drift_vs_seed1": r["track2_drift"] if bj else None,
                "drift_half": r["drift_halfwidth"] if bj else None,
                "compute_seconds": r["compute_seconds"],
                "client_seconds": r.get("client", {}).get("total_seconds"),
                "seal_wait_seconds": r.get("client", {}).get("seal_wait_seconds"),
                "low_confidence": r["flags"]["low_confidence"],
                "alerts": [f"{a['rule']}:{a['severity']}" for a in r["alerts"]],
            })
    summary = []
    for fct in factors:
        rs = [r for r in rows if r["n_a_over_m"] == fct]
        n_a = fct * m
        halves = np.array([r["half"] for r in rs])
        errs = np.array([r["error"] for r in rs])
        pair = [r for r in rs if r["seed"] == seeds[1]][0]
        f = n_a / n
        summary.append({
            "n_a": n_a, "n_a_over_m": fct, "f": f,
            "mean_half": float(halves.mean()),
            "half_x_sqrt_na": float(halves.mean() * np.sqrt(n_a)),
            "half_x_sqrt_na_over_1mf": float(halves.mean() * np.sqrt(n_a / (1 - f))),
            "rmse": float(np.sqrt((errs ** 2).mean())), "mean_error": float(errs.mean()),
            "mean_abs_raw_error": float(np.mean([abs(r["raw_error"]) for r in rs])),
            "coverage": f"{sum(r['covered'] for r in rs)}/{len(rs)}",
            "seed1_track2": [r for r in rs if r["seed"] == seeds[0]][0]["track2"],
            "seed2_track2": pair["track2"],
            "seed2_minus_seed1": pair["drift_vs_seed1"], "drift_half": pair["drift_half"],
            "stable": abs(pair["drift_vs_seed1"]) <= pair["drift_half"],
            "pairs_within": f"{sum(abs(r['drift_vs_seed1']) <= r['drift_half'] for r in rs if r['drift_vs_seed1'] is not None)}/{len(rs) - 1}",
            "mean_compute_seconds": float(np.mean([r["compute_seconds"] for r in rs])),
            "mean_seal_wait_seconds": float(np.mean([r["seal_wait_seconds"] or 0 for r in rs])),
            "mean_client_seconds": float(np.mean([r["client_seconds"] or 0 for r in rs])),
            "track1_upper": float(np.mean([r["track1_upper"] for r in rs])),
            "track1_lower": float(np.mean([r["track1_lower"] for r in rs])),
        })
    out = {"n": n, "m": m, "exact_S": S, "rows": rows, "summary": summary}
    atomic_write_json(runs / "ablation.json", out)
    return out
