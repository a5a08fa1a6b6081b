"""Load test of sigmad (docs/reliability.md): N concurrent Ingest streams on
loopback for a fixed time against a real sigmad (CPU backend), then

  * counts reconcile: batches, rows and payload bytes the clients saw accepted
    equal sigma_ingested_{batches,rows,bytes}_total; every batch re-sent on
    purpose (one per generation) came back as a duplicate; every sealed
    generation is in the history exactly once;
  * memory: sigma_open_snapshot_bytes never exceeds --max-memory-bytes
    (sampled), and sigmad's peak RSS is reported;
  * seal latency: EndOfShare sent -> sealed response, p50/p95/p99 from the
    clients, and sigma_seal_duration_seconds from the daemon.

    .venv/bin/python bench/load/load_test.py --sigmad build/server/sigmad --seconds 60 --streams 16

Exit status 1 when a check fails. Fixed seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python" / "src"))
import grpc  # noqa: E402

from sigma_client import _pb  # noqa: E402
from sigma_client.daemon import start_sigmad  # noqa: E402


def scrape(url: str) -> dict[str, float]:
    out = {}
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sigmad", default=str(REPO / "build" / "server" / "sigmad"))
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--n-a", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=4096, help="rows per generation")
    ap.add_argument("--batch-rows", type=int, default=512)
    ap.add_argument("--max-memory-bytes", type=int, default=64 << 20)
    ap.add_argument("--bytes-per-report", type=int, default=1024,
                    help="soak check: allowed RSS growth per report sealed after the first quarter")
    ap.add_argument("--rss-slack", type=int, default=16 << 20,
                    help="soak check: allowed RSS growth on top of that (allocator, SQLite cache)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()

    pb2, grpc_mod = _pb.load()
    work = Path(tempfile.mkdtemp(prefix="sigma_load_"))
    d = start_sigmad(a.sigmad, work, extra_args=["--backend", "cpu", "--max-memory-bytes", str(a.max_memory_bytes),
                                                 "--max-open-snapshots", str(4 * a.streams)])
    metrics_url = d.metrics_url if isinstance(d.metrics_url, str) else d.metrics_url()
    target = d.target if isinstance(d.target, str) else d.target()
    pid = d.proc.pid
    rng = np.random.default_rng(1)
    data = rng.standard_normal((a.rows, a.m)).astype("<f4")
    chunks = [data[i:i + a.batch_rows].tobytes() for i in range(0, a.rows, a.batch_rows)]
    nb = len(chunks)

    stop = time.monotonic() + a.seconds
    lock = threading.Lock()
    totals = {"accepted": 0, "duplicate": 0, "rows": 0, "bytes": 0, "sealed": 0, "errors": 0}
    latencies: list[float] = []
    gens_per_stream = [0] * a.streams
    errors: list[str] = []

    def stream(i: int) -> None:
        ch = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
        stub = grpc_mod.SigmaMonitorStub(ch)
        g = 0
        while time.monotonic() < stop:
            t_end = [0.0]

            def requests():
                yield pb2.IngestRequest(open=pb2.OpenSnapshot(
                    job=f"load.s{i:02d}", tap="t", generation=g, rank=0, world_size=1, m=a.m,
                    dtype=pb2.DTYPE_FP32, config=pb2.JobConfig(n_a=a.n_a)))
                for s, c in enumerate(chunks):
                    yield pb2.IngestRequest(batch=pb2.Batch(seq=s, rows=a.batch_rows, data=c))
                # One deliberate re-send: must count as a duplicate, not as data.
                yield pb2.IngestRequest(batch=pb2.Batch(seq=0, rows=a.batch_rows, data=chunks[0]))
                t_end[0] = time.monotonic()
                yield pb2.IngestRequest(end=pb2.EndOfShare())

            try:
                resp = stub.Ingest(requests(), timeout=120)
            except grpc.RpcError as e:
                with lock:
                    totals["errors"] += 1
                    errors.append(f"stream {i} gen {g}: {e.code()} {e.details()}")
                return
            lat = time.monotonic() - t_end[0]
            with lock:
                totals["accepted"] += resp.batches_accepted
                totals["duplicate"] += resp.batches_duplicate
                totals["rows"] += resp.rows_accepted
                totals["bytes"] += resp.batches_accepted * len(chunks[0])
                totals["sealed"] += int(resp.sealed)
                latencies.append(lat)
            g += 1
            gens_per_stream[i] = g
        ch.close()

    peak = {"rss": 0, "open_bytes": 0.0, "rss_quarter": 0, "rss_last": 0, "sealed_quarter": 0}
    sampling = threading.Event()

    def sampler() -> None:
        while not sampling.is_set():
            try:
                rss = rss_bytes(pid)
                peak["rss"] = max(peak["rss"], rss)
                peak["rss_last"] = rss
                if time.monotonic() - t0 < a.seconds / 4:  # warm-up: the first quarter's peak
                    peak["rss_quarter"] = max(peak["rss_quarter"], rss)
                    with lock:
                        peak["sealed_quarter"] = totals["sealed"]
                m = scrape(metrics_url)
                peak["open_bytes"] = max(peak["open_bytes"], m.get("sigma_open_snapshot_bytes", 0))
            except Exception:  # noqa: BLE001 - a missed sample is fine
                pass
            time.sleep(0.25)

    t0 = time.monotonic()
    smp = threading.Thread(target=sampler)
    smp.start()
    threads = [threading.Thread(target=stream, args=(i,)) for i in range(a.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    sampling.set()
    smp.join()

    m = scrape(metrics_url)
    ch = grpc.insecure_channel(target)
    stub = grpc_mod.SigmaMonitorStub(ch)
    history = 0
    for i in range(a.streams):
        h = stub.GetHistory(pb2.GetHistoryRequest(job=f"load.s{i:02d}"), timeout=60)
        gens = [r.generation for r in h.reports]
        if gens != list(range(gens_per_stream[i])):
            errors.append(f"stream {i}: history {len(gens)} generations, expected {gens_per_stream[i]}")
        history += len(gens)
    ch.close()
    d.stop()

    lat = np.array(latencies)
    sealed = totals["sealed"]
    hist_count = m.get("sigma_seal_duration_seconds_count", 0)
    hist_sum = m.get("sigma_seal_duration_seconds_sum", 0)
    fig = {
        "streams": a.streams, "seconds": round(wall, 1), "m": a.m, "n_a": a.n_a, "rows_per_generation": a.rows,
        "batch_bytes": len(chunks[0]), "generations_sealed": sealed, "batches_accepted": totals["accepted"],
        "rows_accepted": totals["rows"], "payload_mib_per_s": round(totals["bytes"] / wall / 2**20, 1),
        "duplicates": totals["duplicate"], "history_reports": history,
        "metric_batches": m.get("sigma_ingested_batches_total"), "metric_rows": m.get("sigma_ingested_rows_total"),
        "metric_bytes": m.get("sigma_ingested_bytes_total"),
        "seal_latency_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 1) if len(lat) else None,
        "seal_latency_p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 1) if len(lat) else None,
        "seal_latency_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 1) if len(lat) else None,
        "seal_latency_max_ms": round(float(lat.max()) * 1e3, 1) if len(lat) else None,
        "daemon_seal_mean_ms": round(hist_sum / hist_count * 1e3, 2) if hist_count else None,
        "peak_open_snapshot_bytes": int(peak["open_bytes"]), "max_memory_bytes": a.max_memory_bytes,
        "peak_rss_mib": round(peak["rss"] / 2**20, 1),
        "rss_first_quarter_peak_mib": round(peak["rss_quarter"] / 2**20, 1),
        "rss_end_mib": round(peak["rss_last"] / 2**20, 1), "errors": totals["errors"],
    }
    sealed_after = sealed - peak["sealed_quarter"]
    rss_growth = max(0, peak["rss_last"] - peak["rss_quarter"])
    fig["rss_growth_bytes_per_report_after_warmup"] = round(rss_growth / sealed_after, 1) if sealed_after else None
    checks = {
        "batches reconcile": totals["accepted"] == m.get("sigma_ingested_batches_total"),
        "rows reconcile": totals["rows"] == m.get("sigma_ingested_rows_total"),
        "bytes reconcile": totals["bytes"] == m.get("sigma_ingested_bytes_total"),
        "one duplicate per generation": totals["duplicate"] == sealed,
        "every generation sealed once": sealed == history == sum(gens_per_stream) == hist_count,
        "batches = generations x batches": totals["accepted"] == sealed * nb,
        "memory under budget": peak["open_bytes"] <= a.max_memory_bytes,
        # Soak: after warm-up the daemon's RSS may grow only by the report
        # history it keeps in memory (GetHistory, retries of sealed snapshots:
        # about 0.7 KB per report) plus allocator slack; a leak per batch or
        # per stream (8 batches and a stream per generation) would exceed it.
        "rss growth within the report history": rss_growth <= a.bytes_per_report * sealed_after + a.rss_slack,
        "no errors": not errors,
    }
    print(json.dumps(fig, indent=2))
    for k, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {k}")
    for e in errors[:10]:
        print("error:", e)
    if a.json:
        Path(a.json).write_text(json.dumps({"figures": fig, "checks": checks}, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
