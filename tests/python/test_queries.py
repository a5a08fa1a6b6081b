"""GetJob / GetReport in the Python client (issue 17 "Protocol"), through a real sigmad:
the client asks the daemon instead of re-deriving (default n_a, ListJobs scans,
full-history polling in Generation.wait, dtype guesses from error text)."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

import sigma_client
from sigma_client import Monitor, SigmaError


def rows(seed, n, m):
    return np.random.default_rng(seed).standard_normal((n, m))


class _Refused:
    """A stub method that must not be called."""

    def __init__(self, name):
        self.name = name

    def __call__(self, *a, **kw):
        raise AssertionError(f"{self.name} called")


def test_wait_reads_one_report_not_the_history(server, job):
    """A job with a long history: wait() and .report ask for generation k only."""
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=64)
    for k in range(40):
        with mon.generation(k) as g:
            g.send(rows(k, 80, 4))
    a = Monitor(server.target, job=job, rank=0, world_size=2, n_a=64)
    b = Monitor(server.target, job=job, rank=1, world_size=2, n_a=64)
    with a.generation(40) as ga:
        ga.send(rows(100, 80, 4))
    assert not ga.sealed
    with b.generation(40) as gb:
        gb.send(rows(101, 80, 4))
    assert gb.sealed
    a._stub.GetHistory = _Refused("GetHistory")
    assert ga.wait(timeout=30).generation == 40
    assert ga.report.track2 == gb.report.track2
    assert a.get_report(41) is None  # not sealed: None, not an error


def test_get_report_is_none_without_a_report(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=64)
    with mon.generation(0) as g:
        g.send(rows(1, 80, 4))
    assert mon.get_report(0).track2 == g.report.track2
    assert Monitor(server.target, job=job + "-none", rank=0, world_size=1).get_report(0) is None
    with pytest.raises(SigmaError) as e:  # a bad name is an error, not "no report"
        Monitor(server.target, job="bad name!", rank=0, world_size=1).get_report(0)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_job_info_is_the_daemons_resolution_for_m(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=1)
    assert mon.job_info() is None
    with mon.generation(0) as g:
        g.send(rows(2, 100, 8))
    mon._stub.ListJobs = _Refused("ListJobs")
    info = mon.job_info()
    assert info.config.n_a == 4096
    assert info.tap_info == (sigma_client.TapInfo(tap="default", m=8, dtype="fp64", open=()),)
    assert mon.job_info(m=300).config.n_a == 4800  # max(4096, 16 m), resolved by sigmad
    # Another tap with a larger m pre-sketches with n_a for its own m.
    wide = Monitor(server.target, job=job, tap="wide", rank=0, world_size=1)
    wide._stub.ListJobs = _Refused("ListJobs")
    with wide.generation(0) as gw:
        gw.send(rows(3, 50, 300))
    assert gw.params.n_a == 4800 and gw.report.n_a == 50


def test_no_client_side_default_n_a():
    assert not hasattr(sigma_client, "default_n_a")


def test_rank_without_rows_takes_the_open_snapshots_dtype(server, job):
    """The rank with no rows opens with the dtype of the open snapshot (GetJob), at the
    first attempt: no dtype is guessed and tried against the daemon's refusals."""
    a = Monitor(server.target, job=job, rank=0, world_size=2, n_a=64)
    b = Monitor(server.target, job=job, rank=1, world_size=2, n_a=64)
    ga = a.generation(0)
    ga.send(rows(4, 40, 8).astype(np.float16))
    ga.finish()
    real, attempts = b._ingest, []
    b._ingest = lambda msgs: (attempts.append(msgs[0].open.dtype), real(msgs))[1]
    with b.generation(0) as gb:
        pass
    assert attempts == [2]  # DTYPE_FP16, once
    assert gb.sealed and gb.report.ranks_finished == 2


def test_rank_without_rows_retries_once_when_another_rank_opened_meanwhile(server, job):
    """Between GetJob and the OpenSnapshot another rank opened the snapshot in another
    dtype: refused, and sent once more with the dtype GetJob now shows."""
    a = Monitor(server.target, job=job, rank=0, world_size=2, n_a=64)
    b = Monitor(server.target, job=job, rank=1, world_size=2, n_a=64)
    with a.generation(0) as g0:  # the tap's latest dtype becomes fp32
        g0.send(rows(5, 40, 8).astype(np.float32))
    b2 = Monitor(server.target, job=job, rank=1, world_size=2, n_a=64)
    with b2.generation(0):
        pass
    real = b._empty_share_shape
    calls = []

    def stale_first(k):
        calls.append(k)
        if len(calls) == 1:  # what GetJob said before rank 0 opened generation 1 in fp64
            shape = real(k)
            ga = a.generation(1)
            ga.send(rows(6, 40, 8))
            ga.finish()
            return shape
        return real(k)

    b._empty_share_shape = stale_first
    with b.generation(1) as gb:
        pass
    assert len(calls) == 2
    assert gb.sealed and gb.report.ranks_finished == 2
