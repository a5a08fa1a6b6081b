"""One CSV row per sealed report, for notebooks (`report --csv`; sigmactl report --csv
writes the same columns in the same order, docs/python-client.md)."""
from __future__ import annotations

import csv
from typing import IO, Iterable

from .report import GenerationReport

# (column, value) in order; per-dimension values are value / m (as the table prints them).
CSV_COLUMNS = (
    "job", "tap", "generation", "m", "n", "n_a", "world_size", "backend",
    "track1_lower", "track1_upper", "track2", "track2_ci_halfwidth",
    "track1_drift", "track2_drift", "divergence", "drift_halfwidth",
    "track1_drift_per_dim", "track2_drift_per_dim", "divergence_per_dim",
    "drift_halfwidth_per_dim", "generations_to_critical", "baseline_generation",
    "baseline_job", "rho_violated", "low_confidence", "cholesky_failed",
    "closed_explicitly", "alerts", "sealed_unix_ms",
)


def csv_row(r: GenerationReport) -> list:
    pd, f = r.per_dim, r.flags
    vals = {
        "track1_drift_per_dim": pd.track1_drift, "track2_drift_per_dim": pd.track2_drift,
        "divergence_per_dim": pd.divergence, "drift_halfwidth_per_dim": pd.drift_halfwidth,
        "generations_to_critical": "" if r.generations_to_critical is None
        else r.generations_to_critical,
        "rho_violated": int(f.rho_violated), "low_confidence": int(f.low_confidence),
        "cholesky_failed": int(f.cholesky_failed), "closed_explicitly": int(f.closed_explicitly),
        "alerts": ";".join(f"{a.rule}:{a.severity}" for a in r.alerts),
    }
    return [vals[c] if c in vals else getattr(r, c) for c in CSV_COLUMNS]


def write_csv(reports: Iterable[GenerationReport], out: IO[str]) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in reports:
        w.writerow([repr(v) if isinstance(v, float) else v for v in csv_row(r)])
