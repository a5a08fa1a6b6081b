"""The client against the real sigmad (started from $SIGMAD by conftest.py;
skipped only when SIGMAD is unset)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest

import sigma_client
from sigma_client import Monitor, SigmaError
from sigma_client.generation import NotSealedError

CORE = ("track1_lower", "track1_upper", "track2", "track2_raw", "track2_bias",
        "track2_ci_halfwidth", "n", "n_a", "m")


def close(a, b, rel=1e-9, abs_=1e-7):
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


def assert_same_report(a, b, rel=1e-9, fields=CORE):
    for f in fields:
        va, vb = getattr(a, f), getattr(b, f)
        assert close(va, vb, rel), f"{f}: {va} != {vb}"


def rows(seed, n, m, scale=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m))
    if scale is not None:
        x *= scale
    return x


# ------------------------------------------------------------ shared test vectors
VECTORS = ["small_full", "sampled_tenth", "n_a_below_m", "raw_unnormalised", "near_rank_deficient"]


@pytest.mark.parametrize("name", VECTORS)
def test_shared_vectors(server, job, testvectors, name):
    d = json.loads((testvectors / f"{name}.json").read_text())
    x = np.array(d["rows"], dtype=np.float64)
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=d["n_A"], delta=d["delta"],
                  rho=d["rho"], preprocessing=d["preprocessing"], seed=0)
    with mon.generation(0, corpus_size=d["n"]) as gen:
        gen.send(x)
    r = gen.report
    assert r is not None and gen.sealed, "a single rank's EndOfShare seals the snapshot"
    for k, v in d["expected"].items():
        assert close(getattr(r, k), v), f"{name}.{k}: got {getattr(r, k)!r}, expected {v!r}"
    assert r.n_a == d["n_A"] and r.m == d["m"] and close(r.n, d["n"])
    for k, v in d["expected_flags"].items():
        assert getattr(r.flags, k) == v, f"{name}.flags.{k}"
    assert close(r.flags.max_energy, d["max_energy"]), (r.flags.max_energy, d["max_energy"])
    assert r.generation == 0 and r.job == job and r.tap == "default"
    assert r.track1_drift == 0 and r.track2_drift == 0
    # The report is in the history too, equal to the one returned by the seal.
    h = mon.history()
    assert [x.generation for x in h] == [0]
    assert_same_report(h[0], r, rel=0)


# ------------------------------------------------------------ dtypes
def representable(seed, n, m):
    """Values i/8, |i| <= 8: exact in fp16 and bf16."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-8, 9, size=(n, m)).astype(np.float64) / 8
    x[:, 0] = np.where(np.abs(x).sum(axis=1) == 0, 1.0, x[:, 0])
    return x


def _send(target, job, x, dtype_fn, n_a=128, gens=1):
    mon = Monitor(target, job=job, rank=0, world_size=1, n_a=n_a)
    out = []
    for g in range(gens):
        with mon.generation(g) as gen:
            gen.send(dtype_fn(x[g]))
        out.append(gen.report)
    return out


def test_fp16_bf16_equal_fp32(server, job):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = [representable(1, 400, 16), representable(2, 400, 16)]
    ref = _send(server.target, job + "-f32", x, lambda a: a.astype(np.float32))
    for suffix, fn in (("-f16", lambda a: a.astype(np.float16)),
                       ("-bf16", lambda a: a.astype(ml_dtypes.bfloat16)),
                       ("-f64", lambda a: a)):
        got = _send(server.target, job + suffix, x, fn)
        for a, b in zip(ref, got):
            assert_same_report(a, b, rel=1e-12)


def test_torch_tensors_equal_fp32(server, job):
    torch = pytest.importorskip("torch")
    x = [representable(3, 300, 16)]
    ref = _send(server.target, job + "-np", x, lambda a: a.astype(np.float32))
    for suffix, dt in (("-t32", torch.float32), ("-t16", torch.float16), ("-tbf16", torch.bfloat16)):
        got = _send(server.target, job + suffix, x, lambda a: torch.from_numpy(a).to(dt))
        assert_same_report(ref[0], got[0], rel=1e-12)


