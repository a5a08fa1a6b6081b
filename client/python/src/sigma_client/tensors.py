"""Turns a [rows, m] torch tensor or numpy array into the wire layout without
changing its precision: fp32, fp16 and fp64 as they are, bf16 as its 16-bit
patterns (no fp32 round trip). Internally a bf16 block is a uint16 array."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .errors import invalid
from .sketch import row_squares

FP32, FP16, BF16, FP64 = "fp32", "fp16", "bf16", "fp64"
DTYPE_ENUM = {FP32: 1, FP16: 2, BF16: 3, FP64: 4}
DTYPE_NAME = {v: k for k, v in DTYPE_ENUM.items()}  # wire enum -> name (0: none)
_NP = {FP32: np.dtype("<f4"), FP16: np.dtype("<f2"), BF16: np.dtype("<u2"), FP64: np.dtype("<f8")}


def _from_torch(x: Any):
    import torch

    t = x.detach()
    if t.is_neg() or t.is_conj():  # lazy views that .numpy() refuses
        t = t.resolve_neg().resolve_conj()
    if t.dtype == torch.bfloat16:
        a = t.contiguous().view(torch.int16).cpu().numpy().view(np.uint16)
        return a, BF16
    kinds = {torch.float32: FP32, torch.float16: FP16, torch.float64: FP64}
    if t.dtype not in kinds:
        raise invalid(f"unsupported tensor dtype {t.dtype} (fp32, fp16, bf16 or fp64)")
    return t.contiguous().cpu().numpy(), kinds[t.dtype]


def to_wire(x: Any) -> tuple[np.ndarray, str]:
    """(C-contiguous little-endian array, dtype name); a bf16 array is uint16."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        arr, kind = _from_torch(x)
    else:
        arr = np.asarray(x)
        name = arr.dtype.name
        if name == "bfloat16":  # ml_dtypes.bfloat16
            arr, kind = arr.view(np.uint16), BF16
        elif arr.dtype.kind == "f" and arr.dtype.itemsize == 4:
            kind = FP32
        elif arr.dtype.kind == "f" and arr.dtype.itemsize == 2:
            kind = FP16
        elif arr.dtype.kind == "f" and arr.dtype.itemsize == 8:
            kind = FP64
        else:
            raise invalid(f"unsupported array dtype {arr.dtype} (float32, float16, float64 "
                          "or ml_dtypes.bfloat16)")
    if arr.ndim != 2:
        raise invalid(f"embeddings must be [rows, m], got shape {tuple(arr.shape)}")
    if arr.shape[1] < 1:
        raise invalid("embedding dimension m must be >= 1")
    arr = np.ascontiguousarray(arr, dtype=_NP[kind])
    return arr, kind


def to_float(arr: np.ndarray, kind: str) -> np.ndarray:
    """The values as float32/float64 (exact for every wire dtype)."""
    if kind == BF16:
        return (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if kind == FP16:
        return arr.astype(np.float32)
    return arr


def row_energies(values: np.ndarray, preprocessing: str) -> np.ndarray:
    """||x_j||^2 after preprocessing: l2 -> 1 for every nonzero row (0 for a zero row); none -> raw."""
    ssq, exp = row_squares(values)  # overflow/underflow-safe (sketch.py)
    if preprocessing == "l2":
        return (ssq > 0).astype(np.float64)
    with np.errstate(over="ignore"):
        return np.ldexp(ssq, 2 * exp)


def row_refusal(values: np.ndarray, energies: np.ndarray, preprocessing: str, first_row: int = 0) -> str:
    """sigmad's refusal of a row (ingest_rules.h RowRefusal), or "" when every row passes.

    l2: an all-zero row cannot be normalised, and a norm beyond float64 cannot be
    represented; none: a squared norm beyond float64. `energies` from row_energies;
    rows are numbered from `first_row` (their position in the share)."""
    if preprocessing == "l2":
        ssq, exp = row_squares(values)
        zero = np.flatnonzero(ssq == 0)
        if zero.size:
            return f"row {first_row + int(zero[0])} has norm 0: an all-zero row cannot be l2-normalised"
        with np.errstate(over="ignore"):
            big = np.flatnonzero(~np.isfinite(np.ldexp(np.sqrt(ssq), exp)))
        if big.size:
            return (f"row {first_row + int(big[0])} has a norm above the float64 range (1.8e308): "
                    "scale the embeddings down")
        return ""
    big = np.flatnonzero(~np.isfinite(energies))
    if big.size:
        return (f"row {first_row + int(big[0])} has a squared norm above the float64 range (1.8e308; "
                "preprocessing none uses ||x||^2): scale the embeddings down")
    return ""
