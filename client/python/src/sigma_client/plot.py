"""The per-generation table and the drift plot (matplotlib, Agg backend)."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

from .report import GenerationReport, Thresholds

DEFAULT_THRESHOLDS = {"drift_warning": 0.1, "drift_critical": 0.5,
                      "divergence_warning": 0.1, "track1_stable": 0.01}


def effective_thresholds(th: Optional[Thresholds | Mapping[str, float]]) -> dict[str, float]:
    out = dict(DEFAULT_THRESHOLDS)
    if th is None:
        return out
    items = th.items() if isinstance(th, Mapping) else vars(th).items()
    for k, v in items:
        if v is not None and k in out:
            out[k] = float(v)
    return out


def _alerts(r: GenerationReport, with_info: bool = False) -> str:
    a = [f"{x.rule}({x.severity}{', ' + x.direction if x.direction else ''})"
         for x in r.alerts if with_info or x.severity != "info"]
    return ", ".join(a) if a else "-"


def _gens(v: Optional[float]) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.1f}"


def format_table(series: Mapping[str, Sequence[GenerationReport]], with_info: bool = False) -> str:
    """One line per generation per series (a series is one job/tap), per-dimension values
    and the alerts that fired. Info-level alerts (e.g. low_confidence) only with with_info."""
    head = (f"{'job/tap':<24} {'gen':>3} {'n':>9} {'n_A':>6} {'T1 drift/m':>11} "
            f"{'T2 drift/m':>11} {'+-95%/m':>8} {'diverg/m':>9} {'to-crit':>7} {'flags':<5} alerts")
    lines = [head, "-" * len(head)]
    for name, reports in series.items():
        for r in sorted(reports, key=lambda r: r.generation):
            pd = r.per_dim
            flags = ""
            if r.flags.cholesky_failed:
                flags += "F"
            if r.flags.rho_violated:
                flags += "R"
            if r.flags.low_confidence:
                flags += "L"
            if r.flags.closed_explicitly:
                flags += "C"
            base = "*" if (r.generation == r.baseline_generation and not r.baseline_job) else " "
            lines.append(
                f"{name[:24]:<24} {r.generation:>3}{base}{r.n:>9.0f} {r.n_a:>6d} "
                f"{pd.track1_drift:>+11.4f} {pd.track2_drift:>+11.4f} {pd.drift_halfwidth_used:>8.4f} "
                f"{pd.divergence:>+9.4f} {_gens(r.generations_to_critical):>7} {flags or '-':<5} "
                f"{_alerts(r, with_info)}")
            if r.flags.cholesky_failed:
                lines.append(f"{'':<24}     failed: {r.flags.failure_reason}")
    lines.append("(per dimension = value / m; * = baseline generation; to-crit = forecast generations "
                 "until the critical threshold;\n flags: F failed Cholesky, R rho violated (Track I "
                 "invalid), L low confidence (n_A < 16 m), C closed explicitly)")
    return "\n".join(lines)


def plot_reports(series: Mapping[str, Sequence[GenerationReport]], out: str,
                 thresholds: Optional[Mapping[str, Mapping[str, float]]] = None,
                 title: Optional[str] = None) -> str:
    """Writes draw_reports(...) to `out` (PNG) and returns `out`."""
    import matplotlib.pyplot as plt

    fig = draw_reports(series, thresholds, title)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_reports(series: Mapping[str, Sequence[GenerationReport]],
                 thresholds: Optional[Mapping[str, Mapping[str, float]]] = None,
                 title: Optional[str] = None):
    """The figure: per series (one column, its own y-scale), Track I and Track II drift per
    dimension with the 95 % band of the drift (shaded and as error bars, so that a thin band
    shows), the two-sided thresholds of the job's configuration (the report does not record
    the thresholds of its seal: a later `configure` moves the lines) and alert markers
    (top); the divergence with its early-warning threshold (bottom). Integer generation
    ticks; markers are never clipped (the y-range includes them)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = list(series) or ["(no data)"]
    ncol = len(names)
    fig, axes = plt.subplots(2, ncol, figsize=(5.2 * ncol + 0.6, 7.5), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    for c, name in enumerate(names):
        reports = sorted(series.get(name, []), key=lambda r: r.generation)
        th = effective_thresholds((thresholds or {}).get(name))
        _draw_column(axes[0][c], axes[1][c], name, reports, th)
        for a in (axes[0][c], axes[1][c]):
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title or "SIGMA: log-det drift against the baseline generation", fontsize=12)
    fig.tight_layout()
    return fig


def _seal_thresholds(reports, th, key):
    """Per report, the threshold `key` as it was at seal time (the job config's for
    reports sealed before sigmad recorded it); and whether any came from the reports."""
    vals, recorded = [], False
    for r in reports:
        at_seal = r.thresholds_at_seal or {}
        recorded = recorded or key in at_seal
        vals.append(at_seal.get(key, th[key]))
    return vals, recorded


