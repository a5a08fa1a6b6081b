"""Fixtures: the shared test vectors and a real sigmad (from $SIGMAD, which
`make test` always sets; tests that need the daemon skip with the reason only
when it is unset)."""
from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SRC = REPO / "client" / "python" / "src"
# Test the working tree's package, not a copy installed earlier.
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(HERE))

from sigma_client.daemon import start_sigmad  # noqa: E402


def shared_testvectors() -> Path:
    cands = []
    env = os.environ.get("SIGMA_SHARED_DIR")
    if env:
        cands += [Path(env) / "testvectors", Path(env)]
    cands += [REPO / "shared" / "testvectors", REPO.parent / "shared" / "testvectors",
              Path("/work/shared/testvectors")]
    for c in cands:
        if (c / "sketch.json").is_file():
            return c
    raise FileNotFoundError("shared test vectors not found: set SIGMA_SHARED_DIR "
                            f"(looked in {', '.join(map(str, cands))})")


@pytest.fixture(scope="session")
def testvectors() -> Path:
    return shared_testvectors()


@pytest.fixture(scope="session")
def sigmad(tmp_path_factory):
    binary = os.environ.get("SIGMAD")
    if not binary:
        pytest.skip("SIGMAD is not set: export SIGMAD=/path/to/sigmad to test against the real daemon")
    d = start_sigmad(binary, tmp_path_factory.mktemp("sigmad"))
    yield d
    alive = d.proc.poll() is None
    rc = d.stop()
    assert alive, f"sigmad died during the tests (rc {d.proc.returncode}):\n{d.log()[-3000:]}"
    del rc


@pytest.fixture
def server(sigmad):
    """The daemon under test: always the real sigmad (no fakes)."""
    return sigmad


@pytest.fixture
def job(request) -> str:
    name = request.node.name.replace("[", "-").replace("]", "")
    safe = "".join(c if c.isalnum() or c in "_.:-" else "_" for c in name)
    return f"{safe[:80]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pythonpath_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class CuttingProxy:
    """A TCP proxy whose first `cuts` connections are closed after `cut_after` bytes
    from the client: the client sees the stream fail mid-share (UNAVAILABLE)."""

    def __init__(self, upstream: str, cut_after: int, cuts: int = 1):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_after, self.cuts = cut_after, cuts
        self.connections = 0
        self.cut_done = 0
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.cut_after if self.cut_done < self.cuts else None
            if cut is not None:
                self.cut_done += 1
            u = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(c, u, cut), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, None), daemon=True).start()

    @staticmethod
    def _pump(src, dst, cut):
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if cut is not None and sent + len(data) >= cut:
                    dst.sendall(data[: max(0, cut - sent)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self._stop = True
        self.lsock.close()


@pytest.fixture
def cutting_proxy():
    made = []

    def make(upstream, cut_after, cuts=1):
        p = CuttingProxy(upstream, cut_after, cuts)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
