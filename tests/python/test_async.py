"""Monitor(mode="async"), on_error and the offline spool against a real sigmad that is
stopped and restarted (no timing here: the step-time overhead is measured by
bench/python/async_overhead.py)."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from sigma_client import Monitor, SigmaError
from sigma_client.daemon import start_sigmad
from sigma_client.generation import NotSealedError
from sigma_client.spool import Spool

M, ROWS, STEPS = 16, 64, 4


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sigmad_binary():
    b = os.environ.get("SIGMAD")
    if not b:
        pytest.skip("SIGMAD is not set")
    return b


def train(mon, gens, rng_seed=0):
    """A toy training loop: STEPS batches of ROWS embeddings per generation."""
    rng = np.random.default_rng(rng_seed)
    for g in gens:
        with mon.generation(g) as gen:
            for _ in range(STEPS):
                gen.send(rng.standard_normal((ROWS, M)).astype(np.float32))


def reports_by_generation(target, job):
    with Monitor(target, job=job, rank=0, world_size=1) as mon:
        hist = mon.history()
    out = {}
    for r in hist:
        out.setdefault(r.generation, []).append(r)
    return out


def test_async_daemon_stopped_then_restarted_seals_every_generation_once(tmp_path, job):
    binary = sigmad_binary()
    d = start_sigmad(binary, tmp_path / "d")
    target, spool = d.target, tmp_path / "spool"
    mon = Monitor(target, job=job, rank=0, world_size=1, mode="async", spool_dir=spool,
                  retry_down_after=0.5)
    try:
        train(mon, range(0, 4))
        assert mon.flush(60)
        d.stop()
        train(mon, range(4, 8), rng_seed=1)       # never raises: the shares go to the spool
        assert mon.flush(60)
        spooled = Spool(spool).pending(job)
        assert [s.generation for s in spooled] == [4, 5, 6, 7]
        d = start_sigmad(binary, tmp_path / "d", listen=target)
        train(mon, range(8, 12), rng_seed=2)      # the spool is sent first, oldest first
        mon.close(120)
    finally:
        got = reports_by_generation(target, job) if d.proc.poll() is None else {}
        d.stop()
    assert sorted(got) == list(range(12))
    for g, reps in got.items():
        assert len(reps) == 1, f"generation {g} sealed {len(reps)} times"
        assert reps[0].n == STEPS * ROWS
    assert not Spool(spool).pending(), "every spooled share was sent and deleted"
    assert mon.dropped_rows == 0


def test_sync_command_sends_a_spool_exactly_once(tmp_path, job, pythonpath_env):
    binary = sigmad_binary()
    target, spool = f"127.0.0.1:{free_port()}", tmp_path / "spool"
    mon = Monitor(target, job=job, rank=0, world_size=1, mode="async", spool_dir=spool,
                  max_retries=1, backoff=0.01)
    train(mon, range(3))
    mon.close(60)                                  # nobody listens: all three are spooled
    files = [s.path for s in Spool(spool).pending()]
    assert len(files) == 3
    keep = tmp_path / "copy"
    shutil.copy(files[1], keep)
    d = start_sigmad(binary, tmp_path / "d", listen=target)
    try:
        cmd = [sys.executable, "-m", "sigma_client", "sync", str(spool)]
        out = subprocess.run(cmd, env=pythonpath_env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "sent 3 shares" in out.stdout
        again = subprocess.run(cmd, env=pythonpath_env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "sent 0 shares" in again.stdout
        # A share sent but not deleted (a crash in between) is answered with the stored report.
        shutil.copy(keep, files[1])
        third = subprocess.run(cmd, env=pythonpath_env, capture_output=True, text=True, timeout=120)
        assert third.returncode == 0 and "sent 1 shares" in third.stdout
        got = reports_by_generation(target, job)
    finally:
        d.stop()
    assert sorted(got) == [0, 1, 2]
    assert all(len(v) == 1 and v[0].n == STEPS * ROWS for v in got.values())


def test_async_errors_raise_at_the_next_call_or_close(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=1, mode="async", spool_dir=False)
    gen = mon.generation(0)
    bad = np.ones((4, M), np.float32)
    bad[2, 3] = np.nan
    gen.send(bad)                                  # refused on the worker, not here
    mon._async.flush(30)
    with pytest.raises(SigmaError, match="NaN"):
        gen.send(np.ones((4, M), np.float32))     # the error comes back here; nothing sent
    gen.send(np.ones((4, M), np.float32))
    gen.finish()
    assert gen.wait(60).n == 4                     # the NaN block was dropped, the rest sealed
    # A share the daemon refuses (m differs from the job's) is raised at close().
    with mon.generation(1) as g1:
        g1.send(np.ones((4, M + 1), np.float32))
    with pytest.raises(SigmaError, match="differs"):
        mon.close(60)


def test_async_warn_logs_and_goes_on(server, job, caplog):
    mon = Monitor(server.target, job=job, rank=0, world_size=1, mode="async", spool_dir=False,
                  on_error="warn")
    with caplog.at_level(logging.WARNING, logger="sigma_client"):
        with mon.generation(0) as gen:
            gen.send(np.ones((4, M), np.float32))
        with mon.generation(1) as g1:
            g1.send(np.ones((4, M + 1), np.float32))
        mon.close(60)
    assert gen.wait(30).n == 4
    assert any("differs" in r.getMessage() for r in caplog.records)


def test_async_send_does_not_wait_for_a_down_daemon(tmp_path, job):
    """With nobody listening, send()/finish() return and the shares end in the spool;
    gen.report says why there is no report instead of returning None."""
    target = f"127.0.0.1:{free_port()}"
    mon = Monitor(target, job=job, rank=0, world_size=1, mode="async",
                  spool_dir=tmp_path / "spool", max_retries=1, backoff=0.01)
    with mon.generation(0) as gen:
        gen.send(np.ones((8, M), np.float32))
    with pytest.raises(NotSealedError, match="wait"):
        gen.report
    mon.close(60)
    assert gen.spooled and len(Spool(tmp_path / "spool").pending()) == 1
    with pytest.raises(NotSealedError, match="spool"):
        gen.report


def test_async_queue_full_drops_blocks_after_block_timeout(tmp_path, job):
    """A queue that stays full drops the block after block_timeout and counts it."""
    target = f"127.0.0.1:{free_port()}"
    mon = Monitor(target, job=job, rank=0, world_size=1, mode="async", on_error="warn",
                  spool_dir=tmp_path / "spool", queue_bytes=1, block_timeout=0.0,
                  max_retries=1, backoff=0.01)
    gate = __import__("threading").Event()
    real = mon._sketch_params
    mon._sketch_params = lambda m: (gate.wait(30), real(m))[1]   # hold the worker
    gen = mon.generation(0)
    gen.send(np.ones((8, M), np.float32))          # queued, then held by the worker
    gen.send(np.ones((8, M), np.float32))          # queue full: dropped at once
    gen.send(np.ones((8, M), np.float32))          # again
    assert mon.dropped_rows == 16
    gate.set()
    mon.close(60)