def _draw_threshold(ax, g, vals, recorded, fallback, color, label):
    """± a threshold: a horizontal line while it stayed the same, steps where it changed."""
    vals = vals or [fallback]
    where = "at seal" if recorded else "job config"
    for sign in (1, -1):
        text = "%s ±%.2g/dim (%s)" % (label, vals[-1], where) if sign > 0 else None
        if len(set(vals)) == 1:
            ax.axhline(sign * vals[0], color=color, ls="--", lw=1, label=text)
        else:
            ax.step(g, [sign * v for v in vals], where="mid", color=color, ls="--", lw=1, label=text)


def _draw_column(ax, axd, name, reports, th) -> None:
    g = [r.generation for r in reports]
    t1 = [r.per_dim.track1_drift for r in reports]
    t2 = [r.per_dim.track2_drift for r in reports]
    hw = [r.per_dim.drift_halfwidth_used for r in reports]  # the probe's half-width (spec §3)
    dv = [r.per_dim.divergence for r in reports]
    warn, warn_rec = _seal_thresholds(reports, th, "drift_warning")
    crit, crit_rec = _seal_thresholds(reports, th, "drift_critical")
    div, div_rec = _seal_thresholds(reports, th, "divergence_warning")
    _draw_threshold(ax, g, warn, warn_rec, th["drift_warning"], "orange", "warning")
    _draw_threshold(ax, g, crit, crit_rec, th["drift_critical"], "red", "critical")
    _draw_threshold(axd, g, div, div_rec, th["divergence_warning"], "orange", "early warning")
    ax.axhline(0, color="black", lw=0.6)
    axd.axhline(0, color="black", lw=0.6)
    if reports:
        lo_band = [a - b for a, b in zip(t2, hw)]
        hi_band = [a + b for a, b in zip(t2, hw)]
        ax.fill_between(g, lo_band, hi_band, color="tab:blue", alpha=0.25, lw=0,
                        label="Track II 95 % band")
        ax.errorbar(g, t2, yerr=hw, fmt="none", ecolor="tab:blue", elinewidth=1, capsize=4)
        # Track I under Track II: hollow, larger, dashed, so that equal values stay visible.
        ax.plot(g, t1, "s--", color="tab:gray", mfc="none", ms=10, lw=1.2, zorder=2,
                label="Track I drift (envelope)")
        ax.plot(g, t2, "o-", color="tab:blue", ms=5, zorder=3, label="Track II drift (estimate)")
        axd.plot(g, dv, "o-", color="tab:purple", label="divergence = T1 - T2 drift")
        _markers(ax, axd, reports, t2, dv)
        lo = min(min(t1), min(lo_band), -max(crit))
        hi = max(max(t1), max(hi_band), max(crit))
        pad = 0.1 * (hi - lo if math.isfinite(hi - lo) and hi > lo else 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        dlo = min(min(dv), -max(div))
        dhi = max(max(dv), max(div))
        dpad = 0.1 * (dhi - dlo if math.isfinite(dhi - dlo) and dhi > dlo else 1.0)
        axd.set_ylim(dlo - dpad, dhi + dpad)
        span = max(g) - min(g)
        for a in (ax, axd):
            a.set_xlim(min(g) - 0.5 - 0.05 * span, max(g) + 0.5 + 0.05 * span)
        ax.set_title(f"{name}  (m = {reports[-1].m}, n_A = {reports[-1].n_a})", fontsize=10)
    else:
        ax.set_title(f"{name}  (no sealed generations)", fontsize=10)
    ax.set_ylabel("drift per dimension (nats / m)")
    axd.set_ylabel("divergence per dimension")
    axd.set_xlabel("generation")
    ax.grid(alpha=0.3)
    axd.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    axd.legend(fontsize=7, loc="upper left")


def _markers(ax, axd, reports, t2, dv) -> None:
    """Alert markers (clip_on=False: a marker at the edge is drawn whole)."""
    first = {"critical": True, "warning": True, "early": True}
    for r, y, yd in zip(reports, t2, dv):
        for level, color, marker in (("critical", "red", "X"), ("warning", "orange", "^")):
            if any(a.severity == level and a.rule.startswith("collapse_") for a in r.alerts):
                ax.plot([r.generation], [y], marker=marker, color=color, ms=12, ls="none",
                        clip_on=False, zorder=4, label=f"{level} alert" if first[level] else None)
                first[level] = False
                break
        if any(a.rule == "early_warning_divergence" for a in r.alerts):
            axd.plot([r.generation], [yd], marker="^", color="orange", ms=11, ls="none",
                     clip_on=False, zorder=4, label="early-warning alert" if first["early"] else None)
            first["early"] = False
        if r.flags.cholesky_failed:
            ax.annotate("failed", (r.generation, y), color="red", fontsize=8)
