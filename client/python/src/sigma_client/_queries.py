"""GetJob / GetReport answers as the Monitor uses them (issue 17 "Protocol"): NOT_FOUND as
None, and the m and dtype of a share without rows from the daemon's JobInfo."""
from __future__ import annotations

from typing import Any, Callable, Optional

import grpc

from .errors import SigmaError
from .tensors import DTYPE_NAME


def or_none(call: Callable[[], Any]) -> Any:
    """call(), or None when the daemon answers NOT_FOUND (an unknown job, no such report)."""
    try:
        return call()
    except SigmaError as e:
        if e.code == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def empty_share_shape(info, tap: str, k: int) -> tuple[int, Optional[str]]:
    """(m, dtype) of a share of generation k of `tap` without rows, from GetJob's JobInfo
    (None: unknown job): the tap's m (else the job's), the dtype of the open snapshot k,
    else the tap's latest; dtype None when the daemon knows none (nothing opened on the
    tap since it started; it does not store dtypes)."""
    if info is None:
        return 0, None
    t = next((t for t in info.tap_info if t.tap == tap), None)
    if t is None:
        return info.m, None
    dtype = next((o.dtype for o in t.open if o.generation == k), t.dtype)
    return t.m or info.m, DTYPE_NAME.get(dtype)
