"""Surface metrics of a generation's text (whitespace/punctuation word tokens).

distinct_n  = distinct n-grams / total n-grams, pooled over all texts (n-grams do not
              cross text boundaries); 0 when there are none.
rep_rate    = fraction of texts that repeat an earlier text of the same generation exactly.
self_rep    = fraction of tokens equal to an earlier token of the same text.
mean_len    = mean number of tokens per text.
copy_rate   = fraction of texts found verbatim in a reference set (the human corpus).
"""
from __future__ import annotations

from typing import Iterable, Optional

from .corpus import tokenize


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: list[list[str]], n: int) -> float:
    total, seen = 0, set()
    for toks in token_lists:
        g = ngrams(toks, n)
        total += len(g)
        seen.update(g)
    return len(seen) / total if total else 0.0


def rep_rate(texts: list[str]) -> float:
    if not texts:
        return 0.0
    return 1.0 - len(set(texts)) / len(texts)


def self_rep(token_lists: list[list[str]]) -> float:
    total = rep = 0
    for toks in token_lists:
        seen = set()
        for t in toks:
            rep += t in seen
            seen.add(t)
        total += len(toks)
    return rep / total if total else 0.0


def surface_metrics(texts: list[str], reference: Optional[Iterable[str]] = None) -> dict:
    toks = [tokenize(t) for t in texts]
    out = {
        "n_texts": len(texts),
        "distinct_1": distinct_n(toks, 1),
        "distinct_2": distinct_n(toks, 2),
        "rep_rate": rep_rate(texts),
        "self_rep": self_rep(toks),
        "mean_len": (sum(len(t) for t in toks) / len(toks)) if toks else 0.0,
    }
    if reference is not None:
        ref = set(reference)
        out["copy_rate"] = (sum(t in ref for t in texts) / len(texts)) if texts else 0.0
    return out


def first_move(values: list[float], rel: float = 0.10) -> Optional[int]:
    """Index of the first generation whose value differs from generation 0 by >= rel
    (relative); None if it never does."""
    if not values:
        return None
    base = values[0]
    for k, v in enumerate(values):
        if k and abs(v - base) >= rel * max(abs(base), 1e-12):
            return k
    return None