# ------------------------------------------------------------ distributed
def test_two_ranks_presketch_equal_one_rank_everything(server, job):
    m, n, n_a = 16, 3000, 256
    x = rows(7, n, m)
    ids = np.arange(n, dtype=np.uint64) * 7919 + 11
    one = Monitor(server.target, job=job + "-one", rank=0, world_size=1, n_a=n_a, presketch=False)
    with one.generation(0) as g1:
        for i in range(0, n, 500):
            g1.send(x[i:i + 500].astype(np.float32), sample_ids=ids[i:i + 500])
    assert g1.response.rows_accepted == n, "presketch=False sends every row"
    results, errors = {}, []

    def rank(r):
        try:
            mon = Monitor(server.target, job=job + "-two", rank=r, world_size=2, n_a=n_a)
            with mon.generation(0) as gen:
                sel = np.arange(r, n, 2)
                for i in range(0, sel.size, 300):
                    s = sel[i:i + 300]
                    gen.send(x[s].astype(np.float32), sample_ids=ids[s])
            results[r] = gen
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors, errors
    for g in results.values():
        assert g.response.rows_accepted <= n_a, "each rank sends at most n_A rows"
        assert g.presketched
    sealed = [g for g in results.values() if g.response.sealed]
    assert len(sealed) == 1, "exactly one rank's EndOfShare seals"
    two = results[0].wait(timeout=30)
    assert two.world_size == 2 and two.ranks_finished == 2
    assert_same_report(g1.report, two)
    assert close(g1.report.flags.max_energy, two.flags.max_energy)
    assert results[1].wait(timeout=30).generation == 0


def test_default_ids_offset_by_rank(server, job):
    """Default ids are index + (rank << 40): ranks never collide, and the result does not
    depend on which rank sent which rows when each sends its own slice."""
    m = 8
    x = rows(3, 200, m)
    a = Monitor(server.target, job=job, rank=0, world_size=2, n_a=1000)
    b = Monitor(server.target, job=job, rank=1, world_size=2, n_a=1000)
    with a.generation(0) as ga:
        ga.send(x[:100])
    assert not ga.sealed
    with pytest.raises(NotSealedError, match=r"other ranks.*gen.wait"):
        ga.report          # a clear error, not None (README's snippet on a rank that does not seal)
    with b.generation(0) as gb:
        gb.send(x[100:])
    assert gb.sealed
    assert gb.report.n_a == 200 and close(gb.report.n, 200)


# ------------------------------------------------------------ retries
def test_resent_share_changes_nothing(server, job):
    m, n_a = 16, 128
    x0, x1 = rows(11, 500, m), rows(12, 500, m)

    def run(name, resend):
        r0 = Monitor(server.target, job=name, rank=0, world_size=2, n_a=n_a, batch_bytes=2048)
        r1 = Monitor(server.target, job=name, rank=1, world_size=2, n_a=n_a, batch_bytes=2048)
        with r0.generation(0) as g0:
            g0.send(x0)
        if resend:
            again = r0._send_share(g0)  # the same share again, as a retry would
            assert again.batches_duplicate > 0 and again.batches_accepted == 0
            assert not again.sealed
        with r1.generation(0) as g1:
            g1.send(x1)
        assert g1.sealed
        if resend:  # after the seal: idempotent, the stored report
            after = r1._send_share(g1)
            assert after.sealed
            assert_same_report(report_of(after), g1.report, rel=0)
        return g1.report

    clean = run(job + "-clean", False)
    retried = run(job + "-retried", True)
    assert_same_report(clean, retried, rel=0)


def report_of(resp):
    from sigma_client.report import report_from_proto
    return report_from_proto(resp.report)


def test_stream_cut_midway_is_retried(server, job, cutting_proxy):
    """The connection dies mid-share; the client gets UNAVAILABLE, re-sends the whole share
    on a new connection, and the result equals an undisturbed run."""
    m, n_a = 32, 600
    x = rows(21, 2000, m).astype(np.float32)
    ref_mon = Monitor(server.target, job=job + "-ref", rank=0, world_size=1, n_a=n_a)
    with ref_mon.generation(0) as g:
        g.send(x)
    proxy = cutting_proxy(server.target, cut_after=30_000)
    mon = Monitor(proxy.target, job=job + "-cut", rank=0, world_size=1, n_a=n_a,
                  batch_bytes=4096, backoff=0.05)
    with mon.generation(0) as g2:
        g2.send(x)
    assert proxy.cut_done == 1 and proxy.connections >= 2, "the first connection was cut"
    assert_same_report(g.report, g2.report, rel=0)


