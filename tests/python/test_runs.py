"""Run identity through a real sigmad (issue 15 items 1 and 3): a sealed generation
answers only the data it sealed, and a process that cannot tell its world size says so."""
from __future__ import annotations

import warnings

import grpc
import numpy as np
import pytest

from sigma_client import Monitor, SigmaError, WorldSizeWarning


def rows(seed, n=600, m=16):
    return np.random.default_rng(seed).standard_normal((n, m)).astype(np.float32)


@pytest.fixture
def no_world_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)


def test_unknown_world_size_is_said_and_a_second_rank0_is_refused(server, job, no_world_env):
    """Two processes without RANK/WORLD_SIZE both become rank 0 of 1: each Monitor warns,
    and the second one's share is refused with ALREADY_EXISTS instead of being dropped."""
    with pytest.warns(WorldSizeWarning, match="create the Monitor after torch.distributed.init_process_group"):
        first = Monitor(server.target, job=job, n_a=256)
    with pytest.warns(WorldSizeWarning):
        second = Monitor(server.target, job=job, n_a=256)
    assert (first.rank, first.world_size, first.world_source) == (0, 1, "default")
    with first.generation(0) as g:
        g.send(rows(1))
    assert g.sealed
    with pytest.raises(SigmaError) as err:
        with second.generation(0) as g2:
            g2.send(rows(2))
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert f"job '{job}' tap 'default' generation 0 was sealed with rank 0's share" in err.value.details
    hist = first.history()
    assert len(hist) == 1 and hist[0].n == 600


def test_known_world_size_does_not_warn(server, job, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", WorldSizeWarning)
        assert Monitor(server.target, job=job).world_source == "env"
        monkeypatch.delenv("RANK")
        monkeypatch.delenv("WORLD_SIZE")
        assert Monitor(server.target, job=job, rank=0, world_size=1).world_source == "argument"


def test_retry_of_the_same_share_gets_the_stored_report(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=256)
    x = rows(3)
    with mon.generation(0) as g:
        g.send(x)
    assert [(d.rank, d.rows, d.finished) for d in g.report.shares] == [(0, 256, True)]  # pre-sketched
    assert len(g.report.data_digest) == 16
    again = mon._send_share(g)  # the same share again, as a retry would
    assert again.sealed and again.report.track2 == g.report.track2
