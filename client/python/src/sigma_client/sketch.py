"""The spec's sketch hash (SIGMA-SPEC §2), vectorised in numpy uint64 arithmetic.

    splitmix64(x): z = x + 0x9E3779B97F4A7C15
                   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                   z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                   return z ^ (z >> 31)            (unsigned 64-bit, wrapping)
    priority(seed, id) = splitmix64(id ^ splitmix64(seed))

A rank keeps the bottom-n_A of (priority, id) over the distinct ids it saw; the
global bottom-n_A is contained in the union of the local ones, so each rank
sends at most n_A rows.

Also here: the rendezvous hash that picks one daemon out of a target list
(see docs/python-client.md, "Choosing a target").
"""
from __future__ import annotations

import operator
import sys
from typing import Iterable, Optional, Sequence

import numpy as np

MASK64 = (1 << 64) - 1
_C0 = np.uint64(0x9E3779B97F4A7C15)
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


def splitmix64_int(x: int) -> int:
    """Scalar splitmix64 on Python ints (reference implementation)."""
    z = (x + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 over a uint64 array (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _C0
        z = (z ^ (z >> _S30)) * _C1
        z = (z ^ (z >> _S27)) * _C2
        return z ^ (z >> _S31)


def priorities(seed: int, ids: np.ndarray) -> np.ndarray:
    """priority(seed, id) = splitmix64(id ^ splitmix64(seed)) for a uint64 array of ids."""
    s = np.uint64(splitmix64_int(int(seed) & MASK64))
    return splitmix64(np.asarray(ids, dtype=np.uint64) ^ s)


def as_ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    """Sample ids as a 1-D uint64 array (Python ints up to 2**64 - 1 accepted; a float,
    string or other non-integer id is refused, never truncated)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        if ids.dtype == np.uint64:
            return ids.reshape(-1)
        if ids.dtype.kind == "i":
            if ids.size and ids.min() < 0:
                raise ValueError("sample ids must be non-negative")
            return ids.astype(np.uint64).reshape(-1)
        if ids.dtype.kind == "u":
            return ids.astype(np.uint64).reshape(-1)
        raise ValueError(f"sample ids must be integers, got dtype {ids.dtype}")
    out = []
    for v in ids:
        try:
            v = operator.index(v)
        except TypeError:
            raise ValueError(f"sample ids must be integers, got {v!r}") from None
        if v < 0 or v > MASK64:
            raise ValueError(f"sample id {v} outside [0, 2**64)")
        out.append(v)
    return np.array(out, dtype=np.uint64)


def bottom_k(seed: int, ids: np.ndarray, k: int) -> np.ndarray:
    """Indices into `ids` of the k distinct ids of smallest (priority, id), in that order.

    Of repeated ids the first occurrence is the one kept."""
    ids = as_ids(ids)
    if ids.size == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(ids, return_index=True)
    cand = np.asarray(first, dtype=np.int64)
    pr = priorities(seed, ids[cand])
    order = np.lexsort((ids[cand], pr))[:k]
    return cand[order]


class BottomK:
    """A running bottom-k sketch of (priority, id) over the rows one rank streams.

    Rows are kept in whatever array form the caller gives (the wire dtype), so
    a bf16 row stays bf16 bytes. Of repeated ids the first one seen is kept."""

    def __init__(self, k: int, seed: int):
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = int(k)
        self.seed = int(seed) & MASK64
        self.ids = np.zeros(0, dtype=np.uint64)
        self.prio = np.zeros(0, dtype=np.uint64)
        self.rows: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.ids.size)

    def add(self, rows: np.ndarray, ids: np.ndarray) -> None:
        ids = as_ids(ids)
        if rows.shape[0] != ids.size:
            raise ValueError("one sample id per row")
        if ids.size == 0:
            if self.rows is None:
                self.rows = rows[:0].copy()
            return
        pr = priorities(self.seed, ids)
        if self.ids.size >= self.k:
            # Only candidates that can still enter: (p, id) <= the current k-th.
            p_max = self.prio[-1]
            id_max = self.ids[-1]
            keep = (pr < p_max) | ((pr == p_max) & (ids <= id_max))
            if not keep.any():
                return
            rows, ids, pr = rows[keep], ids[keep], pr[keep]
        if self.rows is None:
            all_rows, all_ids, all_pr = rows, ids, pr
        else:
            all_rows = np.concatenate([self.rows, rows], axis=0)
            all_ids = np.concatenate([self.ids, ids])
            all_pr = np.concatenate([self.prio, pr])
        _, first = np.unique(all_ids, return_index=True)  # first occurrence: kept rows win
        order = np.lexsort((all_ids[first], all_pr[first]))[: self.k]
        sel = first[order]
        self.ids = all_ids[sel]
        self.prio = all_pr[sel]
        self.rows = np.ascontiguousarray(all_rows[sel])


# ---------------------------------------------------------------- norms

# A plain float64 sum of squares is trusted when finite and >= 2**-900 (the
# daemon's kMinTrustedSumOfSquares, kernels/include/sigma/kernels/ingest_rules.h).
MIN_TRUSTED_SUM_OF_SQUARES = 2.0 ** -900


def row_squares(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a finite 2-D array: (ssq, exp) with ||x||^2 = ssq * 4**exp, without
    overflow or underflow (the daemon's RowSquares, as LAPACK's dnrm2 scales).

    Where the plain float64 sum of squares is trusted it is ssq (exp 0, bitwise the
    einsum); elsewhere the row is scaled by the power of two that brings its largest
    |x| into [0.5, 1), which is exact. So rows scaled by 1e155 or 1e-170 keep their
    direction: ssq > 0 for every nonzero row, and exp carries the scale."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        ssq = np.einsum("ij,ij->i", v, v)
    exp = np.zeros(ssq.shape, dtype=np.int32)
    redo = ~((ssq >= MIN_TRUSTED_SUM_OF_SQUARES) & (ssq <= np.finfo(np.float64).max))
    if redo.any():
        sub = v[redo]
        amax = np.abs(sub).max(axis=1) if sub.shape[1] else np.zeros(sub.shape[0])
        e = np.frexp(amax)[1].astype(np.int32)  # amax = frac * 2**e, frac in [0.5, 1); 0 -> 0
        scaled = np.ldexp(sub, -e[:, None])
        with np.errstate(under="ignore"):
            ssq[redo] = np.einsum("ij,ij->i", scaled, scaled)
        exp[redo] = e
    return ssq, exp


# ---------------------------------------------------------------- targets

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a64(data: bytes | str) -> int:
    """64-bit FNV-1a over the bytes (UTF-8 for str)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & MASK64
    return h


def rendezvous_score(target: str, job: str) -> int:
    """score(target, job) = splitmix64(fnv1a64(job) ^ splitmix64(fnv1a64(target))),
    the same function as the C++ client's RendezvousScore (client/cpp)."""
    return splitmix64_int(fnv1a64(job) ^ splitmix64_int(fnv1a64(target)))


def pick_target(targets: Sequence[str], job: str) -> str:
    """Highest rendezvous score wins; a tie goes to the smaller target (bytewise)."""
    if not targets:
        raise ValueError("no targets")
    return min(targets, key=lambda t: (-rendezvous_score(t, job), t.encode("utf-8")))


def parse_targets(target: str | Sequence[str]) -> list[str]:
    """'host:port', 'a:1,b:2' or a list of them -> a list of non-empty, de-duplicated targets."""
    if isinstance(target, str):
        parts = target.split(",")
    else:
        parts = list(target)
    out: list[str] = []
    for p in parts:
        p = str(p).strip()
        if p and p not in out:
            out.append(p)
    if not out:
        raise ValueError("no target given")
    return out
