"""Monitor(token=...) against a real sigmad started with --tokens."""
from __future__ import annotations

import hashlib
import os

import grpc
import numpy as np
import pytest

from sigma_client import Monitor
from sigma_client.daemon import start_sigmad
from sigma_client.errors import SigmaError

WRITE = "py-write-token-0123456789"
READ = "py-read-token-0123456789"


@pytest.fixture(scope="module")
def authd(tmp_path_factory):
    binary = os.environ.get("SIGMAD")
    if not binary:
        pytest.skip("SIGMAD is not set")
    work = tmp_path_factory.mktemp("authd")
    tokens = work / "tokens.yaml"
    tokens.write_text(
        f"- token_sha256: {hashlib.sha256(WRITE.encode()).hexdigest()}\n"
        "  role: write\n  job_prefixes: [py.]\n"
        f"- token_sha256: {hashlib.sha256(READ.encode()).hexdigest()}\n"
        "  role: read\n  job_prefixes: [py.]\n")
    d = start_sigmad(binary, work, extra_args=["--backend", "cpu", "--tokens", str(tokens)])
    yield d
    d.stop()
    assert WRITE not in d.log() and READ not in d.log()


def rows(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((64, 8)).astype(np.float32)


def test_token_roles_and_prefixes(authd, monkeypatch):
    monkeypatch.delenv("SIGMA_TOKEN", raising=False)
    with pytest.raises(SigmaError) as e:
        Monitor(authd.target, job="py.a", rank=0, world_size=1).history()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(SigmaError) as e:
        Monitor(authd.target, job="py.a", rank=0, world_size=1, token="wrong-token").history()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED

    w = Monitor(authd.target, job="py.a", rank=0, world_size=1, n_a=32, token=WRITE)
    with w.generation(0) as gen:
        gen.send(rows(1))
    assert gen.sealed and gen.report is not None
    assert [r.generation for r in w.history()] == [0]

    outside = Monitor(authd.target, job="other.a", rank=0, world_size=1, token=WRITE)
    with pytest.raises(SigmaError) as e:
        outside.history()
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED

    r = Monitor(authd.target, job="py.a", rank=0, world_size=1, token=READ)
    assert [x.generation for x in r.history()] == [0]
    assert [j.job for j in r.list_jobs()] == ["py.a"]
    with pytest.raises(SigmaError) as e:
        r.close_generation(0)
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_token_from_environment(authd, monkeypatch):
    monkeypatch.setenv("SIGMA_TOKEN", READ + "\n")
    assert [x.generation for x in Monitor(authd.target, job="py.a", rank=0, world_size=1).history()] == [0]


@pytest.mark.parametrize("bad", ["has space", "line\nbreak", "caf\u00e9"])
def test_unusable_token_is_refused_at_once(bad):
    """As the C++ client's Create: a token gRPC cannot send as a header is a ValueError
    at construction, not an INTERNAL error on the first call."""
    with pytest.raises(ValueError, match="token"):
        Monitor("127.0.0.1:1", job="py.x", rank=0, world_size=1, token=bad)
