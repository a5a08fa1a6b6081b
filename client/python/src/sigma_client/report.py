"""Plain dataclasses for the daemon's messages (GenerationReport, JobInfo, ...)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .tensors import DTYPE_NAME


@dataclass(frozen=True)
class Alert:
    rule: str       # collapse_contraction, collapse_expansion, early_warning_divergence,
                    # early_warning_trend, track1_invalid_rho, low_confidence
    severity: str   # info, warning, critical
    direction: str = ""  # early_warning_trend: "contraction" or "expansion"


@dataclass(frozen=True)
class ReportFlags:
    rho_violated: bool = False
    n_a_below_m: bool = False
    low_confidence: bool = False
    cholesky_failed: bool = False
    failure_reason: str = ""
    rho_violations: int = 0
    max_energy: float = 0.0
    mean_energy: float = 0.0
    closed_explicitly: bool = False


@dataclass(frozen=True)
class ShareDigest:
    """One rank's share as sealed (issue 15): a resend is answered only with the same digest."""
    rank: int = 0
    rows: int = 0        # rows sigmad accepted from the rank
    digest: int = 0      # sum of the row hashes mod 2^64 (server/include/sigma/server/share.h)
    finished: bool = False  # False: sealed by CloseGeneration before its EndOfShare


@dataclass(frozen=True)
class PerDimension:
    track1_drift: float = 0.0
    track2_drift: float = 0.0
    divergence: float = 0.0
    drift_halfwidth: float = 0.0
    drift_halfwidth_pop: float = 0.0
    drift_halfwidth_used: float = 0.0


@dataclass(frozen=True)
class GenerationReport:
    """One sealed snapshot (job, tap, generation): spec §3's tracks, drift and alerts."""
    job: str = ""
    tap: str = ""
    generation: int = 0
    m: int = 0
    n: float = 0.0
    n_a: int = 0
    backend: str = ""
    track1_lower: float = 0.0
    track1_upper: float = 0.0
    track2: float = 0.0
    track2_raw: float = 0.0
    track2_bias: float = 0.0
    track2_ci_halfwidth: float = 0.0
    track1_drift: float = 0.0
    track2_drift: float = 0.0
    divergence: float = 0.0
    drift_halfwidth: float = 0.0
    per_dim: PerDimension = field(default_factory=PerDimension)
    baseline_generation: int = 0
    baseline_job: str = ""
    flags: ReportFlags = field(default_factory=ReportFlags)
    alerts: tuple[Alert, ...] = ()
    generations_to_critical: Optional[float] = None
    compute_seconds: float = 0.0
    sealed_unix_ms: int = 0
    world_size: int = 0
    ranks_finished: int = 0
    # spec §3 "Two kinds of uncertainty" / "Early warning by significance"
    track2_pop_halfwidth: float = 0.0   # z sd(q) / sqrt(n_A), next to the corpus track2_ci_halfwidth
    drift_halfwidth_pop: float = 0.0
    drift_halfwidth_used: float = 0.0   # the job's probe: pop (fresh) or corpus (fixed)
    drift_zscore: float = 0.0
    trend_evaluated: bool = False
    trend_note: str = ""                # why early_warning_trend was not evaluated
    # The job's thresholds when this generation was sealed ({} names none; None:
    # sealed by a sigmad that did not record them).
    thresholds_at_seal: Optional[dict] = None
    # What was sealed: one digest per rank, and the generation's digest over them.
    shares: tuple[ShareDigest, ...] = ()
    data_digest: str = ""
    run: str = ""                       # the job's run (store key job, run, tap, generation)
    baseline_run: str = ""              # the baseline's run (with baseline_job)

    @property
    def track2_ci(self) -> tuple[float, float]:
        return (self.track2 - self.track2_ci_halfwidth, self.track2 + self.track2_ci_halfwidth)

    @property
    def failed(self) -> bool:
        return self.flags.cholesky_failed

    @property
    def drift_significant(self) -> bool:
        """|track2_drift| beyond the half-width the job's probe setting uses."""
        return abs(self.track2_drift) > self.drift_halfwidth_used

    def alert_names(self) -> list[str]:
        return [f"{a.rule}:{a.severity}" for a in self.alerts]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Thresholds:
    drift_warning: Optional[float] = None
    drift_critical: Optional[float] = None
    divergence_warning: Optional[float] = None
    track1_stable: Optional[float] = None


