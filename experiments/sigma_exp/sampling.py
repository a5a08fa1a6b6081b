"""Nucleus (top-p) filtering in numpy form (the torch sampler in lm.py does the same)."""
from __future__ import annotations

import numpy as np


def top_p_mask(probs: np.ndarray, p: float = 0.95) -> np.ndarray:
    """Boolean mask over the last axis: the smallest set of highest-probability tokens
    whose mass reaches p (a token is kept when the mass strictly before it is < p;
    ties broken by index, the top token always kept)."""
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sorted_p, axis=-1) - sorted_p
    keep_sorted = before < p
    keep_sorted[..., 0] = True
    mask = np.zeros_like(keep_sorted)
    np.put_along_axis(mask, order, keep_sorted, axis=-1)
    return mask


def top_p_probs(probs: np.ndarray, p: float = 0.95) -> np.ndarray:
    """Renormalised distribution after the top-p filter."""
    probs = np.asarray(probs, dtype=np.float64)
    q = np.where(top_p_mask(probs, p), probs, 0.0)
    return q / q.sum(axis=-1, keepdims=True)
