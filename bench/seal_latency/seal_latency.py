"""Small-seal latency behind a large seal (docs/benchmarks.md, issue 14 item 3).

Against a real sigmad (CPU backend), the latency of m = 64 seals (one Ingest
stream each: open, one batch, EndOfShare -> sealed response) is measured

  * idle:   on an otherwise idle daemon;
  * loaded: while another job's m = 4096 seal runs;

once with the size-classed seal lanes (--small-seal-max-m 1024, the default)
and once with every seal on one lane (--small-seal-max-m 1048576, the old
single compute worker), in the same run. Prints the median latencies and the
ratios loaded / idle. Not a test: figures depend on the machine.

    .venv/bin/python bench/seal_latency/seal_latency.py --sigmad build/server/sigmad
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python" / "src"))

from sigma_client import _pb  # noqa: E402
from sigma_client.daemon import start_sigmad  # noqa: E402


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def share(pb2, job: str, m: int, data: np.ndarray, batch_rows: int, n_a: int):
    yield pb2.IngestRequest(open=pb2.OpenSnapshot(job=job, generation=0, rank=0, world_size=1, m=m,
                                                  dtype=pb2.DTYPE_FP32, config=pb2.JobConfig(n_a=n_a)))
    for seq, b in enumerate(range(0, len(data), batch_rows)):
        chunk = data[b:b + batch_rows]
        yield pb2.IngestRequest(batch=pb2.Batch(seq=seq, rows=len(chunk), data=chunk.tobytes()))
    yield pb2.IngestRequest(end=pb2.EndOfShare())


def small_seals(stub, pb2, prefix: str, count: int, rng, stop=None) -> list[float]:
    out = []
    for i in range(count):
        if stop is not None and stop.is_set():
            break
        data = rng.standard_normal((512, 64)).astype("<f4")
        t0 = time.perf_counter()
        resp = stub.Ingest(share(pb2, f"{prefix}.{i}", 64, data, 512, 512), timeout=600)
        assert resp.sealed  # a sample counts when it started while the large seal ran
        out.append(time.perf_counter() - t0)
    return out


def run(sigmad: str, lane_split: int, a) -> dict[str, float]:
    import grpc
    pb2, grpc_mod = _pb.load()
    work = Path(tempfile.mkdtemp(prefix="sigma_seal_latency_"))
    d = start_sigmad(sigmad, work, extra_args=["--backend", "cpu", "--seal-batch-window-ms", "0",
                                               "--small-seal-max-m", str(lane_split)])
    target = d.target if isinstance(d.target, str) else d.target()
    opts = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    stub = grpc_mod.SigmaMonitorStub(grpc.insecure_channel(target, options=opts))
    rng = np.random.default_rng(7)
    try:
        small_seals(stub, pb2, "warm", 3, rng)
        idle = small_seals(stub, pb2, "idle", a.count, rng)
        big = rng.standard_normal((a.large_rows, a.large_m)).astype("<f4")
        done = threading.Event()
        big_seconds = []

        def large():
            t0 = time.perf_counter()
            r = stub.Ingest(share(pb2, "large", a.large_m, big, 1024, a.large_rows), timeout=1800)
            big_seconds.append(time.perf_counter() - t0)
            assert r.sealed
            done.set()

        rss_before = rss_bytes(d.proc.pid)
        t = threading.Thread(target=large)
        t.start()
        time.sleep(a.lead_seconds)  # the large share is uploaded and its seal is running
        loaded = small_seals(stub, pb2, "loaded", a.count, rng, stop=done)
        t.join()
        time.sleep(0.5)
        rss_after = rss_bytes(d.proc.pid)
    finally:
        d.stop() if hasattr(d, "stop") else d.proc.terminate()
    return {"idle_median_s": statistics.median(idle), "loaded_median_s": statistics.median(loaded) if loaded else float("nan"),
            "loaded_samples": len(loaded), "large_seal_s": big_seconds[0],
            "rss_before_mb": rss_before / 2**20, "rss_after_mb": rss_after / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sigmad", default=str(REPO / "build" / "server" / "sigmad"))
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--large-m", type=int, default=4096)
    ap.add_argument("--large-rows", type=int, default=4096)
    ap.add_argument("--lead-seconds", type=float, default=3.0)
    a = ap.parse_args()
    for name, split in (("lanes", 1024), ("one lane", 1 << 20)):
        r = run(a.sigmad, split, a)
        ratio = r["loaded_median_s"] / r["idle_median_s"]
        print(f"{name:9s}: m=64 seal idle {r['idle_median_s'] * 1e3:.1f} ms, during an m={a.large_m} seal "
              f"{r['loaded_median_s'] * 1e3:.1f} ms ({r['loaded_samples']} samples), ratio {ratio:.1f}; "
              f"large share + seal {r['large_seal_s']:.1f} s; sigmad RSS {r['rss_before_mb']:.0f} MiB before "
              f"the large share, {r['rss_after_mb']:.0f} MiB after its seal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
