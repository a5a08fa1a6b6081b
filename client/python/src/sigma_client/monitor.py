"""Monitor: streams one rank's embeddings of each generation to sigmad."""
from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import warnings
from dataclasses import dataclass
import weakref
from typing import Any, Mapping, Optional, Sequence

import grpc
from . import _pb
from ._queries import empty_share_shape, or_none
from .asyncq import AsyncSender
from .errors import SigmaError, invalid
from .generation import Generation, NotSealedError  # noqa: F401 (re-exported)
from .report import (GenerationReport, JobInfo, job_info_from_proto, report_from_proto)
from .sketch import parse_targets, pick_target
from .spool import DEFAULT_MAX_BYTES, Spool, default_spool_dir, read_messages
from .tensors import DTYPE_ENUM
from .world import UNKNOWN_WORLD, WorldSizeWarning, detect_rank, detect_world  # noqa: F401 (re-exported)

log = logging.getLogger("sigma_client")

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# Trailing metadata of a rate-limit refusal (RESOURCE_EXHAUSTED): milliseconds
# until the daemon takes the batch; such refusals are retried after that long.
RETRY_AFTER_KEY = "sigma-retry-after-ms"


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot read ({e.strerror})") from None


def _channel_credentials(tls: bool, ca: Optional[str], cert: Optional[str], key: Optional[str]):
    """grpc.ssl_channel_credentials for the TLS options, or None for plaintext."""
    if (cert is None) != (key is None):
        raise ValueError("tls_cert and tls_key go together")
    if not (tls or ca or cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file(ca, "tls_ca") if ca else None,
        private_key=_read_file(key, "tls_key") if key else None,
        certificate_chain=_read_file(cert, "tls_cert") if cert else None)


def _retry_after_seconds(error):
    """The daemon's retry-after hint of an RpcError in seconds, or None."""
    try:
        trailers = error.trailing_metadata() or ()
    except Exception:  # not a call error (no metadata)
        return None
    for key, value in trailers:
        if key == RETRY_AFTER_KEY:
            try:
                return max(0.0, int(value) / 1000.0)
            except ValueError:
                return None
    return None
# Refusals that say nothing about a spooled share (a wrong token): it stays spooled.
_NOT_THE_SHARE = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_PREP = {None: 0, "": 0, "l2": 1, "none": 2}
_PROBE = {"fresh": 1, "fixed": 2}
_RESUME = {"allow": 1, "must": 2, "never": 3}  # OpenSnapshot.resume (docs/server.md "Runs")
_SIGNIFICANCE_KEYS = ("probe", "trend_k", "trend_z", "trend_floor")


def _significance(**kw) -> dict:
    """The set significance settings (spec §3): probe "fresh"/"fixed", trend_k,
    trend_z, trend_floor; sigmad checks the ranges."""
    out = {k: v for k, v in kw.items() if v is not None}
    if "probe" in out and out["probe"] not in _PROBE:
        raise ValueError(f"probe must be 'fresh' or 'fixed', got {out['probe']!r}")
    return out
DEFAULT_BATCH_BYTES = 1 << 20
# Rows per Batch at most: sigmad's default --max-rows-per-batch (more is RESOURCE_EXHAUSTED,
# which happens with narrow rows, e.g. m = 4 fp16 fills 1 MiB with 131072 rows).
MAX_BATCH_ROWS = 65536
MAX_MESSAGE = 64 << 20
# A pre-sketch size that keeps every row: used when the job's n_a is not known (the
# daemon unreachable and no n_a set here); the daemon then sub-samples the rows itself.
KEEP_EVERY_ROW = 1 << 62


@dataclass(frozen=True)
class SketchParams:
    n_a: int
    seed: int
    rho: float
    preprocessing: str