def test_wait_resends_a_share_lost_in_a_daemon_restart(job, tmp_path):
    """Rank 0 finished, then sigmad was killed (open snapshots are lost) and restarted on
    the same port; rank 1 sends after the restart. Rank 0's wait(resend_every=...) re-sends
    its share, so the snapshot seals with every row counted once."""
    import os
    import signal

    from sigma_client.daemon import start_sigmad

    if not os.environ.get("SIGMAD"):
        pytest.skip("SIGMAD is not set")
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    target = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    args = ["--listen", target]
    d = start_sigmad(os.environ["SIGMAD"], tmp_path, extra_args=args)
    try:
        x = rows(31, 3000, 8)
        ranks = [Monitor(target, job=job, rank=r, world_size=2, n_a=500, backoff=0.05)
                 for r in (0, 1)]
        g0 = ranks[0].generation(0)
        g0.send(x[:1500])
        assert g0.finish() is None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d = start_sigmad(os.environ["SIGMAD"], tmp_path, extra_args=args)
        g1 = ranks[1].generation(0)
        g1.send(x[1500:])
        assert g1.finish() is None, "the restarted daemon lost rank 0's share"
        report = g0.wait(30, resend_every=0.5)
        assert report.n == 3000
        ref = Monitor(target, job=job + "-ref", rank=0, world_size=1, n_a=500)
        with ref.generation(0) as gr:
            gr.send(x, np.concatenate([np.arange(1500), np.arange(1500) + (1 << 40)]))
        assert_same_report(report, gr.report, rel=0)
    finally:
        d.stop()


@pytest.mark.parametrize("presketch", [True, False])
def test_narrow_rows_stay_within_the_daemons_rows_per_batch(server, job, presketch):
    """1 MiB of m = 2 fp16 rows is 262144 rows, beyond sigmad's default
    --max-rows-per-batch (65536): the client must split by rows too, not only by bytes."""
    m, n = 2, 70_000
    x = rows(23, n, m).astype(np.float16)
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=n, presketch=presketch,
                  max_retries=0)
    with mon.generation(0) as g:
        g.send(x)
    assert g.sealed and g.report.n_a == n and close(g.report.n, n)
    assert g.response.batches_accepted == 2 and g.response.rows_accepted == n


def test_unavailable_daemon_gives_up_with_sigmaerror():
    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    mon = Monitor(f"127.0.0.1:{port}", job="nobody", rank=0, world_size=1, n_a=16,
                  max_retries=2, backoff=0.01, timeout=2)
    with pytest.raises(SigmaError) as e:
        with mon.generation(0) as gen:
            gen.send(np.ones((4, 4), dtype=np.float32))
    assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_list_jobs_error_names_the_unreachable_target(server, job):
    """Two targets, one down: list_jobs fails naming the daemon that failed, not the job's."""
    from sigma_client.sketch import pick_target

    s = __import__("socket").socket()
    s.bind(("127.0.0.1", 0))
    down = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    targets = [server.target, down]
    name = next(f"{job}-{i}" for i in range(64) if pick_target(targets, f"{job}-{i}") == server.target)
    mon = Monitor(targets, job=name, rank=0, world_size=1, max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(SigmaError) as e:
        mon.list_jobs()
    assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert e.value.target == down and down in str(e.value)


# ------------------------------------------------------------ errors
def _one(target, job, x, **kw):
    mon = Monitor(target, job=job, **{"rank": 0, "world_size": 1, "n_a": 64, **kw})
    with mon.generation(kw.pop("gen", 0)) as g:
        g.send(x)
    return g


def test_bad_job_name_is_the_daemons_invalid_argument(server):
    with pytest.raises(SigmaError) as e:
        _one(server.target, "bad name!", rows(1, 10, 4))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details and not e.value.details.startswith("client:")


def test_bad_rank_is_refused(server, job):
    with pytest.raises(SigmaError) as e:
        _one(server.target, job, rows(1, 10, 4), rank=2, world_size=2)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("rank, world_size", [(-1, 2), (0, 0)])
def test_negative_rank_is_refused_at_once(rank, world_size):
    with pytest.raises(ValueError, match="rank"):
        Monitor("127.0.0.1:1", job="x", rank=rank, world_size=world_size)


def test_wrong_dimension_leaves_the_job_as_it_was(server, job):
    g = _one(server.target, job, rows(1, 50, 8))
    before = g.report
    mon = Monitor(server.target, job=job, rank=0, world_size=1)
    with pytest.raises(SigmaError) as e:
        with mon.generation(1) as g1:
            g1.send(rows(2, 50, 16))
    assert e.value.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert not e.value.details.startswith("client:")
    # The same generation with the right dimension still works afterwards.
    with mon.generation(1) as g1:
        g1.send(rows(2, 50, 8))
    assert g1.report is not None and g1.report.generation == 1
    h = mon.history()
    assert [r.generation for r in h] == [0, 1]
    assert_same_report(h[0], before, rel=0)


def test_nan_is_refused_before_sending(server, job):
    x = rows(1, 10, 4)
    x[3, 2] = np.nan
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=64)
    with pytest.raises(SigmaError) as e:
        with mon.generation(0) as g:
            g.send(x)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "row 3" in e.value.details
    assert not g.finished


