"""Starts a local sigmad on free ports (for tests, the demo and notebooks).

    with start_sigmad("build/sigmad", "var/demo") as d:
        mon = Monitor(d.target, job="x")
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence


def find_sigmad(explicit: Optional[str] = None) -> Optional[str]:
    """explicit, else $SIGMAD, else build/sigmad or build/*/sigmad or build/*/server/sigmad
    under the current directory, else sigmad on PATH."""
    for c in (explicit, os.environ.get("SIGMAD")):
        if c:
            return c
    cands = [Path("build/sigmad"), Path("build/server/sigmad")]
    cands += sorted(Path("build").glob("*/sigmad")) + sorted(Path("build").glob("*/server/sigmad"))
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("sigmad")


class Daemon:
    def __init__(self, proc: subprocess.Popen, info: dict, workdir: Path, log_path: Path):
        self.proc = proc
        self.grpc_port = int(info["grpc_port"])
        self.metrics_port = int(info["metrics_port"])
        self.pid = int(info.get("pid", proc.pid))
        self.workdir = workdir
        self.log_path = log_path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_sigmad(binary: str, workdir: str | os.PathLike, db_name: str = "sigma.db",
                 extra_args: Sequence[str] = (), timeout: float = 30.0,
                 log_name: str = "sigmad.log", listen: str = "127.0.0.1:0") -> Daemon:
    """Runs `sigmad --listen LISTEN --metrics-listen 127.0.0.1:0 --db DB --port-file F`
    and waits for the port file. listen: 127.0.0.1:0 picks a free port; a restart on the
    same database can pass the previous daemon's target. Raises RuntimeError (with the
    daemon's log) on failure."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / "sigmad.ports.json"
    if port_file.exists():
        port_file.unlink()
    log_path = workdir / log_name
    log = open(log_path, "ab")
    cmd = [str(binary), "--listen", listen, "--metrics-listen", "127.0.0.1:0",
           "--db", str(workdir / db_name), "--port-file", str(port_file), *extra_args]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sigmad exited with {proc.returncode}: {' '.join(cmd)}\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
        try:
            info = json.loads(port_file.read_text())
            if info.get("grpc_port") and info.get("metrics_port") is not None:
                return Daemon(proc, info, workdir, log_path)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"sigmad did not write {port_file} within {timeout} s\n"
                       f"{log_path.read_text(errors='replace')[-4000:]}")
