"""Sealed reports as scalars indexed by generation: TensorBoard (SummaryWriter) and W&B.

    from torch.utils.tensorboard import SummaryWriter
    from sigma_client.integrations.tensorboard import log_reports
    log_reports(SummaryWriter("runs/sigma"), mon.history())      # or a list of reports

Per report (tag prefix "sigma/JOB/TAP/"): track1_lower, track1_upper, track2 (and its 95 %
half-width), per-dimension track1_drift, track2_drift, divergence, drift_halfwidth and
the z-score track2_drift / drift_halfwidth (0 when the half-width is 0), n, n_a, and
alert/RULE = 0 (none), 1 (info), 2 (warning), 3 (critical) for every rule seen in the
series; global_step = the generation. log_reports_wandb does the same with wandb.log
(an optional dependency, imported only there).
"""
from __future__ import annotations

from typing import Any, Iterable

from ..report import GenerationReport

SEVERITY = {"info": 1, "warning": 2, "critical": 3}


def report_scalars(r: GenerationReport, rules: Iterable[str] = ()) -> dict[str, float]:
    """{name: value} for one report (names without the prefix)."""
    pd = r.per_dim
    z = pd.track2_drift / pd.drift_halfwidth if pd.drift_halfwidth > 0 else 0.0
    out = {
        "track1_lower": r.track1_lower, "track1_upper": r.track1_upper, "track2": r.track2,
        "track2_ci_halfwidth": r.track2_ci_halfwidth,
        "drift_per_dim/track1": pd.track1_drift, "drift_per_dim/track2": pd.track2_drift,
        "drift_per_dim/divergence": pd.divergence, "drift_per_dim/halfwidth": pd.drift_halfwidth,
        "drift_per_dim/z_score": z, "n": r.n, "n_a": float(r.n_a),
    }
    fired = {}
    for a in r.alerts:
        fired[a.rule] = max(fired.get(a.rule, 0), SEVERITY.get(a.severity, 1))
    for rule in set(rules) | set(fired):
        out[f"alert/{rule}"] = float(fired.get(rule, 0))
    return out


def _series(reports: Iterable[GenerationReport]):
    reports = sorted(reports, key=lambda r: (r.job, r.tap, r.generation))
    rules = {a.rule for r in reports for a in r.alerts}
    for r in reports:
        yield f"sigma/{r.job}/{r.tap}/", r, report_scalars(r, rules)


def log_reports(writer: Any, reports: Iterable[GenerationReport]) -> int:
    """Writes every report's scalars to a SummaryWriter (global_step = generation); returns
    how many scalars were written. The writer is flushed, not closed."""
    count = 0
    for prefix, r, scalars in _series(reports):
        for name, value in scalars.items():
            writer.add_scalar(prefix + name, value, global_step=r.generation)
            count += 1
    writer.flush()
    return count


def log_reports_wandb(reports: Iterable[GenerationReport], run: Any = None) -> int:
    """The same to W&B (`run`, default wandb.run; needs `pip install wandb`), one log per
    report with step = its generation; returns how many reports were logged."""
    import wandb

    run = run or wandb.run
    if run is None:
        raise RuntimeError("no W&B run: call wandb.init() first or pass run=")
    n = 0
    for prefix, r, scalars in _series(reports):
        run.log({prefix + k: v for k, v in scalars.items()}, step=r.generation)
        n += 1
    return n