@pytest.mark.parametrize("prep,value,what", [("l2", 0.0, "has norm 0"),
                                             ("l2", 1.5e308, "norm above the float64 range"),
                                             ("none", 1e160, "squared norm above the float64 range")])
def test_rows_sigmad_would_refuse_are_refused_naming_their_share_row(server, job, prep, value, what):
    first, second = rows(2, 10, 4), rows(3, 10, 4)
    second[7] = value  # finite elements; the norm is 0 or beyond float64
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=64, preprocessing=prep)
    with pytest.raises(SigmaError) as e:
        with mon.generation(0) as g:
            g.send(first)
            g.send(second)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "row 17 " in e.value.details and what in e.value.details, e.value.details


def test_close_unknown_generation_is_not_found(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=1)
    with pytest.raises(SigmaError) as e:
        mon.close_generation(5)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_explicit_close_seals_with_the_ranks_that_sent(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=3, n_a=64)
    with mon.generation(0) as g:
        g.send(rows(5, 100, 8))
    assert not g.sealed
    r = g.seal()
    assert r.flags.closed_explicitly and r.ranks_finished == 1 and r.world_size == 3
    assert_same_report(mon.close_generation(0), r, rel=0)  # idempotent


def test_configure_and_history(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=64)
    info = mon.configure(drift_warning=0.2, drift_critical=0.8)
    assert info.job == job
    assert info.config.thresholds.drift_warning == pytest.approx(0.2)
    for k in range(3):
        with mon.generation(k) as g:
            g.send(rows(10 + k, 200, 8) * (1.0 + k))
    h = mon.history()
    assert [r.generation for r in h] == [0, 1, 2]
    assert all(r.baseline_generation == 0 for r in h)
    ji = mon.job_info()
    assert ji is not None and ji.m == 8 and ji.generations_sealed == 3
    assert any(j.job == job for j in mon.list_jobs())


def test_reports_keep_the_thresholds_they_were_sealed_with(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=64)
    mon.configure(drift_warning=0.2, drift_critical=0.8)
    with mon.generation(0) as g:
        g.send(rows(20, 200, 8))
    mon.configure(drift_critical=0.5)
    with mon.generation(1) as g:
        g.send(rows(21, 200, 8))
    h = mon.history()
    assert [r.thresholds_at_seal["drift_critical"] for r in h] == pytest.approx([0.8, 0.5])
    assert all(r.thresholds_at_seal["drift_warning"] == pytest.approx(0.2) for r in h)


def test_significance_settings_and_report_fields(server, job):
    """Spec §3: probe/trend_* as Monitor settings (sent with the job's creation) and
    through configure(); the report carries both half-widths, the one in use, z_drift."""
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=128, probe="fixed",
                  trend_k=3, trend_z=2.5)
    for k in range(2):
        with mon.generation(k) as g:
            g.send(rows(20 + k, 400, 8))
    cfg = mon.job_info().config
    assert (cfg.probe, cfg.trend_k, cfg.trend_z, cfg.trend_floor) == ("fixed", 3, 2.5, 0.05)
    r = mon.history()[-1]
    assert r.track2_pop_halfwidth > r.track2_ci_halfwidth > 0  # f = 128/400: pop is wider
    assert r.drift_halfwidth_used == pytest.approx(r.drift_halfwidth)  # fixed probe: corpus
    assert r.drift_halfwidth_pop > r.drift_halfwidth
    assert r.trend_evaluated and r.trend_note == ""  # n_A = 16 m
    assert r.drift_zscore == pytest.approx(r.track2_drift / (r.drift_halfwidth_used / 1.959963984540054))
    info = mon.configure(probe="fresh", trend_floor=0.02, drift_warning=0.2)
    assert (info.config.probe, info.config.trend_floor, info.config.trend_k) == ("fresh", 0.02, 3)
    assert info.config.thresholds.drift_warning == pytest.approx(0.2)
    with pytest.raises(ValueError):
        mon.configure(probe="sometimes")
    with pytest.raises(SigmaError) as e:
        mon.configure(trend_k=0)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_sketch_params_fixed_after_seal(server, job):
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=64)
    with mon.generation(0) as g:
        g.send(rows(1, 100, 8))
    with pytest.raises(SigmaError) as e:
        mon.configure(n_a=128)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_existing_job_n_a_is_used_for_the_presketch(server, job):
    """A monitor configured with a smaller n_a than the job's pre-sketches with the job's."""
    first = Monitor(server.target, job=job, rank=0, world_size=1, n_a=300)
    with first.generation(0) as g:
        g.send(rows(1, 1000, 8))
    other = Monitor(server.target, job=job, rank=0, world_size=1, n_a=50)
    with other.generation(1) as g1:
        g1.send(rows(2, 1000, 8))
    assert g1.response.rows_accepted == 300 and g1.report.n_a == 300