class Monitor:
    """One rank's connection to sigmad for one (job, tap).

    target: "host:port", "a:1,b:2" or a list; with several the job's daemon is
    picked by rendezvous hashing (docs/python-client.md). n_a, delta, rho,
    preprocessing ("l2"/"none") and seed configure the job when it is new
    (None: the daemon's default); an existing job keeps its settings and the
    client pre-sketches with the job's effective n_a and seed.
    token: bearer token for a sigmad started with --tokens (sent as
    "authorization: Bearer TOKEN" on every call); None: $SIGMA_TOKEN if set.
    tls: connect over TLS (sigmad --tls-cert), checking the server against the
    system roots, or the PEM bundle tls_ca (which implies tls); tls_cert and
    tls_key: a client certificate for sigmad --tls-client-ca (mutual TLS);
    tls_server_name: the name expected in the server certificate.

    mode: "sync" (send()/finish() do the work in the caller's thread) or "async"
    (a bounded queue and one worker thread: send() costs a copy of the block and waits at
    most block_timeout seconds for room; finish() returns at once).
    on_error: "raise" (sync: at once; async: at the next send()/finish()/generation()/
    wait()/close()) or "warn" (logged on the "sigma_client" logger, training goes on).
    spool_dir: where shares go when the daemon stays unreachable (a retryable status after
    the retries); None: default_spool_dir() in async mode, no spool in sync mode; False:
    never. A later share, the next successful one, or `python -m sigma_client sync DIR`
    sends them, oldest first, exactly once (docs/python-client.md, "Never stall training").
    run, resume: the job's run (docs/server.md "Runs"): resume "allow" continues run (or
    creates it; None: the job's latest run), "must" requires it to exist, "never" starts a
    new run (None: the next number). The daemon names the run in its first answer; this
    monitor then continues that run (self.run).
    """

    def __init__(self, target: str | Sequence[str], job: str, tap: str = "default",
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 n_a: Optional[int] = None, delta: Optional[float] = None,
                 rho: Optional[float] = None, preprocessing: Optional[str] = None,
                 seed: Optional[int] = None, *,
                 thresholds: Optional[Mapping[str, float]] = None,
                 baseline_generation: Optional[int] = None, baseline_job: Optional[str] = None,
                 probe: Optional[str] = None, trend_k: Optional[int] = None,
                 trend_z: Optional[float] = None, trend_floor: Optional[float] = None,
                 presketch: bool = True, timeout: float = 120.0, max_retries: int = 8,
                 backoff: float = 0.2, max_backoff: float = 5.0,
                 batch_bytes: int = DEFAULT_BATCH_BYTES,
                 channel_options: Optional[Sequence[tuple[str, Any]]] = None,
                 token: Optional[str] = None, tls: bool = False,
                 tls_ca: Optional[str] = None, tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None, tls_server_name: Optional[str] = None,
                 mode: str = "sync", on_error: str = "raise", spool_dir: Any = None,
                 spool_max_bytes: int = DEFAULT_MAX_BYTES, queue_bytes: int = 256 << 20,
                 block_timeout: float = 1.0, async_timeout: float = 10.0,
                 retry_down_after: float = 5.0, run: Optional[str] = None, resume: str = "allow"):
        if mode not in ("sync", "async"):
            raise ValueError(f"mode must be 'sync' or 'async', got {mode!r}")
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        if preprocessing not in _PREP:
            raise ValueError(f"preprocessing must be 'l2' or 'none', got {preprocessing!r}")
        self.targets = parse_targets(target)
        self.target = pick_target(self.targets, job)
        self.job = job
        self.tap = tap
        if resume not in _RESUME:
            raise ValueError(f"resume must be 'allow', 'must' or 'never', got {resume!r}")
        self.run, self.resume = run, resume
        r, w, source = detect_world()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        # Where rank and world_size came from: "torch", "env", "default" or "argument".
        self.world_source = "argument" if rank is not None and world_size is not None else source
        if self.world_source == "default" and world_size is None:
            msg = UNKNOWN_WORLD.format(job=job)
            log.warning("%s", msg)
            warnings.warn(msg, WorldSizeWarning, stacklevel=2)
        if self.rank < 0 or self.world_size < 1:
            raise ValueError(f"rank {self.rank} / world_size {self.world_size}: need rank >= 0 "
                             "and world_size >= 1")
        self.n_a, self.delta, self.rho = n_a, delta, rho
        self.preprocessing, self.seed = preprocessing, seed
        self.thresholds = dict(thresholds or {})
        self.baseline_generation, self.baseline_job = baseline_generation, baseline_job
        self.significance = _significance(probe=probe, trend_k=trend_k, trend_z=trend_z,
                                          trend_floor=trend_floor)
        self.presketch = presketch
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.batch_bytes = max(1, int(batch_bytes))
        self.pb2, grpc_mod = _pb.load()
        opts = [("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE)]
        user_opts = list(channel_options or [])
        if mode == "async":
            # gRPC's defaults (1 s, growing to 120 s) would keep a restarted daemon unused for
            # minutes; the user's channel_options win.
            for k, v in (("grpc.initial_reconnect_backoff_ms", 200),
                         ("grpc.max_reconnect_backoff_ms", 2000)):
                if not any(key == k for key, _ in user_opts):
                    opts.append((k, v))
        opts += user_opts
        self._opts = opts
        # Bearer token for sigmad --tokens: `token`, else $SIGMA_TOKEN, else none.
        token = token if token is not None else os.environ.get("SIGMA_TOKEN", "")
        token = token.strip()
        if any(not ("!" <= c <= "~") for c in token):
            # As the C++ client: gRPC would refuse the header on the first call (INTERNAL).
            raise ValueError("token must be printable ASCII without spaces")
        self._metadata = (("authorization", "Bearer " + token),) if token else None
        self._credentials = _channel_credentials(tls, tls_ca, tls_cert, tls_key)
        if self._credentials is not None and tls_server_name:
            opts.append(("grpc.ssl_target_name_override", tls_server_name))
        self._channel = self._open_channel(self.target)
        self._stub = grpc_mod.SigmaMonitorStub(self._channel)
        self._fixed_params: Optional[SketchParams] = None
        self._last_params: Optional[SketchParams] = None
        # The dtype of this monitor's latest share with rows: a later share without
        # rows uses it when the daemon knows no dtype of the tap (GetJob) yet.
        self._last_kind: Optional[str] = None
        self._lock = threading.Lock()
        self.on_error = on_error
        self.async_timeout = float(async_timeout)
        self.retry_down_after = float(retry_down_after)
        if spool_dir is None and mode == "async":
            spool_dir = default_spool_dir()
        self._spool = Spool(spool_dir, spool_max_bytes) if spool_dir else None
        self._down_until = 0.0      # worker: spool at once until then (daemon found down)
        self._errors: list[Exception] = []
        self.dropped_rows = 0       # async: rows dropped because the queue stayed full
        self._async: Optional[AsyncSender] = None
        self._async_closed = False
        if mode == "async":
            self._async = AsyncSender(self, queue_bytes, block_timeout)
            ref = weakref.ref(self)
            atexit.register(lambda: ref() is not None and ref()._close_quietly())

    # ------------------------------------------------------------ plumbing
    def _open_channel(self, target: str):
        if self._credentials is None:
            return grpc.insecure_channel(target, options=self._opts)
        return grpc.secure_channel(target, self._credentials, options=self._opts)

    @property
    def mode(self) -> str:
        return "sync" if self._async is None else "async"

    def flush(self, timeout: Optional[float] = 60.0) -> bool:
        """Async mode: waits until every queued block and share was handled (sent or
        spooled); False on timeout. Then raises a pending error (on_error="raise")."""
        done = self._async.flush(timeout) if self._async is not None else True
        self._raise_pending()
        return done

    def close(self, timeout: Optional[float] = 60.0) -> None:
        """Async mode: sends (or spools) what is queued, waiting at most `timeout` s, then
        closes the channel; raises a pending error (on_error="raise")."""
        if self._async is not None and not self._async_closed:
            sender, self._async_closed = self._async, True
            if not sender.close(timeout):
                self._fail(SigmaError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"close: the queue was not empty after {timeout} s "
                                      f"({sender.queued_bytes} bytes of rows left unsent)",
                                      target=self.target), "close")
        self._channel.close()
        self._raise_pending()

    def _close_quietly(self) -> None:
        try:
            if not self._async_closed:
                self.close()
        except Exception as e:  # at interpreter exit: say it, do not raise
            log.warning("sigma_client: %s", e)

    # ------------------------------------------------------------ errors (on_error)
    def _fail(self, e: Exception, where: str) -> None:
        """Reports an error by on_error: sync+raise raises it now; async+raise keeps it for
        the next call; warn logs it."""
        if self.on_error == "warn":
            log.warning("sigma_client %s/%s %s: %s", self.job, self.tap, where, e)
            return
        if self._async is None or threading.current_thread() is not self._async._thread:
            raise e
        with self._lock:
            self._errors.append(e)

    def _raise_pending(self) -> None:
        with self._lock:
            errs, self._errors = self._errors, []
        if errs:
            if len(errs) > 1:
                log.warning("sigma_client: %d more errors: %s", len(errs) - 1,
                            "; ".join(map(str, errs[1:])))
            raise errs[0]

    def _dropped(self, gen: Generation, rows: int) -> None:
        self.dropped_rows += rows
        e = SigmaError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"client: async queue full for {self._async.block_timeout} s "
                       f"(queue_bytes = {self._async.queue_bytes}): dropped {rows} rows of "
                       f"generation {gen.k}", target=self.target)
        if self.on_error == "warn":
            log.warning("sigma_client %s/%s: %s", self.job, self.tap, e)
        else:
            with self._lock:
                self._errors.append(e)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"Monitor(target={self.target!r}, job={self.job!r}, tap={self.tap!r}, "
                f"rank={self.rank}, world_size={self.world_size}, run={self.run!r})")

    def _call(self, name: str, fn, request, retry: bool = True, target: Optional[str] = None):
        """Calls fn(request), retrying UNAVAILABLE/DEADLINE_EXCEEDED with exponential backoff.
        A callable request is called once per attempt (a fresh request iterator).
        target: the daemon fn talks to, for the error (default: this job's).
        On the async worker: at most 2 retries and async_timeout s per attempt, so that a
        down or hung daemon sends the share to the spool soon (at close: the full budget)."""
        attempt = 0
        timeout, max_retries = self.timeout, self.max_retries
        if self._on_worker() and not self._async_closed:
            timeout, max_retries = min(timeout, self.async_timeout), min(max_retries, 2)
        while True:
            try:
                req = request() if callable(request) else request
                return fn(req, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else None
                after = _retry_after_seconds(e) if code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
                if retry and (code in RETRYABLE or after is not None) and attempt < max_retries:
                    delay = min(self.max_backoff, self.backoff * (2 ** attempt))
                    delay *= 0.5 + random.random() / 2
                    time.sleep(max(delay, after or 0.0))
                    attempt += 1
                    continue
                raise SigmaError.from_rpc_error(e, rpc=name, target=target or self.target) from None

    def _on_worker(self) -> bool:
        return self._async is not None and threading.current_thread() is self._async._thread

    def _config_proto(self, n_a=None, delta=None, rho=None, preprocessing=None, seed=None,
                      thresholds=None, baseline_generation=None, baseline_job=None,
                      significance=None):
        c = self.pb2.JobConfig()
        for k, v in (significance or {}).items():
            if k == "probe":
                c.probe = _PROBE[v]
            elif k == "trend_k":
                c.trend_k = int(v)
            else:
                setattr(c, k, float(v))
        if n_a is not None:
            c.n_a = int(n_a)
        if delta is not None:
            c.delta = float(delta)
        if rho is not None:
            c.rho = float(rho)
        if preprocessing is not None:
            if preprocessing not in _PREP:
                raise ValueError(f"preprocessing must be 'l2' or 'none', got {preprocessing!r}")
            c.preprocessing = _PREP[preprocessing]
        if seed is not None:
            c.seed = int(seed)
        if baseline_generation is not None:
            c.baseline_generation = int(baseline_generation)
        if baseline_job is not None:
            c.baseline_job = baseline_job
        for k, v in (thresholds or {}).items():
            if v is None:
                continue
            if k not in ("drift_warning", "drift_critical", "divergence_warning", "track1_stable"):
                raise ValueError(f"unknown threshold {k!r}")
            setattr(c.thresholds, k, float(v))
        return c

    def _own_config(self):
        return self._config_proto(self.n_a, self.delta, self.rho, self.preprocessing, self.seed,
                                  self.thresholds, self.baseline_generation, self.baseline_job,
                                  self.significance)

    # ------------------------------------------------------------ public API
    def generation(self, k: int, corpus_size: Optional[int] = None) -> "Generation":
        """A context manager for this rank's share of generation k."""
        self._raise_pending()
        return Generation(self, int(k), corpus_size)

    def history(self, tap: Optional[str] = None, run: Optional[str] = None) -> list[GenerationReport]:
        """Every sealed report of the job's run (this monitor's tap; tap="" for all), by
        generation. run: default this monitor's run, else the job's latest."""
        req = self.pb2.GetHistoryRequest(job=self.job, tap=self.tap if tap is None else tap,
                                         run=(self.run if run is None else run) or "")
        resp = self._call("GetHistory", self._stub.GetHistory, req)
        return [report_from_proto(r) for r in resp.reports]

    def list_jobs(self) -> list[JobInfo]:
        """The jobs of every target, merged (sorted by name)."""
        jobs = {}
        for t in self.targets:
            if t == self.target:
                stub, ch = self._stub, None
            else:
                ch = self._open_channel(t)
                stub = _pb.load()[1].SigmaMonitorStub(ch)
            try:
                resp = self._call("ListJobs", stub.ListJobs, self.pb2.ListJobsRequest(), target=t)
            finally:
                if ch is not None:
                    ch.close()
            for j in resp.jobs:
                jobs.setdefault(j.job, job_info_from_proto(j))
        return [jobs[k] for k in sorted(jobs)]

    def job_info(self, m: Optional[int] = None) -> Optional[JobInfo]:
        """This job's effective configuration as the daemon resolves it (GetJob; n_a for
        dimension m when given, else for the job's m), or None when the daemon does not
        know the job yet."""
        raw = self._job_info_proto(m)
        return None if raw is None else job_info_from_proto(raw)

    def _job_info_proto(self, m: Optional[int] = None):
        """GetJob's JobInfo (n_a resolved for m when given), None when the job is unknown."""
        req = self.pb2.GetJobRequest(job=self.job, **({} if m is None else {"m": int(m)}))
        return or_none(lambda: self._call("GetJob", self._stub.GetJob, req))

    def _empty_share_shape(self, k: int) -> tuple[int, Optional[str]]:
        """(m, dtype) of this rank's share of generation k without rows (GetJob)."""
        return empty_share_shape(self._job_info_proto(), self.tap, k)

    def configure(self, *, n_a: Optional[int] = None, delta: Optional[float] = None,
                  rho: Optional[float] = None, preprocessing: Optional[str] = None,
                  seed: Optional[int] = None, thresholds: Optional[Mapping[str, float]] = None,
                  baseline_generation: Optional[int] = None,
                  baseline_job: Optional[str] = None, baseline_run: Optional[str] = None,
                  **threshold_kw) -> JobInfo:
        """Creates or updates the job's configuration (fields left None are not sent).

        Thresholds may be given as a mapping or as keywords (drift_warning,
        drift_critical, divergence_warning, track1_stable); the significance
        settings as keywords probe ("fresh"/"fixed"), trend_k, trend_z,
        trend_floor (spec §3). baseline_run: compare against that run (of baseline_job,
        else of this job; docs/server.md "Runs"). Sketch parameters are fixed once a generation has
        sealed (SigmaError FAILED_PRECONDITION)."""
        sig = _significance(**{k: threshold_kw.pop(k) for k in list(threshold_kw)
                               if k in _SIGNIFICANCE_KEYS})
        th = dict(thresholds or {})
        th.update(threshold_kw)
        cfg = self._config_proto(n_a, delta, rho, preprocessing, seed, th,
                                 baseline_generation, baseline_job, sig)
        if baseline_run is not None:
            cfg.baseline_run = baseline_run
        self.significance.update(sig)
        for name, val in (("n_a", n_a), ("delta", delta), ("rho", rho),
                          ("preprocessing", preprocessing), ("seed", seed),
                          ("baseline_generation", baseline_generation),
                          ("baseline_job", baseline_job)):
            if val is not None:
                setattr(self, name, val)
        self.thresholds.update({k: v for k, v in th.items() if v is not None})
        # The Monitor names its job on purpose: configure() creates it when new.
        req = self.pb2.ConfigureJobRequest(job=self.job, config=cfg, create=True)
        info = self._call("ConfigureJob", self._stub.ConfigureJob, req)
        self._fixed_params = None
        return job_info_from_proto(info)

    def finish(self) -> JobInfo:
        """Marks the job finished (FinishJob; call it once, after the last generation): its
        history stays, new generations are refused, the stale-job alert stops, and its series
        leave /metrics after sigmad's --finished-series-ttl-s. Idempotent. Async mode: flushes
        first, so that queued shares reach the daemon before it."""
        if self._async is not None:
            self.flush()
        req = self.pb2.FinishJobRequest(job=self.job)
        return job_info_from_proto(self._call("FinishJob", self._stub.FinishJob, req))

    def close_generation(self, k: int) -> GenerationReport:
        """Seals generation k now with whatever ranks have sent (explicit close)."""
        req = self.pb2.CloseGenerationRequest(job=self.job, tap=self.tap, generation=int(k), run=self.run or "")
        return report_from_proto(self._call("CloseGeneration", self._stub.CloseGeneration, req))

    def get_report(self, k: int) -> Optional[GenerationReport]:
        """The sealed report of generation k of this tap (GetReport); None while the daemon
        has none (not sealed yet, or an unknown job)."""
        req = self.pb2.GetReportRequest(job=self.job, tap=self.tap, generation=int(k), run=self.run or "")
        r = or_none(lambda: self._call("GetReport", self._stub.GetReport, req))
        return None if r is None else report_from_proto(r)

    # ------------------------------------------------------------ internals
    def _sketch_params(self, m: int) -> SketchParams:
        """The job's effective n_a / seed / rho / preprocessing (fixed once a generation sealed).
        On the async worker with the daemon unreachable: the last ones the daemon gave, else
        this monitor's own settings (so that the share can still go to the spool)."""
        if self._fixed_params is not None:
            return self._fixed_params
        # n_a unknown (the daemon resolves the default): keep every row, the daemon sub-samples.
        own = SketchParams(
            n_a=int(self.n_a) if self.n_a is not None else KEEP_EVERY_ROW,
            seed=int(self.seed) if self.seed is not None else 0,
            rho=float(self.rho) if self.rho is not None else 1.0,
            preprocessing=self.preprocessing or "l2")
        try:
            self._last_params = self._query_sketch_params(m, own)
        except SigmaError as e:
            if not (self._on_worker() and e.code in RETRYABLE and self._spool is not None):
                raise
            log.warning("sigma_client %s/%s: daemon unreachable (%s); pre-sketching with %s",
                        self.job, self.tap, e.code.name, self._last_params or own)
            self._down_until = time.monotonic() + self.retry_down_after
            return self._last_params or own
        return self._last_params

    def _query_sketch_params(self, m: int, own: SketchParams) -> SketchParams:
        info = self._job_info_proto(m)
        if info is None and self.presketch:
            # A new job: the daemon's config file (`defaults:`, `jobs.NAME`) may set its
            # seed or n_a, which the pre-sketch must use. Create the job with this
            # monitor's settings (what OpenSnapshot.config would do) and read them back.
            req = self.pb2.ConfigureJobRequest(job=self.job, config=self._own_config(),
                                               create=True)
            try:
                info = self._call("ConfigureJob", self._stub.ConfigureJob, req)
            except SigmaError as e:
                # Another rank opened the job meanwhile with other sketch settings: its win.
                if e.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
            info = self._job_info_proto(m)  # resolved for m (ConfigureJob's is for the job's m)
        if info is None:
            return own
        c = info.config  # effective: every field set, n_a for m
        params = SketchParams(n_a=int(c.n_a), seed=int(c.seed), rho=float(c.rho),
                              preprocessing={1: "l2", 2: "none"}.get(c.preprocessing, own.preprocessing))
        if info.generations_sealed > 0:
            self._fixed_params = params
        return params

    def _share_messages(self, gen: "Generation") -> list:
        pb2 = self.pb2
        if gen.m is None:
            # A rank with no rows still finishes its share (else the snapshot never seals):
            # it needs the tap's m and dtype, which the daemon knows once any rank has opened.
            m, kind = self._empty_share_shape(gen.k)
            if m <= 0:
                raise invalid(f"rank {self.rank} sent no rows for generation {gen.k} and the "
                              f"daemon does not know the dimension m of job {self.job!r} yet")
            gen.m, gen.kind = m, kind or self._last_kind or "fp32"
        open_msg = pb2.OpenSnapshot(job=self.job, tap=self.tap, generation=gen.k, rank=self.rank,
                                    world_size=self.world_size, m=gen.m or 0,
                                    dtype=DTYPE_ENUM.get(gen.kind, 0), config=self._own_config(),
                                    run=self.run or "", resume=_RESUME[self.resume])
        if gen.corpus_size is not None:
            open_msg.corpus_size = int(gen.corpus_size)
        msgs = [pb2.IngestRequest(open=open_msg)]
        rows, ids = gen._rows_to_send()
        if rows is not None and rows.shape[0]:
            per = max(1, min(MAX_BATCH_ROWS, self.batch_bytes // (rows.shape[1] * rows.dtype.itemsize)))
            for seq, i in enumerate(range(0, rows.shape[0], per)):
                block = rows[i:i + per]
                msgs.append(pb2.IngestRequest(batch=pb2.Batch(
                    seq=seq, rows=block.shape[0], data=block.tobytes(),
                    sample_ids=ids[i:i + per].tolist())))
        end = pb2.EndOfShare(count=gen.rows_seen)
        if gen.presketched:
            end.max_energy = gen.max_energy
            end.mean_energy = gen.energy_sum / gen.rows_seen if gen.rows_seen else 0.0
            end.rho_violations = gen.rho_violations
        msgs.append(pb2.IngestRequest(end=end))
        return msgs

    def _send_share(self, gen: "Generation"):
        return self._ingest(self._share_messages(gen))

    def _ingest(self, msgs: list):
        # Each attempt re-sends the whole share; the daemon counts a (rank, seq) once.
        resp = self._call("Ingest", self._stub.Ingest, lambda: iter(msgs))
        if resp is not None and resp.run:  # the daemon named the run: later shares continue it
            self.run, self.resume = resp.run, "allow"
        return resp

    def _deliver(self, gen: "Generation"):
        """Sends gen's share after this job/tap/rank's spooled ones (oldest first, so that
        generations seal in order); to the spool instead when the daemon is unreachable
        (a retryable status after the retries), and for retry_down_after s after that
        without trying. Returns the IngestResponse, or None when spooled."""
        if self._spool is None:
            return self._send_share(gen)
        msgs = self._share_messages(gen)
        why = "found down less than retry_down_after s ago"
        if time.monotonic() >= self._down_until:
            try:
                self.drain_spool()
                return self._ingest(msgs)
            except SigmaError as e:
                if e.code not in RETRYABLE:
                    raise
                self._down_until = time.monotonic() + self.retry_down_after
                why = e.code.name
        path = self._spool.write(self.target, self.job, self.tap, gen.k, self.rank,
                                 self.world_size, msgs)
        log.warning("sigma_client %s/%s: daemon %s unreachable (%s): generation %d spooled to %s",
                    self.job, self.tap, self.target, why, gen.k, path)
        return None

    def _last_drain(self) -> None:
        """At close: one more try at the spooled shares, whenever the daemon was last down."""
        if self._spool is None or not self._spool.pending(self.job, self.tap, self.rank):
            return
        try:
            self.drain_spool()
        except SigmaError as e:
            left = len(self._spool.pending(self.job, self.tap, self.rank))
            log.warning("sigma_client %s/%s: %d shares left in the spool (%s): send them with "
                        "python -m sigma_client sync %s", self.job, self.tap, left, e.code.name,
                        self._spool.dir)

    def drain_spool(self, spool: Optional[Spool] = None) -> tuple[int, list[tuple[str, str]]]:
        """Sends the spooled shares of this job/tap/rank (spool: default this monitor's),
        oldest first; each file is deleted once sigmad answered OK. Returns (sent, failed):
        a share refused for good (not retryable) or unreadable is renamed *.failed and listed
        with the reason. A retryable error (daemon still down) raises SigmaError."""
        spool = spool or self._spool
        sent, failed = 0, []
        for share in (spool.pending(self.job, self.tap, self.rank) if spool else []):
            try:
                self._ingest(read_messages(share.path, self.pb2))
            except (OSError, ValueError, SigmaError) as e:
                if isinstance(e, SigmaError) and e.code in RETRYABLE + _NOT_THE_SHARE:
                    raise
                os.replace(share.path, str(share.path) + ".failed")
                log.warning("sigma_client: spooled share %s refused: %s", share.path, e)
                failed.append((str(share.path), str(e)))
                continue
            os.unlink(share.path)
            sent += 1
        return sent, failed

