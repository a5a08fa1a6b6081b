"""Experiment 3: recursive training of a small word-level GPT on Debian package descriptions.

gen 0: M0 trained from scratch on the human corpus; T0 = M0's samples.
S1 (data-only):   M_k = M0 fine-tuned on T_{k-1}
S2 (true recursion): M_k = M_{k-1} fine-tuned on T_{k-1}
T_k = n_gen samples of M_k (top-p 0.95, temperature 1). Generation 1 is the same model
in both settings (M0 fine-tuned on T0), so it is computed once and shared.

Each generation k is embedded three ways and streamed as snapshot k of three jobs per
setting: <s>-minilm (tap minilm: MiniLM of T_k, m = 384), <s>-model (tap model_gen: M_k's
mean-pooled hidden state of T_k, m = d_model), <s>-probe (tap model_probe: M_k's embedding
of a fixed held-out set of human descriptions). Every step is checkpointed under
runs/recursive and skipped when done.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from . import lm
from .metrics import surface_metrics
from .state import Steps, atomic_write_json
from .stream import exact_logdet, stream

CFG = {
    "vocab_size": 4000, "d_model": 128, "n_heads": 4, "n_layers": 3, "ctx": 40,
    "max_tokens": 32, "gen0_epochs": 2.0, "gen0_lr": 1e-3, "batch": 128,
    "ft_epochs": 2.0, "ft_lr": 5e-4, "n_gen": 10000, "top_p": 0.95, "temperature": 1.0,
    "generations": 5, "n_a": {"minilm": 6144, "model_gen": 4096, "model_probe": 2048},
    "seed": 0,
}
TAPS = {"minilm": "minilm", "model_gen": "model", "model_probe": "probe"}  # tap -> job suffix


def gen_dir(root: Path, setting: str, k: int) -> Path:
    if k == 0:
        return root / "gen0"
    if k == 1:
        return root / "gen1"  # shared by S1 and S2
    return root / setting / f"gen{k}"


class Recursive:
    def __init__(self, runs: Path, corpus: dict, target: str, cfg: dict | None = None,
                 log=print):
        self.root = Path(runs) / "recursive"
        self.root.mkdir(parents=True, exist_ok=True)
        self.steps = Steps(self.root / "steps")
        self.corpus = corpus
        self.target = target
        self.cfg = dict(CFG, **(cfg or {}))
        self.log = log
        atomic_write_json(self.root / "config.json", self.cfg)
        self.vocab = lm.Vocab.cached(self.root / "vocab.json", corpus["train"], self.cfg["vocab_size"])
        self._minilm = None
        self.human = set(corpus["train"])

    @property
    def minilm(self):
        if self._minilm is None:
            from .encoder import MiniLM
            self._minilm = MiniLM()
        return self._minilm

    def _seed(self, setting: str, k: int) -> int:
        return self.cfg["seed"] * 1000 + (0 if k < 2 else (100 if setting == "s1" else 200)) + k

    # ---------------------------------------------------------------- models
    def model(self, setting: str, k: int) -> lm.GPT:
        d = gen_dir(self.root, setting, k)
        name = f"{d.relative_to(self.root)}/train"
        c = self.cfg
        if not self.steps.done(name):
            d.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(self._seed(setting, k))
            if k == 0:
                m = lm.GPT(lm.LMConfig(vocab=len(self.vocab), d_model=c["d_model"],
                                       n_heads=c["n_heads"], n_layers=c["n_layers"], ctx=c["ctx"]))
                seqs = [self.vocab.encode(t, c["max_tokens"]) for t in self.corpus["train"]]
                res = lm.train(m, seqs, c["gen0_epochs"], c["gen0_lr"], batch=c["batch"],
                               seed=self._seed(setting, k), log=self.log, tag="gen0")
            else:
                base_k = 0 if (setting == "s1" or k == 1) else k - 1
                m = self.model(setting, base_k)
                prev = self.generated(setting, k - 1)
                seqs = [[lm.BOS] + ids + [lm.EOS] for ids in prev["ids"]]
                res = lm.train(m, seqs, c["ft_epochs"], c["ft_lr"], batch=c["batch"],
                               seed=self._seed(setting, k), warmup=20, log=self.log,
                               tag=f"{setting} gen{k}")
            heldout = [self.vocab.encode(t, c["max_tokens"]) for t in self.corpus["heldout"]]
            res["heldout_loss"] = lm.eval_loss(m, heldout)
            lm.save(m, d / "model.pt")
            self.steps.mark(name, res, res["seconds"])
            self.log(f"{name}: {res}")
        return lm.load(d / "model.pt")

    # ------------------------------------------------------------ generation
    def generated(self, setting: str, k: int) -> dict:
        d = gen_dir(self.root, setting, k)
        name = f"{d.relative_to(self.root)}/generate"
        if not self.steps.done(name):
            m = self.model(setting, k)
            t0 = time.time()
            ids = lm.generate(m, self.cfg["n_gen"], self.cfg["max_tokens"], top_p=self.cfg["top_p"],
                              temperature=self.cfg["temperature"], seed=self._seed(setting, k))
            texts = [self.vocab.decode(x) for x in ids]
            atomic_write_json(d / "generated.json", {"ids": ids, "texts": texts})
            self.steps.mark(name, {"n": len(texts)}, time.time() - t0)
            self.log(f"{name}: {len(texts)} texts in {time.time() - t0:.0f}s; e.g. {texts[:3]}")
        return json.loads((d / "generated.json").read_text())

    def embeddings(self, setting: str, k: int) -> dict[str, np.ndarray]:
        d = gen_dir(self.root, setting, k)
        name = f"{d.relative_to(self.root)}/embed"
        files = {t: d / f"emb_{t}.npy" for t in TAPS}
        if not self.steps.done(name):
            g = self.generated(setting, k)
            m = self.model(setting, k)
            t0 = time.time()
            np.save(files["minilm"], self.minilm.encode(g["texts"]))
            t1 = time.time()
            np.save(files["model_gen"], lm.embed(m, [[lm.BOS] + x + [lm.EOS] for x in g["ids"]]))
            probe = [self.vocab.encode(t, self.cfg["max_tokens"]) for t in self.corpus["probe"]]
            np.save(files["model_probe"], lm.embed(m, probe))
            self.steps.mark(name, {"minilm_seconds": t1 - t0, "model_seconds": time.time() - t1},
                            time.time() - t0)
            self.log(f"{name}: MiniLM {t1 - t0:.0f}s, model {time.time() - t1:.1f}s")
        return {t: np.load(p) for t, p in files.items()}

    # ------------------------------------------------------------- measure
    def measure(self, setting: str, k: int) -> dict:
        """Streams generation k of `setting` into sigmad (3 jobs), computes the exact
        log-det and the surface metrics; returns the row of the per-generation table."""
        d = gen_dir(self.root, setting, k)
        emb = self.embeddings(setting, k)
        g = self.generated(setting, k)
        row = {"setting": setting, "generation": k,
               "surface": surface_metrics(g["texts"], reference=self.human),
               "taps": {}}
        for tap, suffix in TAPS.items():
            job = f"{setting}-{suffix}"
            e = emb[tap]
            ids = np.arange(len(e), dtype=np.uint64)
            rep = self.steps.run(f"stream/{job}/gen{k}", lambda: stream(
                self.target, job, tap, k, e, ids, n_a=self.cfg["n_a"][tap], seed=0,
                baseline_generation=0))
            exact = self.steps.run(f"{d.relative_to(self.root)}/exact/{tap}",
                                   lambda: exact_logdet(e))
            row["taps"][tap] = {"report": rep, "exact_S": exact}
        return row

    def run(self) -> dict:
        G = self.cfg["generations"]
        t0 = time.time()
        rows = {"s1": [], "s2": []}
        order = [(s, 0) for s in ("s1", "s2")] + [(s, 1) for s in ("s1", "s2")]
        order += [(s, k) for k in range(2, G + 1) for s in ("s1", "s2")]
        for s, k in order:
            ts = time.time()
            rows[s].append(self.measure(s, k))
            self.log(f"[{time.time() - t0:.0f}s] {s} gen{k} measured ({time.time() - ts:.0f}s)")
            atomic_write_json(self.root / "results.json", {"config": self.cfg, "rows": rows})
        return {"config": self.cfg, "rows": rows}
