"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/); run from the
repository root with the venv: .venv/bin/python tests/fuzz/make_corpus.py.
Ingest seeds: records [u16 LE length][serialized sigma.v1.IngestRequest]."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "client" / "python" / "src"))
from sigma_client import _pb  # noqa: E402

pb2, _ = _pb.load()


def rec(msg) -> bytes:
    b = msg.SerializeToString()
    return struct.pack("<H", len(b)) + b


def open_(job, g=0, rank=0, ws=1, m=4, dtype=pb2.DTYPE_FP32, **kw):
    return pb2.IngestRequest(open=pb2.OpenSnapshot(job=job, tap="t", generation=g, rank=rank, world_size=ws,
                                                   m=m, dtype=dtype, **kw))


def batch(x: np.ndarray, seq, ids=None):
    b = pb2.Batch(seq=seq, rows=x.shape[0], data=x.tobytes())
    if ids is not None:
        b.sample_ids.extend(ids)
    return pb2.IngestRequest(batch=b)


def end(**kw):
    return pb2.IngestRequest(end=pb2.EndOfShare(**kw))


rng = np.random.default_rng(7)
x = rng.standard_normal((12, 4))
seeds = {
    "fp32_one_rank": [open_("j"), batch(x[:6].astype("<f4"), 0), batch(x[6:].astype("<f4"), 1), end()],
    "fp16_dup_seq": [open_("j", dtype=pb2.DTYPE_FP16), batch(x[:4].astype("<f2"), 0), batch(x[:4].astype("<f2"), 0), end()],
    "bf16_ids": [open_("j", dtype=pb2.DTYPE_BF16),
                 pb2.IngestRequest(batch=pb2.Batch(seq=0, rows=3, data=(x[:3].astype("<f4").view("<u4") >> 16)
                                                   .astype("<u2").tobytes(), sample_ids=[5, 9, 1])), end(count=10)],
    "fp64_config_none": [open_("j", m=4, dtype=pb2.DTYPE_FP64, corpus_size=20,
                               config=pb2.JobConfig(n_a=8, preprocessing=pb2.PREPROCESSING_NONE, rho=2.0, seed=3)),
                         batch(x, 0), end()],
    "two_ranks": [open_("j", rank=0, ws=2), batch(x[:5].astype("<f4"), 0), end(),
                  open_("j", rank=1, ws=2), batch(x[5:].astype("<f4"), 0), end()],
    "presketch_end": [open_("j"), batch(x[:2].astype("<f4"), 0),
                      end(count=100, max_energy=1.0, mean_energy=1.0, rho_violations=0)],
    "nan_then_good": [open_("j"), batch(np.full((1, 4), np.nan, "<f4"), 0), open_("j"), batch(x[:1].astype("<f4"), 1)],
    "size_mismatch": [open_("j"), pb2.IngestRequest(batch=pb2.Batch(seq=0, rows=2, data=b"\0" * 7)), end()],
    "half_close": [open_("k", g=3), batch(x[:3].astype("<f4"), 0)],
}
(HERE / "corpus" / "ingest").mkdir(parents=True, exist_ok=True)
for name, msgs in seeds.items():
    (HERE / "corpus" / "ingest" / name).write_bytes(b"".join(rec(m) for m in msgs))

configs = {
    "config_full": b"\0" + b"""listen: 0.0.0.0:50051
metrics_listen: 127.0.0.1:9464
db: /tmp/x.db
backend: cpu
max_jobs: 10
max_open_snapshots: 4
max_memory_bytes: 1048576
seal_batch_window_ms: 5
defaults:
  delta: 1.0e-6
  thresholds: {drift_warning: 0.1, drift_critical: 0.5, divergence_warning: 0.1, track1_stable: 0.01}
jobs:
  opt125m:
    n_a: 23040
    preprocessing: l2
    rho: 1.0
    seed: 0
    baseline_generation: 0
    baseline_job: other
""",
    "tokens": b"\1" + b"""- token_sha256: 8969cd2c6676dd9097981e1312719781817e40f844c720f14d7926a846f09cc4
  role: write
  job_prefixes: ["teamA."]
  name: trainer
- token: plain-secret
  role: read
  job_prefixes: [""]
""",
    "basic_auth": b"\2# users\nscraper:926d3a2dd68393416b7a8348aaadfe4e0c56de6259e17078a0fa1f4dd6e519ae\n",
    "cmdline": b"\3--listen\0127.0.0.1:0\0--max-jobs=5\0--backend\0cpu\0--tokens\0t.yaml",
}
(HERE / "corpus" / "config").mkdir(parents=True, exist_ok=True)
for name, data in configs.items():
    (HERE / "corpus" / "config" / name).write_bytes(data)
