"""The command lines as a new user meets them: sigmactl (the built binary, $SIGMACTL) and
python -m sigma_client / sigma-report, against the real sigmad (issue 16, part 4 and
report --csv)."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sigma_client import Monitor, SigmaError
from sigma_client.cli import report_main

REPO = Path(__file__).resolve().parents[2]


def sigmactl():
    path = os.environ.get("SIGMACTL")
    if not path:
        cand = Path(os.environ.get("SIGMAD", "")).resolve().parents[1] / "client" / "cli" / "sigmactl" \
            if os.environ.get("SIGMAD") else None
        if cand is None or not cand.is_file():
            pytest.skip("SIGMACTL is not set")
        path = str(cand)
    return path


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kw)


def seal_two(target, job, m=8):
    rng = np.random.default_rng(5)
    with Monitor(target, job=job, rank=0, world_size=1) as mon:
        for g in range(2):
            with mon.generation(g) as gen:
                gen.send(rng.standard_normal((300, m)).astype(np.float32) * (1 - 0.3 * g))


def test_one_dimensional_arrays_are_refused_everywhere(server, job, tmp_path):
    np.save(tmp_path / "v.npy", np.ones(16, np.float32))
    for cmd in (["send", str(tmp_path / "v.npy"), "--target", server.target, "--job", job,
                 "--generation", "0"], ["eval", str(tmp_path / "v.npy")]):
        r = run([sigmactl(), *cmd])
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        assert "1-D array" in r.stderr and "reshape(1, -1)" in r.stderr
    mon = Monitor(server.target, job=job, rank=0, world_size=1)
    with pytest.raises(SigmaError, match=r"\[rows, m\]"):
        mon.generation(0).send(np.ones(16, np.float32))


def test_sigmactl_json_numbers_are_numbers_and_names_match(server, job, tmp_path):
    x = np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = run([sigmactl(), "send", str(tmp_path / "x.npy"), "--target", server.target, "--job", job,
             "--generation", "3", "--json"])
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["generation"] == 3 and rep["n_a"] == 200 and rep["sealed_unix_ms"] > 0
    h = json.loads(run([sigmactl(), "report", "--target", server.target, "--job", job,
                        "--json"]).stdout)
    assert h["reports"][0]["generation"] == 3
    e = json.loads(run([sigmactl(), "eval", str(tmp_path / "x.npy"), "--json"]).stdout)
    assert "n_A" not in e and e["n_a"] == 200 and isinstance(e["m"], int)


@pytest.mark.parametrize("cmd", [["send", "--job"], ["report"], ["eval"], ["jobs", "--bogus"],
                                 ["frobnicate"]])
def test_usage_errors_are_short(cmd):
    r = run([sigmactl(), *cmd])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) <= 2 and "--help" in lines[-1] or "sigmactl help" in lines[-1], r.stderr


def test_python_usage_errors_are_short(pythonpath_env):
    r = run([sys.executable, "-m", "sigma_client", "report"], env=pythonpath_env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "--help" in lines[1], r.stderr


def test_batch_rows_capped_below_the_message_limit(server, job, tmp_path):
    x = np.random.default_rng(2).standard_normal((20000, 1024)).astype(np.float32)
    np.save(tmp_path / "big.npy", x)
    r = run([sigmactl(), "send", str(tmp_path / "big.npy"), "--target", server.target, "--job", job,
             "--generation", "0", "--batch-rows", "20000", "--json"])
    assert r.returncode == 0, r.stderr
    assert "--max-message-bytes" in r.stderr and "rows per Batch" in r.stderr
    assert json.loads(r.stdout)["n"] == 20000


def test_report_csv_same_in_python_and_sigmactl(server, job, pythonpath_env):
    seal_two(server.target, job)
    py = run([sys.executable, "-m", "sigma_client", "report", "--target", server.target,
              "--job", job, "--csv", "-"], env=pythonpath_env)
    assert py.returncode == 0, py.stderr
    cc = run([sigmactl(), "report", "--target", server.target, "--job", job, "--csv"])
    assert cc.returncode == 0, cc.stderr
    a = list(csv.DictReader(io.StringIO(py.stdout)))
    b = list(csv.DictReader(io.StringIO(cc.stdout)))
    assert py.stdout.splitlines()[0] == cc.stdout.splitlines()[0]
    assert [r["generation"] for r in a] == ["0", "1"] and len(b) == 2
    for ra, rb in zip(a, b):
        for k in ra:
            try:
                assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-15, abs=0), k
            except ValueError:
                assert ra[k] == rb[k], k


def test_report_honours_sigma_target_and_the_console_entry(server, job, pythonpath_env, capsys,
                                                           monkeypatch):
    seal_two(server.target, job)
    env = dict(pythonpath_env, SIGMA_TARGET=server.target)
    r = run([sys.executable, "-m", "sigma_client", "report", "--job", job], env=env)
    assert r.returncode == 0, r.stderr
    assert job[:24] in r.stdout
    # sigma-report (pyproject's console entry) takes report's flags without the subcommand.
    assert 'sigma-report = "sigma_client.cli:report_main"' in \
        (REPO / "client" / "python" / "pyproject.toml").read_text()
    monkeypatch.delenv("SIGMA_TARGET", raising=False)
    assert report_main(["--target", server.target, "--job", job, "--csv", "-"]) == 0
    assert capsys.readouterr().out.count("\n") == 3


def test_send_refused_share_leaves_nothing_and_names_the_file_row(server, job, tmp_path):
    """Issue 15 item 2, as reported: a file with a NaN at row 5000 is refused at batch seq 2
    after batches 0-1 were taken; the clean file sent next must seal exactly what the clean
    file alone seals (track2 was a mixture), and the error names the share and file row."""
    rng = np.random.default_rng(15)
    clean = rng.standard_normal((8000, 16)).astype(np.float32)
    other = rng.standard_normal((8000, 16)).astype(np.float32)  # another file ...
    other[5000, 3] = np.nan                                      # ... with a NaN at row 5000
    np.save(tmp_path / "clean.npy", clean)
    np.save(tmp_path / "head.npy", other[:3000])
    np.save(tmp_path / "tail.npy", other[3000:])
    common = ["--target", server.target, "--generation", "0", "--batch-rows", "2048",
              "--n-a", "4096", "--json"]
    alone = run([sigmactl(), "send", str(tmp_path / "clean.npy"), "--job", job + ".alone", *common])
    assert alone.returncode == 0, alone.stderr
    bad = run([sigmactl(), "send", str(tmp_path / "head.npy"), str(tmp_path / "tail.npy"),
               "--job", job, *common])
    assert bad.returncode == 1
    assert "batch seq 2 (share rows 3000..5047)" in bad.stderr, bad.stderr  # batches end at file ends
    assert "at row 5000, column 3" in bad.stderr, bad.stderr
    assert f"share row 5000 is row 2000 of {tmp_path / 'tail.npy'}" in bad.stderr, bad.stderr
    fixed = run([sigmactl(), "send", str(tmp_path / "clean.npy"), "--job", job, *common])
    assert fixed.returncode == 0, fixed.stderr
    a, f = json.loads(alone.stdout), json.loads(fixed.stdout)
    assert f["track2"] == a["track2"] and f["n"] == a["n"] == 8000
    assert f["data_digest"] == a["data_digest"]