def test_new_job_presketch_uses_the_daemons_config_file(job, tmp_path):
    """A new job whose seed and n_a come from sigmad's config file (`defaults:`,
    `jobs.NAME`): the pre-sketch must use them, so its report equals a full send."""
    import os

    from sigma_client.daemon import start_sigmad

    if not os.environ.get("SIGMAD"):
        pytest.skip("SIGMAD is not set")
    named, other = f"{job}-named", f"{job}-default"
    cfg = tmp_path / "sigmad.yaml"
    cfg.write_text(f"defaults:\n  seed: 777\njobs:\n  {named}:\n    n_a: 600\n    seed: 99\n")
    d = start_sigmad(os.environ["SIGMAD"], tmp_path / "d", extra_args=["--config", str(cfg)])
    try:
        x = rows(5, 3000, 8)
        for name, n_a, seed in ((named, 600, 99), (other, 4096, 777)):
            sketched = Monitor(d.target, job=name, tap="sketched", rank=0, world_size=1)
            with sketched.generation(0) as g:
                g.send(x)
            assert (g.params.n_a, g.params.seed) == (n_a, seed)
            full = Monitor(d.target, job=name, tap="full", rank=0, world_size=1, presketch=False)
            with full.generation(0) as gf:
                gf.send(x)
            assert g.report.n_a == min(n_a, 3000)
            assert_same_report(g.report, gf.report)
    finally:
        d.stop()


# ------------------------------------------------------------ report command
def test_new_job_race_keeps_the_first_ranks_sketch_settings(server, job):
    """Rank 1 found no job, then rank 0 opened it with another n_a before rank 1 created
    it: rank 1 pre-sketches with the job's settings instead of failing."""
    first = Monitor(server.target, job=job, rank=0, world_size=2, n_a=64, seed=5)
    late = Monitor(server.target, job=job, rank=1, world_size=2, n_a=99, seed=5)
    real, calls = late._job_info_proto, []

    def unknown_at_first(m=None):
        calls.append(1)
        return None if len(calls) == 1 else real(m)

    late._job_info_proto = unknown_at_first
    g0 = first.generation(0)
    g0.send(rows(1, 100, 4))
    g0.finish()
    with late.generation(0) as g1:
        g1.send(rows(2, 100, 4))
    assert g1.params.n_a == 64 and g1.sealed and g1.report.n_a == 64


