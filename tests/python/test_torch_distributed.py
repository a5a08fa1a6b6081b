"""2 processes, torch.distributed with gloo on the CPU, the Hugging Face callback: each rank
sends its half of the probe set and the daemon's reports equal a 1-process run's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is a test extra (scripts/deps.sh --test-extras)")
pytest.importorskip("transformers")

import dist_worker  # noqa: E402
from sigma_client import Monitor  # noqa: E402
from sigma_client.torch import capture  # noqa: E402

from test_async import free_port  # noqa: E402
from test_client import assert_same_report  # noqa: E402

HERE = Path(__file__).resolve().parent


def test_two_gloo_ranks_with_the_callback_equal_one_process(server, job, tmp_path, pythonpath_env):
    port = free_port()
    env = dict(pythonpath_env, PYTHONPATH=f"{pythonpath_env['PYTHONPATH']}:{HERE}",
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), str(r), "2", str(port),
                               server.target, job, str(tmp_path / f"r{r}.json")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    res = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert [(x["rank"], x["world_size"]) for x in res] == [(0, 2), (1, 2)], \
        "ranks come from torch.distributed"
    # One process, the whole probe, the same model steps: the same reports.
    model, probe = dist_worker.model_and_probe()
    for k in range(2):
        got, ids = capture(model, ["transformer.h.0", "transformer.h.1"], probe, batch_size=8,
                           rank=0, world_size=1)
        for layer, rows in got.items():
            with Monitor(server.target, job=job + "-one", tap=layer, rank=0, world_size=1) as mon:
                with mon.generation(k) as g:
                    g.send(rows, sample_ids=ids)
                ref = g.wait(60)
            with Monitor(server.target, job=job, tap=layer, rank=0, world_size=1) as mon:
                two = mon.get_report(k)
            assert two.world_size == 2 and two.ranks_finished == 2 and two.n == 48
            assert res[0]["reports"][str(k)][layer]["generation"] == k
            assert_same_report(ref, two, rel=1e-9)
        dist_worker.perturb(model)
