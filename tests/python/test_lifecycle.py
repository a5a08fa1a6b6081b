"""Job lifecycle (issue 15 item 4) from the user's side, against the real sigmad:
Monitor.finish(), and sigmactl configure --create / snapshots / finish-job / delete-job."""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from sigma_client import Monitor, SigmaError
from test_cli import run, sigmactl


def _rows(seed, n=300, m=8):
    return np.random.default_rng(seed).standard_normal((n, m)).astype(np.float32)


def test_monitor_finish_keeps_history_and_refuses_new_generations(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=1)
    with mon.generation(0) as g:
        g.send(_rows(1))
    info = mon.finish()
    assert info.finished and info.finished_unix_ms > 0 and info.generations_sealed == 1
    assert mon.finish().finished_unix_ms == info.finished_unix_ms  # idempotent
    with pytest.raises(SigmaError) as e:
        with mon.generation(1) as g:
            g.send(_rows(2))
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"job '{job}' is finished" in str(e.value) and "delete-job" in str(e.value)
    assert [r.generation for r in mon.history()] == [0]
    assert mon.job_info().finished


def test_sigmactl_lifecycle_commands(server, job):
    ctl, t = sigmactl(), ["--target", server.target]
    r = run([ctl, "configure", *t, "--job", job, "--drift-warning", "0.2"])
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "--create" in r.stderr, r.stderr
    r = run([ctl, "configure", *t, "--job", job, "--create", "--drift-warning", "0.2", "--json"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["job"] == job
    mon = Monitor(server.target, job=job, rank=0, world_size=2)
    with mon.generation(0) as g:  # rank 0 of 2: the snapshot stays open for rank 1
        g.send(_rows(3))
    r = run([ctl, "snapshots", *t, "--job", job, "--json"])
    assert r.returncode == 0, r.stderr
    (snap,) = json.loads(r.stdout)["snapshots"]
    assert snap["ranks_finished"] == [0] and snap["ranks_missing"] == [1] and snap["rows"] == 300
    r = run([ctl, "snapshots", *t, "--job", job])
    assert r.returncode == 0 and "MISSING" in r.stdout and job in r.stdout, r.stdout
    r = run([ctl, "finish-job", *t, "--job", job])
    assert r.returncode == 0 and "finished" in r.stdout, r.stderr
    r = run([ctl, "delete-job", *t, "--job", job, "--json"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["job"] == job and out["snapshots_discarded"] == 1
    r = run([ctl, "delete-job", *t, "--job", job])
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr
    r = run([ctl, "delete-job", *t])
    assert r.returncode == 2 and "--job is required" in r.stderr


def test_sigmactl_delete_one_run_keeps_the_other(server, job):
    """delete-job --run: one run's reports and open snapshots go, the job and its
    first run stay (history, runs); snapshots names the run."""
    ctl, t = sigmactl(), ["--target", server.target]
    first = Monitor(server.target, job=job, rank=0, world_size=1)
    with first.generation(0) as g:
        g.send(_rows(10))
    second = Monitor(server.target, job=job, rank=0, world_size=2, resume="never")
    with second.generation(0) as g:  # rank 0 of 2: the snapshot of the new run stays open
        g.send(_rows(11))
    r = run([ctl, "snapshots", *t, "--job", job, "--json"])
    assert r.returncode == 0, r.stderr
    (snap,) = json.loads(r.stdout)["snapshots"]
    assert snap["run"] == "2", snap
    r = run([ctl, "snapshots", *t, "--job", job])
    assert r.returncode == 0 and "RUN" in r.stdout, r.stdout
    # The text outputs name the runs: job lists them, jobs shows the latest.
    r = run([ctl, "job", *t, "--job", job])
    assert r.returncode == 0 and "runs: 1, 2" in r.stdout and "(run 2)" in r.stdout, r.stdout
    r = run([ctl, "jobs", *t])
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith(job + " ")]
    assert r.stdout.split()[1] == "RUN" and line.split()[1] == "2", r.stdout
    r = run([ctl, "report", *t, "--job", job, "--run", "1", "--generation", "0"])
    assert r.returncode == 0 and f"job {job}  run 1  tap default  generation 0" in r.stdout, r.stdout
    r = run([ctl, "delete-job", *t, "--job", job, "--run", "7"])
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr and "has no run '7'" in r.stderr, r.stderr
    r = run([ctl, "delete-job", *t, "--job", job, "--run", "2"])
    assert r.returncode == 0, r.stderr
    assert f"deleted run 2 of job {job}: 0 reports, 1 open snapshots discarded" in r.stdout, r.stdout
    info = first.job_info()
    assert list(info.runs) == ["1"] and info.generations_sealed == 1
    assert [h.generation for h in first.history(run="1")] == [0]


def test_deleting_the_baseline_run_is_reported_as_no_baseline(server, job):
    """A run's pinned baseline run deleted: later reports say there is no baseline
    (sigmactl prints that instead of a drift against 'generation -1')."""
    ctl, t = sigmactl(), ["--target", server.target]
    first = Monitor(server.target, job=job, rank=0, world_size=1)
    with first.generation(0) as g:
        g.send(_rows(20))
    second = Monitor(server.target, job=job, rank=0, world_size=1, resume="never")
    with second.generation(0) as g:
        g.send(_rows(21))
    second.configure(baseline_run="1")
    r = run([ctl, "delete-job", *t, "--job", job, "--run", "1"])
    assert r.returncode == 0, r.stderr
    with second.generation(1) as g:
        g.send(_rows(22))
    r = run([ctl, "report", *t, "--job", job, "--generation", "1"])
    assert r.returncode == 0, r.stderr
    assert f"job {job}  run 2  tap default  generation 1" in r.stdout, r.stdout
    assert "drift: no baseline available" in r.stdout and "generation -1" not in r.stdout, r.stdout
