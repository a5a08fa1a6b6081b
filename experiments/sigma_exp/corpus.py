"""Deterministic corpus builder: Debian package short descriptions (`apt-cache dumpavail`).

build_corpus(text, seed) -> list of unique descriptions, in a seeded shuffled order.
The order depends only on the set of descriptions and the seed (not on the input order).
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Iterable

import numpy as np

_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[.+_'-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


def descriptions(dumpavail_text: str) -> list[str]:
    """The first line of every `Description:` field (the package's short description)."""
    out = []
    for line in dumpavail_text.splitlines():
        if line.startswith("Description:"):
            d = _WS.sub(" ", line[len("Description:"):]).strip()
            if d:
                out.append(d)
    return out


def build_corpus(dumpavail_text: str, seed: int = 0, min_words: int = 2,
                 max_words: int = 40) -> list[str]:
    """Unique descriptions with min_words..max_words words, sorted then shuffled by seed."""
    uniq = sorted({d for d in descriptions(dumpavail_text)
                   if min_words <= len(d.split()) <= max_words})
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    return [uniq[i] for i in perm]


def split(docs: list[str], n_probe: int, n_heldout: int) -> dict[str, list[str]]:
    """probe (fixed set embedded by every model generation), heldout, train."""
    return {"probe": docs[:n_probe], "heldout": docs[n_probe:n_probe + n_heldout],
            "train": docs[n_probe + n_heldout:]}


def tokenize(text: str) -> list[str]:
    """Word-level tokens: words (with inner . + _ ' -) and single punctuation marks."""
    return _TOKEN.findall(text)


def detokenize(tokens: Iterable[str]) -> str:
    out = ""
    for t in tokens:
        if not out:
            out = t
        elif t in ",.;:!?)]}" or out[-1] in "([{":
            out += t
        else:
            out += " " + t
    return out


def digest(docs: list[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode() + b"\n")
    return h.hexdigest()


def dumpavail() -> str:
    return subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True,
                          text=True).stdout


def write_corpus(out_dir: Path, seed: int = 0, n_probe: int = 2000, n_heldout: int = 2000,
                 text: str | None = None) -> dict:
    """Builds the corpus once (resumable: an existing corpus.json is kept)."""
    out_dir = Path(out_dir)
    path = out_dir / "corpus.json"
    if path.exists():
        return json.loads(path.read_text())
    docs = build_corpus(dumpavail() if text is None else text, seed=seed)
    parts = split(docs, n_probe, n_heldout)
    obj = {"seed": seed, "source": "apt-cache dumpavail (Description: first lines)",
           "n_docs": len(docs), "sha256": digest(docs), **parts}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)
    return obj
