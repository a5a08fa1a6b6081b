"""Validation 2 (issue 19): S1, S2 and a non-recursive control, over several seeds.

Settings, per seed s (generation 0 is M0's samples with seed s, shared by the three):
  s1   M_k = M0 fine-tuned on T_{k-1}                       (data-only recursion)
  s2   M_k = M_{k-1} fine-tuned on T_{k-1}                  (true recursion)
  ctl  M_k = M0 fine-tuned, same steps, on a fresh sample of n_gen *human* training
       descriptions (drawn with seed (s, k)); no recursion: every drift is training noise
       or sampling variation.
T_k = n_gen samples of M_k. Generation 1 of s1 and s2 is the same model (computed once per
seed). M0 itself is trained once (seed 0) and shared by every seed: a caveat, not a choice
of the method (gen-0 training is the most expensive step; see docs/validation.md).

Taps (both m = 128): `m0_gen` = the generation's samples T_k embedded by the fixed
generation-0 model M0 (mean-pooled final hidden state): a fixed encoder of the generated
text, standing in for MiniLM (see docs/validation.md, validation 2, for why); `model_probe`
= the fixed human probe set embedded by M_k (probe = fixed).
Each generation is streamed into one job per VARIANTS entry:
  v2-<setting>-s<seed>-<variant>, baseline = that job's generation 0, or generation 1 for
  the "-b1" variants (generation 0 is not streamed there): against generation 1, the
  control's generations 2..G differ from their baseline only by noise (every one is M0
  after the same fine-tuning), without the one-off shift of fine-tuning M0 at all.
Layout under RUNS/v2/: gen0/ (M0), seed<s>/gen0, seed<s>/gen1, seed<s>/<setting>/gen<k>;
rows.json holds every measured row (the analysis input, see calibrate.py). Resumable:
every step is checkpointed (state.Steps) and skipped when done.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import lm
from .metrics import surface_metrics
from .recursive import CFG
from .state import Steps, atomic_write_json
from .stream import exact_logdet, stream

CFG2 = dict({k: v for k, v in CFG.items() if k != "n_a"}, n_gen=2500, gen0_epochs=1.0,
            ft_epochs=2.0, generations=5, seeds=[1, 2, 3])
SETTINGS = ("s1", "s2", "ctl")
# job suffix -> (tap, n_A, probe, baseline generation). 2048 = 16 m (m = 128): the smallest n_A at which the trend
# is evaluated, hence n_gen = 2500 (f = 0.82); 512 = 4 m (low confidence: coverage only).
# The probe set has 4000 rows: 2048 = 16 m (f = 0.51), 4000 = every row (f = 1).
VARIANTS = {
    "m0": ("m0_gen", 2048, "fresh", 0),
    "m0-4m": ("m0_gen", 512, "fresh", 0),
    "probe": ("model_probe", 2048, "fixed", 0),
    "probe-f1": ("model_probe", 4000, "fixed", 0),
    "m0-b1": ("m0_gen", 2048, "fresh", 1),
    "probe-b1": ("model_probe", 2048, "fixed", 1),
    "probe-f1-b1": ("model_probe", 4000, "fixed", 1),
}
QUICK = {"n_gen": 600, "gen0_epochs": 0.2, "ft_epochs": 0.5, "generations": 2, "seeds": [1, 2]}
SETTING_SEED = {"s1": 100, "s2": 200, "ctl": 300}


def job_name(setting: str, seed: int, variant: str) -> str:
    return f"v2-{setting}-s{seed}-{variant}"


class Replicates:
    def __init__(self, runs: Path, corpus: dict, target: str, cfg: dict | None = None,
                 log=print):
        self.root = Path(runs) / "v2"
        self.root.mkdir(parents=True, exist_ok=True)
        self.steps = Steps(self.root / "steps")
        self.corpus = corpus
        self.target = target
        self.cfg = dict(CFG2, **(cfg or {}))
        self.log = log
        atomic_write_json(self.root / "config.json", dict(self.cfg, variants=VARIANTS))
        self.vocab = lm.Vocab.cached(self.root / "vocab.json", corpus["train"], self.cfg["vocab_size"])
        self.human = set(corpus["train"])
        c = self.cfg
        self.heldout = [self.vocab.encode(t, c["max_tokens"]) for t in corpus["heldout"]]
        self.probe = [self.vocab.encode(t, c["max_tokens"]) for t in corpus["probe"]]

    # ------------------------------------------------------------ layout, seeds
    def gdir(self, seed: int, setting: str, k: int) -> Path:
        if k == 0:
            return self.root / f"seed{seed}" / "gen0"
        if k == 1 and setting != "ctl":
            return self.root / f"seed{seed}" / "gen1"  # shared by s1 and s2
        return self.root / f"seed{seed}" / setting / f"gen{k}"

    def torch_seed(self, seed: int, setting: str, k: int) -> int:
        if k == 0 or (k == 1 and setting != "ctl"):
            return seed * 1000 + k
        return seed * 1000 + SETTING_SEED[setting] + k

    def _name(self, d: Path, what: str) -> str:
        return f"{d.relative_to(self.root)}/{what}"

    # ------------------------------------------------------------ models
    def model0(self) -> lm.GPT:
        d, c = self.root / "gen0", self.cfg
        name = "gen0/train"
        if not self.steps.done(name):
            d.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(c["seed"])
            m = lm.GPT(lm.LMConfig(vocab=len(self.vocab), d_model=c["d_model"],
                                   n_heads=c["n_heads"], n_layers=c["n_layers"], ctx=c["ctx"]))
            seqs = [self.vocab.encode(t, c["max_tokens"]) for t in self.corpus["train"]]
            res = lm.train(m, seqs, c["gen0_epochs"], c["gen0_lr"], batch=c["batch"],
                           seed=c["seed"], log=self.log, tag="gen0")
            res["heldout_loss"] = lm.eval_loss(m, self.heldout)
            lm.save(m, d / "model.pt")
            self.steps.mark(name, res, res["seconds"])
            self.log(f"{name}: {res}")
        return lm.load(d / "model.pt")

    def fine_tune_data(self, seed: int, setting: str, k: int) -> list[list[int]]:
        """The sequences generation k is fine-tuned on: T_{k-1} (s1, s2) or a fresh human
        sample of n_gen training descriptions (ctl)."""
        c = self.cfg
        if setting == "ctl":
            rng = np.random.default_rng(self.torch_seed(seed, setting, k))
            idx = rng.choice(len(self.corpus["train"]), size=c["n_gen"], replace=False)
            return [self.vocab.encode(self.corpus["train"][i], c["max_tokens"]) for i in idx]
        prev = self.generated(seed, setting, k - 1)
        return [[lm.BOS] + ids + [lm.EOS] for ids in prev["ids"]]

    def model(self, seed: int, setting: str, k: int) -> lm.GPT:
        if k == 0:
            return self.model0()
        d, c = self.gdir(seed, setting, k), self.cfg
        name = self._name(d, "train")
        if not self.steps.done(name):
            d.mkdir(parents=True, exist_ok=True)
            ts = self.torch_seed(seed, setting, k)
            base = self.model(seed, setting, k - 1) if (setting == "s2" and k >= 2) else self.model0()
            seqs = self.fine_tune_data(seed, setting, k)
            torch.manual_seed(ts)
            res = lm.train(base, seqs, c["ft_epochs"], c["ft_lr"], batch=c["batch"], seed=ts,
                           warmup=20, log=self.log, tag=f"seed{seed} {setting} gen{k}")
            res["heldout_loss"] = lm.eval_loss(base, self.heldout)
            lm.save(base, d / "model.pt")
            self.steps.mark(name, res, res["seconds"])
            self.log(f"{name}: {res}")
        return lm.load(d / "model.pt")

    def heldout_loss(self, seed: int, setting: str, k: int) -> float:
        name = "gen0/train" if k == 0 else self._name(self.gdir(seed, setting, k), "train")
        return self.steps.result(name)["heldout_loss"]

    # ------------------------------------------------------------ samples, embeddings
    def generated(self, seed: int, setting: str, k: int) -> dict:
        d = self.gdir(seed, setting, k)
        name = self._name(d, "generate")
        if not self.steps.done(name):
            m = self.model(seed, setting, k)
            t0 = time.time()
            ids = lm.generate(m, self.cfg["n_gen"], self.cfg["max_tokens"], top_p=self.cfg["top_p"],
                              temperature=self.cfg["temperature"],
                              seed=self.torch_seed(seed, setting, k))
            texts = [self.vocab.decode(x) for x in ids]
            d.mkdir(parents=True, exist_ok=True)
            atomic_write_json(d / "generated.json", {"ids": ids, "texts": texts})
            self.steps.mark(name, {"n": len(texts)}, time.time() - t0)
            self.log(f"{name}: {len(texts)} texts in {time.time() - t0:.0f}s; e.g. {texts[:2]}")
        return json.loads((d / "generated.json").read_text())

    def embeddings(self, seed: int, setting: str, k: int) -> dict[str, np.ndarray]:
        d = self.gdir(seed, setting, k)
        name = self._name(d, "embed")
        files = {"m0_gen": d / "emb_m0_gen.npy", "model_probe": d / "emb_model_probe.npy"}
        if not self.steps.done(name):
            g = self.generated(seed, setting, k)
            t0 = time.time()
            np.save(files["m0_gen"], lm.embed(self.model0(), [[lm.BOS] + x + [lm.EOS] for x in g["ids"]]))
            np.save(files["model_probe"], lm.embed(self.model(seed, setting, k), self.probe))
            self.steps.mark(name, {}, time.time() - t0)
            self.log(f"{name}: {time.time() - t0:.1f}s")
        return {t: np.load(p) for t, p in files.items()}

    # ------------------------------------------------------------ measure
    def measure(self, seed: int, setting: str, k: int) -> dict:
        """Streams generation k into the setting's jobs (one per variant) and returns the
        row: seed, setting, generation, surface metrics, held-out loss, reports, exact S."""
        d = self.gdir(seed, setting, k)
        emb = self.embeddings(seed, setting, k)
        g = self.generated(seed, setting, k)
        row = {"seed": seed, "setting": setting, "generation": k,
               "surface": self.steps.run(self._name(d, "surface"),
                                         lambda: surface_metrics(g["texts"], reference=self.human)),
               "heldout_loss": self.heldout_loss(seed, setting, k), "reports": {}, "exact_S": {}}
        for tap, e in emb.items():
            row["exact_S"][tap] = self.steps.run(self._name(d, f"exact/{tap}"),
                                                 lambda: exact_logdet(e))
        for variant, (tap, n_a, probe, base) in VARIANTS.items():
            if k < base:
                continue
            e = emb[tap]
            job = job_name(setting, seed, variant)
            row["reports"][variant] = self.steps.run(f"stream/{job}/gen{k}", lambda: stream(
                self.target, job, tap, k, e, np.arange(len(e), dtype=np.uint64), n_a=n_a, seed=0,
                baseline_generation=base, probe=probe))
        return row

    def order(self) -> list[tuple[int, str, int]]:
        """Seed-major, so that an interrupted run leaves whole seeds."""
        out = []
        for seed in self.cfg["seeds"]:
            out += [(seed, s, 0) for s in SETTINGS]
            out += [(seed, s, k) for k in range(1, self.cfg["generations"] + 1) for s in SETTINGS]
        return out

    def run(self) -> list[dict]:
        t0 = time.time()
        rows = []
        for seed, s, k in self.order():
            ts = time.time()
            rows.append(self.measure(seed, s, k))
            self.log(f"[{time.time() - t0:.0f}s] seed {seed} {s} gen{k} measured "
                     f"({time.time() - ts:.0f}s)")
            atomic_write_json(self.root / "rows.json", {"config": self.cfg, "rows": rows})
        return rows
