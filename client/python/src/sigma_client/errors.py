"""SigmaError: a gRPC status from the daemon (or the same kind of refusal made locally)."""
from __future__ import annotations

from typing import Optional

import grpc


class SigmaError(Exception):
    """An RPC to sigmad failed, or the client refused an input before sending it.

    .code is a grpc.StatusCode, .details the daemon's message (client-side
    refusals use INVALID_ARGUMENT and start with "client: ")."""

    def __init__(self, code: grpc.StatusCode, details: str, *, rpc: Optional[str] = None,
                 target: Optional[str] = None):
        self.code = code
        self.details = details
        self.rpc = rpc
        self.target = target
        where = f" ({rpc} on {target})" if rpc and target else ""
        super().__init__(f"{code.name}: {details}{where}")

    @classmethod
    def from_rpc_error(cls, e: grpc.RpcError, rpc: Optional[str] = None,
                       target: Optional[str] = None) -> "SigmaError":
        code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
        details = e.details() if hasattr(e, "details") else str(e)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", rpc=rpc, target=target)


def invalid(details: str) -> SigmaError:
    return SigmaError(grpc.StatusCode.INVALID_ARGUMENT, "client: " + details)
