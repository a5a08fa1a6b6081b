#!/usr/bin/env python3
"""Step-time overhead of the Python client on a toy training loop (issue 16, part 1).

Each step does a fixed amount of numpy work (the stand-in for forward/backward: `--work`
matmuls of [512, 512]) and hands one [rows, m] fp32 block of embeddings to the monitor;
each generation is `--steps` steps. Phases, in one run, against a sigmad started here:

    baseline      no monitor (one baseline generation before each monitored one)
    sync          Monitor(mode="sync")
    async         Monitor(mode="async")
    async-down    the same async monitor while sigmad is stopped (shares go to the spool)
    async-back    after sigmad restarted on the same port and database (the spool drains)

Prints the median and p90 step time of each phase and its ratio to the baseline of the
same run (no absolute thresholds: compare ratios), then checks that every generation of
the async phases sealed exactly once. Usage:

    SIGMAD=build/server/sigmad python bench/python/async_overhead.py [--steps 20 --gens 6]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client" / "python" / "src"))
from sigma_client import Monitor  # noqa: E402
from sigma_client.daemon import find_sigmad, start_sigmad  # noqa: E402


def step_work(a: np.ndarray, work: int) -> float:
    x = a
    for _ in range(work):
        x = np.tanh(x @ a)
    return float(x[0, 0])


def run_gen(mon, g, args, rng, a, times, in_client):
    """One generation of `steps` steps; the generation's last step also pays finish().
    times: whole steps; in_client: the part spent in send()/finish()."""
    gen = mon.generation(g) if mon is not None else None
    for i in range(args.steps):
        emb = rng.standard_normal((args.rows, args.m)).astype(np.float32)
        t0 = time.perf_counter()
        step_work(a, args.work)
        t1 = time.perf_counter()
        if gen is not None:
            gen.send(emb)
            if i == args.steps - 1:
                gen.finish()
        t2 = time.perf_counter()
        times.append(t2 - t0)
        in_client.append(t2 - t1)


IN_CLIENT: dict[str, list[float]] = {}


def run_rounds(phases, gens, args, rng, a, out):
    """Interleaves the phases generation by generation (the machine's load drifts; each
    phase's ratio is against the baseline measured in the same rounds)."""
    base = f"baseline ({'/'.join(phases)})"
    for g in gens:
        run_gen(None, g, args, rng, a, out.setdefault(base, []), [])
        for name, mon in phases.items():
            run_gen(mon, g, args, rng, a, out.setdefault(name, []),
                    IN_CLIENT.setdefault(name, []))
    return base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sigmad", default=None)
    ap.add_argument("--steps", type=int, default=20, help="steps per generation")
    ap.add_argument("--gens", type=int, default=6, help="generations per phase")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--m", type=int, default=768)
    ap.add_argument("--work", type=int, default=4, help="matmuls per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append one JSON line per phase")
    args = ap.parse_args()
    logging.getLogger("sigma_client").setLevel(logging.ERROR)  # the spool's warnings
    binary = find_sigmad(args.sigmad)
    if not binary:
        print("no sigmad: pass --sigmad or set SIGMAD", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    a = (rng.standard_normal((512, 512)) / 512 ** 0.5).astype(np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="sigma-async-bench-"))
    d = start_sigmad(binary, tmp / "d")
    target = d.target
    out: dict[str, list[float]] = {}
    G = args.gens
    sync = Monitor(target, job="bench-sync", rank=0, world_size=1)
    mon = Monitor(target, job="bench-async", rank=0, world_size=1, mode="async",
                  spool_dir=tmp / "spool")
    bases = {"sync": run_rounds({"sync": sync, "async": mon}, range(G), args, rng, a, out)}
    bases["async"] = bases["sync"]
    mon.flush(120)
    d.stop()
    bases["async-down"] = run_rounds({"async-down": mon}, range(G, 2 * G), args, rng, a, out)
    d = start_sigmad(binary, tmp / "d", listen=target)
    bases["async-back"] = run_rounds({"async-back": mon}, range(2 * G, 3 * G), args, rng, a, out)
    mon.close(300)
    sync.close()
    with Monitor(target, job="bench-async", rank=0, world_size=1) as q:
        gens = [r.generation for r in q.history()]
    d.stop()
    print(f"step = {args.work} matmuls [512,512] + send [{args.rows}, {args.m}] fp32; "
          f"{args.steps} steps x {G} generations per phase, interleaved with a baseline")
    print(f"{'phase':<28} {'median ms':>10} {'p90 ms':>8} {'ratio':>6} {'in client ms (median, max)':>27}")
    for name, t in out.items():
        med, p90 = statistics.median(t), float(np.percentile(t, 90))
        ratio = med / statistics.median(out[bases[name]]) if name in bases else 1.0
        c = IN_CLIENT.get(name)
        cs = f"{statistics.median(c) * 1e3:>9.3f} {max(c) * 1e3:>9.1f}" if c else ""
        print(f"{name:<28} {med * 1e3:>10.2f} {p90 * 1e3:>8.2f} {ratio:>6.2f} {cs:>27}")
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"phase": name, "median_s": med, "p90_s": p90,
                                    "ratio": ratio,
                                    "in_client_median_s": statistics.median(c) if c else 0.0,
                                    "in_client_max_s": max(c) if c else 0.0, "rows": args.rows, "m": args.m}) + "\n")
    ok = sorted(gens) == list(range(3 * G))
    print(f"async generations sealed once each: {ok} ({len(gens)} reports, "
          f"{len(list((tmp / 'spool').glob('*.sigmashare')))} left in the spool)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