def test_report_command_writes_png(server, job, tmp_path, pythonpath_env):
    import matplotlib.image

    m = 16
    jobs = [job + "-a", job + "-b"]
    for j, speed in zip(jobs, (0.1, 0.6)):
        mon = Monitor(server.target, job=j, rank=0, world_size=1, n_a=400)
        for k in range(4):
            scale = np.exp(-speed * k * np.arange(m) / m)
            with mon.generation(k, corpus_size=2000) as g:
                g.send(rows(100 + k, 2000, m, scale).astype(np.float32))
    out = tmp_path / "report.png"
    cmd = [sys.executable, "-m", "sigma_client", "report", "--target", server.target,
           "--job", jobs[0], "--job", jobs[1], "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=pythonpath_env, timeout=120)
    assert p.returncode == 0, p.stderr
    for j in jobs:
        assert j[:24] in p.stdout
    assert p.stdout.count("\n") >= 10
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
    assert img.std() > 0.01, "the image is not blank"


def test_report_command_unknown_target_fails_cleanly(tmp_path, pythonpath_env):
    cmd = [sys.executable, "-m", "sigma_client", "report", "--target", "127.0.0.1:1",
           "--job", "x", "--timeout", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=pythonpath_env, timeout=60)
    assert p.returncode == 1 and "UNAVAILABLE" in p.stderr


def test_report_command_unwritable_out_fails_cleanly(server, job, tmp_path, pythonpath_env):
    pytest.importorskip("matplotlib")
    _one(server.target, job, rows(1, 50, 4))
    out = tmp_path / "missing-dir" / "r.png"
    cmd = [sys.executable, "-m", "sigma_client", "report", "--target", server.target,
           "--job", job, "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=pythonpath_env, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and f"cannot write {out}" in p.stderr


def test_public_api():
    for name in ("Monitor", "SigmaError", "GenerationReport", "Generation"):
        assert hasattr(sigma_client, name)


@pytest.mark.parametrize("presketch", [True, False])
def test_l2_rows_never_violate_rho(server, job, presketch):
    """Spec §2: with l2 each column is scaled to unit norm, "so rho = 1 holds exactly":
    rounding in the norm of a wide row must not flag Track I as invalid."""
    m = 256
    x = rows(17, 3000, m).astype(np.float32)
    mon = Monitor(server.target, job=job, rank=0, world_size=1, n_a=1024, presketch=presketch)
    with mon.generation(0) as g:
        g.send(x)
    f = g.report.flags
    assert not f.rho_violated and f.rho_violations == 0, f
    assert not any(a.rule == "track1_invalid_rho" for a in g.report.alerts)
    assert close(f.max_energy, 1.0, rel=1e-12) and close(f.mean_energy, 1.0, rel=1e-12)


@pytest.mark.parametrize("how", ["no_send", "empty_array"])
def test_rank_without_rows_still_finishes(server, job, how):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = Monitor(server.target, job=job, rank=0, world_size=2, n_a=64)
    b = Monitor(server.target, job=job, rank=1, world_size=2, n_a=64)
    with a.generation(0) as ga:
        ga.send(representable(4, 40, 8).astype(ml_dtypes.bfloat16))
    with b.generation(0) as gb:
        if how == "empty_array":
            gb.send(np.zeros((0, 8), dtype=ml_dtypes.bfloat16))
    assert gb.sealed and gb.report.ranks_finished == 2 and close(gb.report.n, 40)


def test_rank_without_rows_finishing_first_keeps_the_jobs_dtype(server, job):
    """A rank with no rows in generation 1 finishes before the others: its share must
    not open the snapshot with a guessed dtype that refuses the other ranks' bf16 rows."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = Monitor(server.target, job=job, rank=0, world_size=2, n_a=64)
    b = Monitor(server.target, job=job, rank=1, world_size=2, n_a=64)
    for mon, seed in ((a, 4), (b, 5)):
        with mon.generation(0) as g:
            g.send(representable(seed, 40, 8).astype(ml_dtypes.bfloat16))
    assert g.sealed
    with b.generation(1) as gb:  # no rows this time
        pass
    assert not gb.sealed
    with a.generation(1) as ga:
        ga.send(representable(6, 40, 8).astype(ml_dtypes.bfloat16))
    assert ga.sealed and ga.report.ranks_finished == 2 and close(ga.report.n, 40)


def test_rank_without_rows_before_any_other_is_refused(server, job):
    b = Monitor(server.target, job=job, rank=1, world_size=2, n_a=64)
    with pytest.raises(SigmaError) as e:
        with b.generation(0):
            pass
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_target_list_routes_each_job_by_rendezvous_hashing(job, sigmad, tmp_path):
    """Three real daemons: each job lands on exactly the rendezvous-chosen one."""
    import os

    from sigma_client.daemon import start_sigmad
    from sigma_client.sketch import pick_target

    daemons = [sigmad] + [start_sigmad(os.environ["SIGMAD"], tmp_path / f"d{i}") for i in (1, 2)]
    try:
        targets = [d.target for d in daemons]
        chosen = set()
        for i in range(6):
            name = f"{job}-{i}"
            mon = Monitor(",".join(targets), job=name, rank=0, world_size=1, n_a=32)
            assert mon.target == pick_target(targets, name)
            chosen.add(mon.target)
            with mon.generation(0) as g:
                g.send(rows(i, 20, 4))
            assert g.sealed
            holders = [t for t in targets
                       if any(j.job == name for j in Monitor(t, job=name).list_jobs())]
            assert holders == [mon.target]
        assert len(chosen) >= 2, "six jobs should spread over more than one daemon"
    finally:
        for d in daemons[1:]:
            d.stop()
