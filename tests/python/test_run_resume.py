"""Runs of a job through a real sigmad (issue 15 item 1, docs/server.md "Runs"):
Monitor(run=..., resume=...) gives a second training its own history and baseline,
and the daemon's refusals of resume "must"/"never" reach the caller."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from sigma_client import Monitor, SigmaError


def rows(seed, n=600, m=16, scale=1.0):
    """Gaussian rows whose last m/2 dimensions are scaled by `scale` (a contraction
    that survives the l2 row normalization)."""
    x = np.random.default_rng(seed).standard_normal((n, m))
    x[:, m // 2:] *= scale
    return x.astype(np.float32)


def test_a_new_run_starts_its_own_history(server, job):
    first = Monitor(server.target, job=job, rank=0, world_size=1, n_a=256)
    for k, scale in enumerate((1.0, 0.5, 0.25)):  # run 1 contracts
        with first.generation(k) as g:
            g.send(rows(10 + k, scale=scale))
    assert first.run == "1"
    assert first.history()[-1].track2_drift < 0

    second = Monitor(server.target, job=job, rank=0, world_size=1, n_a=256, resume="never")
    with second.generation(0) as g:  # before runs: refused, the first run sealed generation 0
        g.send(rows(20))
    assert second.run == "2" and g.report.run == "2"
    assert g.report.baseline_generation == 0 and g.report.track2_drift == 0
    with second.generation(1) as g:  # continues run "2" (the daemon named it)
        g.send(rows(21))
    assert g.report.run == "2" and abs(g.report.per_dim.track2_drift) < 0.1
    assert [r.generation for r in second.history()] == [0, 1]
    assert [r.generation for r in second.history(run="1")] == [0, 1, 2]
    jobs = {j.job: j for j in second.list_jobs()}
    assert jobs[job].runs == ("1", "2") and jobs[job].run == "2"
    assert jobs[job].generations_sealed == 2


def test_resume_must_and_never_are_refused_clearly(server, job):
    def refused(run, resume, k):
        mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=256, run=run, resume=resume)
        with pytest.raises(SigmaError) as err:
            with mon.generation(k) as g:
                g.send(rows(k))
        return err.value

    err = refused("nope", "must", 0)
    assert err.code == grpc.StatusCode.NOT_FOUND and "has no run 'nope'" in err.details
    named = Monitor(server.target, job=job, rank=0, world_size=1, n_a=256, run="a", resume="never")
    with named.generation(0) as g:
        g.send(rows(2))
    assert named.run == "a"
    err = refused("a", "never", 1)
    assert err.code == grpc.StatusCode.ALREADY_EXISTS and "run 'a' has already sealed" in err.details
    with pytest.raises(ValueError, match="resume must be"):
        Monitor(server.target, job=job, rank=0, world_size=1, resume="sometimes")


def test_baseline_run_compares_against_another_run(server, job):
    base = Monitor(server.target, job=job, rank=0, world_size=1, n_a=256, run="base")
    with base.generation(0) as g:
        g.send(rows(30))
    later = Monitor(server.target, job=job, rank=0, world_size=1, n_a=256, run="later", resume="never")
    info = later.configure(baseline_run="base")
    assert info.config.baseline_run == "base"
    with later.generation(0) as g:
        g.send(rows(31, scale=0.3))
    assert g.report.baseline_run == "base" and g.report.baseline_generation == 0
    assert g.report.track2_drift < 0


def test_sigmactl_run_and_resume(server, job, tmp_path):
    import json
    import subprocess

    from test_cli import sigmactl

    def ctl(*args):
        return subprocess.run([sigmactl(), *args, "--target", server.target], capture_output=True, text=True,
                              timeout=300)

    for i in range(2):
        np.save(tmp_path / f"g{i}.npy", rows(40 + i, n=400, m=8))
    first = ctl("send", str(tmp_path / "g0.npy"), "--job", job, "--generation", "0", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["run"] == "1"
    new = ctl("send", str(tmp_path / "g1.npy"), "--job", job, "--generation", "0", "--resume", "never", "--json")
    assert new.returncode == 0, new.stderr
    assert json.loads(new.stdout)["run"] == "2"
    refused = ctl("send", str(tmp_path / "g1.npy"), "--job", job, "--generation", "1", "--run", "zz",
                  "--resume", "must")
    assert refused.returncode == 1 and "has no run 'zz'" in refused.stderr
    bad = ctl("send", str(tmp_path / "g1.npy"), "--job", job, "--generation", "1", "--resume", "maybe")
    assert bad.returncode == 2 and "--resume must be allow, must or never" in bad.stderr
    hist = ctl("report", "--job", job, "--run", "1", "--json")
    assert hist.returncode == 0, hist.stderr
    assert [r["run"] for r in json.loads(hist.stdout)["reports"]] == ["1"]
