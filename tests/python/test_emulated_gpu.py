"""sigmad on the CUDA path without a GPU: the daemon loads the CUDA backend
module built against the host CUDA emulator (tests/gpu/emulator; SIGMA_CUDA_MODULE
points the factory at it, SIGMA_CUDA_EMULATOR_DEVICES=2 makes two "GPUs"), so
`--backend auto` builds the routed backend (small m on the CPU, the rest on the
CUDA contexts placed by job) and every report must equal a CPU-only daemon's
on the same data. Correctness only: the emulator says nothing about speed.
Skipped, with the reason, when the build has no emulated module."""
from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sigma_client import Monitor
from sigma_client.daemon import start_sigmad

MODULE_NAME = "libsigma_cuda_backend_emulated.so"
FIELDS = ("track1_lower", "track1_upper", "track2", "track2_raw", "track2_bias", "track2_ci_halfwidth",
          "track1_drift", "track2_drift", "divergence")


def emulated_module() -> Path | None:
    binary = os.environ.get("SIGMAD")
    if not binary:
        return None
    p = Path(binary).resolve().parents[1] / "lib" / MODULE_NAME
    return p if p.is_file() else None


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    if not os.environ.get("SIGMAD"):
        pytest.skip("SIGMAD is not set")
    module = emulated_module()
    if module is None:
        pytest.skip(f"{MODULE_NAME} not built (needs the CUDA toolkit headers and the CPU BLAS)")
    saved = {k: os.environ.get(k) for k in ("SIGMA_CUDA_MODULE", "SIGMA_CUDA_EMULATOR_DEVICES")}
    os.environ["SIGMA_CUDA_MODULE"] = str(module)
    os.environ["SIGMA_CUDA_EMULATOR_DEVICES"] = "2"
    try:
        gpu = start_sigmad(os.environ["SIGMAD"], tmp_path_factory.mktemp("emulated_gpu"),
                           extra_args=["--backend", "auto", "--gpu-min-m", "16"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    cpu = start_sigmad(os.environ["SIGMAD"], tmp_path_factory.mktemp("cpu_only"), extra_args=["--backend", "cpu"])
    yield gpu, cpu
    for d in (gpu, cpu):
        alive = d.proc.poll() is None
        d.stop()
        assert alive, f"sigmad died (rc {d.proc.returncode}):\n{d.log()[-3000:]}"


def metrics(d) -> str:
    with urllib.request.urlopen(d.metrics_url, timeout=10) as r:
        return r.read().decode()


def test_auto_backend_is_routed_over_the_emulated_gpus(daemons):
    gpu, cpu = daemons
    info = re.search(r'sigma_backend_info\{([^}]*)\} 1', metrics(gpu))
    assert info, metrics(gpu)[:2000]
    labels = info.group(1)
    assert "cuda" in labels and "emulator" in labels, labels
    assert re.search(r'fallback_reason=""', labels), labels
    cpu_info = re.search(r'sigma_backend_info\{([^}]*)\} 1', metrics(cpu)).group(1)
    assert 'backend="cpu"' in cpu_info, cpu_info


@pytest.mark.parametrize("m", [8, 48])  # below --gpu-min-m: the CPU child; above: an emulated GPU
def test_reports_equal_the_cpu_daemon(daemons, m):
    gpu, cpu = daemons
    rng = np.random.default_rng(1000 + m)
    gens = [rng.standard_normal((6 * m, m)) * (1.0 + 0.1 * g) for g in range(3)]
    reports = []
    for d in (gpu, cpu):
        # Several jobs, so the two emulated devices both get work.
        per_job = []
        for j in range(3):
            mon = Monitor(d.target, job=f"emu-{m}-{j}", rank=0, world_size=1, n_a=4 * m, delta=1e-6)
            out = []
            for g, x in enumerate(gens):
                with mon.generation(g) as gen:
                    gen.send(x[j::1] if j == 0 else x[: 5 * m + j])
                out.append(gen.report)
            per_job.append(out)
        reports.append(per_job)
    for j in range(3):
        for g in range(3):
            a, b = reports[0][j][g], reports[1][j][g]
            assert a is not None and b is not None
            assert a.flags.cholesky_failed == b.flags.cholesky_failed
            for f in FIELDS:
                va, vb = getattr(a, f), getattr(b, f)
                assert abs(va - vb) <= 1e-9 * max(abs(va), abs(vb)) + 1e-12, (m, j, g, f, va, vb)


def test_torch_seal_matches_the_emulated_cuda_bench(tmp_path):
    """The device check compares sigma_gpu_bench with bench/gpu/torch_seal.py on
    "the same seeded data": check that claim (data generator, seal, JSON fields)
    here, with the bench on the emulator and torch on the CPU."""
    torch = pytest.importorskip("torch", reason="torch is not installed in this Python (experiments/setup.sh "
                                                "makes .venv-exp with it)")
    del torch
    if not os.environ.get("SIGMAD"):
        pytest.skip("SIGMAD is not set")
    build = Path(os.environ["SIGMAD"]).resolve().parents[1]
    # tests/gpu/CMakeLists.txt builds it (the older tests/kernels/gpu path is still looked at)
    cands = [build / "tests" / d / "sigma_gpu_bench_emulated" for d in ("gpu", "kernels/gpu")]
    bench = next((c for c in cands if c.is_file()), cands[0])
    if not bench.is_file():
        pytest.skip(f"{bench} not built")
    import json
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[2]
    configs = "64:256,96:192"
    subprocess.run([str(bench), "--reps", "1", "--no-sweep", "--no-crossover", "--configs", configs,
                    "--json", str(tmp_path / "cuda.jsonl")], check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, str(repo / "bench" / "gpu" / "torch_seal.py"), "--device", "cpu", "--reps", "1",
                    "--configs", configs, "--json", str(tmp_path / "torch.jsonl")],
                   check=True, capture_output=True, timeout=300)
    cuda = {(r["m"], r["n_a"]): r for r in map(json.loads, open(tmp_path / "cuda.jsonl")) if r["impl"] == "cuda"}
    tor = {(r["m"], r["n_a"]): r for r in map(json.loads, open(tmp_path / "torch.jsonl"))}
    assert set(cuda) == set(tor) == {(64, 256), (96, 192)}
    for key in cuda:
        for f in ("track2_raw", "track1_upper", "q_mean", "trace_a"):
            a, b = cuda[key][f], tor[key][f]
            assert abs(a - b) <= 1e-9 * max(abs(a), abs(b)), (key, f, a, b)