@dataclass(frozen=True)
class JobConfig:
    n_a: Optional[int] = None
    delta: Optional[float] = None
    rho: Optional[float] = None
    preprocessing: str = ""       # "l2", "none" or "" (unspecified)
    seed: Optional[int] = None
    baseline_generation: Optional[int] = None
    baseline_job: str = ""
    baseline_run: str = ""        # runs: the baseline's run
    thresholds: Thresholds = field(default_factory=Thresholds)
    probe: str = ""               # "fresh", "fixed" or "" (unspecified)
    trend_k: Optional[int] = None
    trend_z: Optional[float] = None
    trend_floor: Optional[float] = None


@dataclass(frozen=True)
class TapInfo:
    tap: str
    m: int                        # 0 while unknown
    dtype: str                    # "fp32", ...; "" when sigmad knows none since it started
    open: tuple[int, ...] = ()    # open generations (GetJob only)


@dataclass(frozen=True)
class JobInfo:
    job: str
    config: JobConfig
    taps: tuple[str, ...]
    generations_sealed: int
    last_generation: int
    m: int
    tap_info: tuple[TapInfo, ...] = ()
    finished: bool = False        # FinishJob was called (Monitor.finish)
    finished_unix_ms: int = 0
    runs: tuple[str, ...] = ()     # the job's runs in creation order (docs/server.md "Runs")
    run: str = ""                 # the latest run, which generations_sealed/last_generation count


# ---------------------------------------------------------------- conversion

_PREP_NAMES = {0: "", 1: "l2", 2: "none"}
_PROBE_NAMES = {0: "", 1: "fresh", 2: "fixed"}


def _opt(msg, name):
    return getattr(msg, name) if msg.HasField(name) else None


def report_from_proto(msg) -> GenerationReport:
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(GenerationReport):
        name = f.name
        if name == "per_dim":
            kw[name] = PerDimension(**{g.name: getattr(msg.per_dim, g.name)
                                       for g in dataclasses.fields(PerDimension)})
        elif name == "flags":
            kw[name] = ReportFlags(**{g.name: getattr(msg.flags, g.name)
                                      for g in dataclasses.fields(ReportFlags)})
        elif name == "alerts":
            kw[name] = tuple(Alert(rule=a.rule, severity=a.severity, direction=a.direction) for a in msg.alerts)
        elif name == "shares":
            kw[name] = tuple(ShareDigest(rank=d.rank, rows=d.rows, digest=d.digest, finished=d.finished)
                             for d in msg.shares)
        elif name == "generations_to_critical":
            kw[name] = _opt(msg, name)
        elif name == "thresholds_at_seal":
            t = msg.thresholds_at_seal
            kw[name] = ({k: getattr(t, k) for k in ("drift_warning", "drift_critical", "divergence_warning",
                                                    "track1_stable") if t.HasField(k)}
                        if msg.HasField("thresholds_at_seal") else None)
        else:
            kw[name] = getattr(msg, name)
    return GenerationReport(**kw)


def config_from_proto(msg) -> JobConfig:
    th = msg.thresholds
    return JobConfig(
        n_a=_opt(msg, "n_a"), delta=_opt(msg, "delta"), rho=_opt(msg, "rho"),
        preprocessing=_PREP_NAMES.get(msg.preprocessing, str(msg.preprocessing)),
        seed=_opt(msg, "seed"), baseline_generation=_opt(msg, "baseline_generation"),
        baseline_job=msg.baseline_job, baseline_run=msg.baseline_run,
        thresholds=Thresholds(drift_warning=_opt(th, "drift_warning"),
                              drift_critical=_opt(th, "drift_critical"),
                              divergence_warning=_opt(th, "divergence_warning"),
                              track1_stable=_opt(th, "track1_stable")),
        probe=_PROBE_NAMES.get(msg.probe, str(msg.probe)), trend_k=_opt(msg, "trend_k"),
        trend_z=_opt(msg, "trend_z"), trend_floor=_opt(msg, "trend_floor"))


def job_info_from_proto(msg) -> JobInfo:
    taps = tuple(TapInfo(tap=t.tap, m=t.m, dtype=DTYPE_NAME.get(t.dtype, ""),
                         open=tuple(o.generation for o in t.open)) for t in msg.tap_info)
    return JobInfo(job=msg.job, config=config_from_proto(msg.config), taps=tuple(msg.taps),
                   generations_sealed=msg.generations_sealed, last_generation=msg.last_generation,
                   m=msg.m, tap_info=taps, finished=msg.finished,
                   finished_unix_ms=msg.finished_unix_ms, runs=tuple(msg.runs), run=msg.run)
