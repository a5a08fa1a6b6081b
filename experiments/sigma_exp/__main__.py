"""python -m sigma_exp [all|ablation|recursive|v2|report] [--runs DIR] [--sigmad BIN] [--quick]

Builds the corpus, starts its own sigmad (CPU backend, free ports, history in
RUNS/sigmad/sigma.db), runs experiments 1+2 (ablation) and 3+4 (recursive), writes
RUNS/*.json and RUNS/results.md; `v2` runs validation 2 (replicates.py: S1, S2 and the
control over seeds; RUNS/v2/results.md). Every step is checkpointed: rerun to resume."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import corpus as corpus_mod
from . import measure, recursive, replicates, report, report_v2
from .state import Steps, atomic_write_json
from .stream import start_daemon


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="all",
                    choices=["all", "ablation", "recursive", "v2", "report"])
    ap.add_argument("--runs", default=str(Path(__file__).resolve().parents[1] / "runs"))
    ap.add_argument("--sigmad", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generations", type=int, default=None,
                    help="recursive generations (default 5); raising it later resumes")
    ap.add_argument("--seeds", default=None,
                    help="v2: comma-separated seeds (default 1,2,3); adding seeds later resumes")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes (smoke test: minutes, results meaningless)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def log(msg):
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    steps = Steps(runs / "steps")
    corpus = corpus_mod.write_corpus(runs, seed=0, n_probe=4000, n_heldout=2000)
    log(f"corpus: {corpus['n_docs']} unique descriptions, sha256 {corpus['sha256'][:16]}; "
        f"train {len(corpus['train'])}, probe {len(corpus['probe'])}, heldout {len(corpus['heldout'])}")
    machine = {"platform": platform.platform(), "python": sys.version.split()[0],
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpus": os.cpu_count(),
               "cpu_model": next((l.split(":", 1)[1].strip() for l in
                                  open("/proc/cpuinfo") if l.startswith("model name")), "?")}
    atomic_write_json(runs / "machine.json", machine)
    cfg = None
    if a.quick:
        cfg = {"n_gen": 800, "gen0_epochs": 0.2, "ft_epochs": 0.5, "generations": 2,
               "n_a": {"minilm": 600, "model_gen": 512, "model_probe": 512}}

    if a.generations is not None:
        cfg = dict(cfg or {}, generations=a.generations)
    if a.what != "report":
        d = start_daemon(runs / "sigmad", a.sigmad)
        log(f"sigmad pid {d.pid} at {d.target}, metrics {d.metrics_url}")
        try:
            if a.what in ("all", "ablation"):
                docs = corpus["probe"] + corpus["heldout"] + corpus["train"]
                if a.quick:
                    docs = docs[:3000]
                emb = measure.corpus_embeddings(runs, docs, steps, log=log)
                t0 = time.time()
                measure.run(runs, d.target, emb, steps, log=log,
                            factors=(1, 4) if a.quick else (1, 4, 16, 64),
                            seeds=(1, 2, 3) if a.quick else (1, 2, 3, 4, 5, 6, 7, 8))
                log(f"ablation done ({time.time() - t0:.0f}s)")
            if a.what in ("all", "recursive"):
                rec = recursive.Recursive(runs, corpus, d.target, cfg=cfg, log=log)
                rec.run()
                log("recursive done")
            if a.what == "v2":
                run_v2(a, runs, corpus, d.target, log)
        finally:
            d.stop()
    md = report.write(runs)
    md2 = report_v2.write(runs)
    if md2:
        log(f"wrote {md2}")
    timing = {"this_invocation_seconds": time.time() - t_start,
              "steps_seconds": report.step_seconds(runs)}
    atomic_write_json(runs / "timing.json", timing)
    log(f"wrote {md}; this invocation {time.time() - t_start:.0f}s")
    return 0


def run_v2(a, runs: Path, corpus: dict, target: str, log) -> None:
    cfg = dict(replicates.QUICK) if a.quick else {}
    if a.generations is not None:
        cfg["generations"] = a.generations
    if a.seeds:
        cfg["seeds"] = [int(x) for x in a.seeds.split(",")]
    replicates.Replicates(runs, corpus, target, cfg=cfg, log=log).run()
    log("v2 done")


if __name__ == "__main__":
    sys.exit(main())
