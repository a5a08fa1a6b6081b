"""The SIGMA demo: a simulated recursive training run watched by sigmad.

    python -m sigma_client.demo [--sigmad PATH] [--out var/demo]

Starts sigmad on free ports with a fresh store under --out, simulates two recursive
training runs whose embedding spectrum contracts generation by generation,

    S1 (data-only recursion):  mild contraction
    S2 (true recursion):       fast contraction

streams every generation through the Python client with 2 ranks per job (one thread
and one Monitor per rank, each pre-sketching its share locally), prints the
per-generation table with the alerts, writes <out>/report.png and stops the daemon.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .daemon import find_sigmad, start_sigmad
from .monitor import Monitor
from .plot import format_table, plot_reports
from .sketch import fnv1a64

# Contraction per generation of the spectrum's decay rate c: eigenvalue i of the
# generator's covariance is exp(-c_k i / m), c_k = speed * k.
JOBS = {"S1-data-only": 0.35, "S2-true-recursion": 1.3}


class Generator:
    """Embeddings x = Q diag(exp(-c_k i / (2 m))) z, z ~ N(0, I): a fixed random basis Q,
    a spectrum whose decay rate grows with the generation (the representation contracts)."""

    def __init__(self, m: int, speed: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.q, _ = np.linalg.qr(rng.standard_normal((m, m)))
        self.m, self.speed = m, speed

    def sample(self, k: int, rows: int, rng: np.random.Generator) -> np.ndarray:
        scale = np.exp(-self.speed * k * np.arange(self.m) / (2 * self.m))
        z = rng.standard_normal((rows, self.m)) * scale
        return (z @ self.q.T).astype(np.float32)


def first_generation(reps, rules) -> "int | None":
    """The first generation whose report carries one of `rules` (warning or critical)."""
    return next((r.generation for r in reps
                 if any(a.rule in rules and a.severity != "info" for a in r.alerts)), None)


def lead_line(reps) -> str:
    """The lead the significance early warning gives (spec §3 "Early warning by
    significance"): early_warning_trend's first generation vs the first drift alert's."""
    trend = first_generation(reps, {"early_warning_trend"})
    drift = first_generation(reps, {"collapse_contraction", "collapse_expansion"})
    div = first_generation(reps, {"early_warning_divergence"})
    z = ", ".join(f"{r.drift_zscore:+.1f}" if r.trend_evaluated else "-" for r in reps)
    if trend is None:
        lead = "early_warning_trend did not fire"
    elif drift is None:
        lead = f"early_warning_trend at generation {trend}, no drift alert yet"
    else:
        lead = (f"early_warning_trend at generation {trend}, first drift alert at {drift}: "
                f"lead {drift - trend} generation(s)")
    div_text = "never" if div is None else f"at generation {div}"
    return f"    z_drift per generation: {z}\n    {lead} (divergence warning {div_text})"


def run_rank(target, job, speed, rank, world, gens, m, rows_per_rank, chunk, errors, dtype):
    try:
        gen_model = Generator(m, speed, seed=1)
        mon = Monitor(target, job=job, tap="last_hidden", rank=rank, world_size=world)
        for k in range(gens):
            rng = np.random.default_rng([fnv1a64(job) & 0xFFFFFFFF, k, rank])
            with mon.generation(k, corpus_size=world * rows_per_rank) as gen:
                for i in range(0, rows_per_rank, chunk):
                    x = gen_model.sample(k, min(chunk, rows_per_rank - i), rng)
                    if dtype == "bf16":
                        import ml_dtypes
                        x = x.astype(ml_dtypes.bfloat16)
                    elif dtype == "fp16":
                        x = x.astype(np.float16)
                    gen.send(x)
        mon.close()
    except Exception as e:  # reported by the main thread
        errors.append((job, rank, e))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sigma_client.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--sigmad", default=None, help="the sigmad binary (default: $SIGMAD, build/sigmad, build/*/server/sigmad)")
    ap.add_argument("--out", default="var/demo", help="fresh store, logs and report.png go here")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--rows-per-rank", type=int, default=8192)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--keep-running", action="store_true", help="leave sigmad running at the end")
    a = ap.parse_args(argv)

    binary = find_sigmad(a.sigmad)
    if not binary:
        print("demo: no sigmad binary: build it (cmake --build build/<dir> --target sigmad) and pass "
              "--sigmad PATH or set SIGMAD", file=sys.stderr)
        return 2
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    d = start_sigmad(binary, out)
    print(f"demo: sigmad pid {d.pid} on {d.target} (metrics {d.metrics_url}), store {out / 'sigma.db'}")
    try:
        errors: list = []
        threads = [threading.Thread(target=run_rank, args=(d.target, job, speed, r, a.ranks,
                                                           a.generations, a.m, a.rows_per_rank,
                                                           2048, errors, a.dtype))
                   for job, speed in JOBS.items() for r in range(a.ranks)]
        print(f"demo: {len(JOBS)} jobs x {a.ranks} ranks x {a.generations} generations, "
              f"m = {a.m}, {a.ranks * a.rows_per_rank} embeddings per generation ({a.dtype})")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            for job, rank, e in errors:
                print(f"demo: {job} rank {rank}: {e}", file=sys.stderr)
            return 1
        series, thresholds = {}, {}
        for job in JOBS:
            with Monitor(d.target, job=job, tap="last_hidden", rank=0, world_size=1) as mon:
                series[job] = mon.history()
                info = mon.job_info()
                thresholds[job] = info.config.thresholds if info else None
        print()
        print(format_table(series))
        print()
        for job, reps in series.items():
            last = reps[-1]
            rank_of = {"warning": 1, "critical": 2}
            worst: dict = {}
            for r in reps:
                for x in r.alerts:
                    if x.severity in rank_of and rank_of[x.severity] > rank_of.get(worst.get(x.rule), 0):
                        worst[x.rule] = x.severity
            fired = [f"{rule}({sev}, first at generation "
                     f"{next(r.generation for r in reps if any(x.rule == rule for x in r.alerts))})"
                     for rule, sev in sorted(worst.items())]
            first_crit = next((r.generation for r in reps
                               if any(x.severity == "critical" for x in r.alerts)), None)
            critical = (f"first critical at generation {first_crit}" if first_crit is not None
                        else "never critical")
            print(f"{job}: generation {last.generation}: Track II drift {last.track2_drift:+.1f} nats "
                  f"({last.per_dim.track2_drift:+.3f}/dim) +- {last.drift_halfwidth_used:.1f}, "
                  f"Track I drift {last.track1_drift:+.2f}, divergence {last.divergence:+.1f}; "
                  f"{critical}; alerts: {', '.join(fired) or 'none'}")
            print(lead_line(reps))
            if last.generations_to_critical is not None:
                print(f"    forecast: {last.generations_to_critical:.1f} generations to the critical threshold")
        png = plot_reports(series, str(out / "report.png"), thresholds=thresholds,
                           title="SIGMA demo: simulated recursion, S1 (data only) vs S2 (true recursion)")
        print(f"\ndemo: wrote {png} in {time.monotonic() - t0:.1f} s")
        return 0
    finally:
        if a.keep_running:
            print(f"demo: sigmad left running, pid {d.pid}, {d.target}")
        else:
            rc = d.stop()
            print(f"demo: sigmad stopped (exit {rc}); log {d.log_path}")


if __name__ == "__main__":
    sys.exit(main())
