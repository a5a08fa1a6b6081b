"""Loads the generated stubs, generating them first when they are missing or stale."""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()
_loaded = None


def _import():
    pb2 = importlib.import_module("sigma_client._proto.sigma_pb2")
    grpc_mod = importlib.import_module("sigma_client._proto.sigma_pb2_grpc")
    return pb2, grpc_mod


def _forget():
    for name in list(sys.modules):
        if name.startswith("sigma_client._proto"):
            del sys.modules[name]
    importlib.invalidate_caches()


def load():
    """(sigma_pb2, sigma_pb2_grpc)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        from . import _generate

        try:
            if _generate.stale():
                raise ImportError("stubs generated from another sigma.proto than the source's")
            _loaded = _import()
            return _loaded
        except Exception as first:  # missing, stale, or a gencode/runtime version mismatch
            err = first
        _forget()
        out = _generate.DEFAULT_OUT
        try:
            if out.exists() and not os.access(out, os.W_OK):
                raise PermissionError(out)
            if not out.exists() and not os.access(out.parent, os.W_OK):
                raise PermissionError(out.parent)
            _generate.generate(out)
        except ImportError as e:
            raise ImportError(
                "sigma_client: the gRPC stubs are missing and grpcio-tools is not installed "
                f"to generate them ({err!r}); pip install grpcio-tools") from e
        except PermissionError:
            # Read-only install: generate into a cache directory and put it on the package path.
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sigma_client"
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError:
                cache = Path(tempfile.gettempdir()) / f"sigma_client-{os.getuid()}"
            _generate.generate(cache / "_proto")
            import sigma_client

            sigma_client.__path__.insert(0, str(cache))
        _forget()
        _loaded = _import()
        return _loaded
