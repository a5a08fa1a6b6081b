"""Markdown tables of validation 2 (RUNS/v2/results.md) from RUNS/v2/rows.json."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from . import calibrate as cal

# The daemon's trend settings the run was sealed with (kernels TrendSettings at run time).
RUN_TREND = cal.PREVIOUS
# Variants where the trend is evaluated (n_A >= 16 m): the false alarms of a setting count on
# all of them; its lead is read on the baseline-0 ones (how a run is monitored).
LEAD_VARIANTS = ["m0", "probe", "probe-f1"]
FA_VARIANTS = LEAD_VARIANTS + [v + "-b1" for v in LEAD_VARIANTS]
NAMES = {"s1": "S1", "s2": "S2", "ctl": "control"}


def fmt_first(s: dict) -> str:
    if not s["n"]:
        return ""
    if s["median"] is None:
        return f"— ({s['fired']}/{s['n']})"
    hi = "never" if s["max"] is None else s["max"]
    return f"{s['median']} [{s['min']}–{hi}] ({s['fired']}/{s['n']})"


def _rate(fired_total) -> str:
    f, t = fired_total
    return f"{f}/{t} ({100 * f / t:.0f} %)" if t else ""


def first_fire_md(rows, variants: list[str]) -> str:
    L = ["First generation at which each alert fires (daemon's own alerts, trend settings "
         f"k = {RUN_TREND[0]}, z = {RUN_TREND[1]:g}, floor = {RUN_TREND[2]:g}), per setting: "
         "median [min–max] over seeds (seeds where it fired / seeds); '—' = median never.", "",
         "| variant | setting | early_warning_trend | drift warning | divergence warning |",
         "|---|---|---|---|---|"]
    for v in variants:
        for s in cal.settings_in(rows):
            cells = [fmt_first(cal.summarize(cal.per_seed(
                rows, s, lambda ser, k=kind: cal.first_gen(cal.alert_flags(ser, v, k)))))
                for kind in ("trend", "drift", "divergence")]
            L.append(f"| `{v}` | {NAMES[s]} | " + " | ".join(cells) + " |")
    L += ["", "First generation at which each surface metric moves by the stated amount "
          "(" + ", ".join(f"{k}: {'±%g %% relative' % (100 * a) if kind == 'rel' else '±%g absolute' % a}"
                          for k, (kind, a) in cal.SURFACE_MOVES.items()) + ").", "",
          "| setting | " + " | ".join(cal.SURFACE_MOVES) + " |",
          "|---" * (1 + len(cal.SURFACE_MOVES)) + "|"]
    for s in cal.settings_in(rows):
        cells = [fmt_first(cal.summarize(cal.per_seed(
            rows, s, lambda ser, k=key: cal.first_gen(cal.surface_flags(ser, k)))))
            for key in cal.SURFACE_MOVES]
        L.append(f"| {NAMES[s]} | " + " | ".join(cells) + " |")
    return "\n".join(L)


def false_alarm_md(rows, variants: list[str]) -> str:
    L = ["False alarms on the control: share of control generations (1..G, every seed) where "
         "the alert fires / the surface metric has moved.", "",
         "| variant | early_warning_trend | drift warning | divergence warning |", "|---|---|---|---|"]
    for v in variants:
        cells = [_rate(cal.false_alarm_rate(rows, lambda ser, k=kind: cal.alert_flags(ser, v, k)))
                 for kind in ("trend", "drift", "divergence")]
        L.append(f"| `{v}` | " + " | ".join(cells) + " |")
    L += ["", "| surface metric | moved on the control |", "|---|---|"]
    for key in cal.SURFACE_MOVES:
        L.append(f"| {key} | {_rate(cal.false_alarm_rate(rows, lambda ser, k=key: cal.surface_flags(ser, k)))} |")
    return "\n".join(L)


def ratio_md(rows, variants: list[str]) -> str:
    gens = sorted({g for v in variants for g in cal.drift_ratios(rows, v)})
    L = ["S2 / S1 Track II drift ratio per generation: mean [min–max] over seeds "
         "(generation 1 is the same model in both settings).", "",
         "| variant | " + " | ".join(f"gen {g}" for g in gens) + " |", "|---" * (1 + len(gens)) + "|"]
    for v in variants:
        r = cal.drift_ratios(rows, v)
        if not r:
            continue
        L.append(f"| `{v}` | " + " | ".join(
            f"{statistics.fmean(r[g]):.2f} [{min(r[g]):.2f}–{max(r[g]):.2f}]" if g in r else ""
            for g in gens) + " |")
    return "\n".join(L)


def coverage_md(rows, variants: list[str]) -> str:
    L = ["Control: drift against generation 0 (nats), coverage of zero drift by ± drift_half "
         "(corpus) and ± drift_half_pop, and the spread between the control's generations "
         "1..G of one seed (sd of track2, pooled over seeds) against the single-snapshot sd "
         "each interval implies (half-width / 1.96).", "",
         "| variant | m | n_A | n_A/m | gens | mean drift | sd drift | mean drift_half | covered | "
         "mean drift_half_pop | covered (pop) | sd between gens | sd corpus | sd pop |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        c = cal.coverage(rows, v)
        if not c["n"]:
            continue
        L.append(f"| `{v}` | {c['m']} | {c['n_a']} | {c['n_a'] / c['m']:.1f} | {c['n']} | "
                 f"{c['mean_drift']:+.2f} | {c['sd_drift']:.2f} | {c['mean_half']:.2f} | "
                 f"{c['covered']}/{c['n']} | {c['mean_half_pop']:.2f} | {c['covered_pop']}/{c['n']} | "
                 f"{c['sd_between_gens']:.2f} | {c['sd_snapshot_corpus']:.2f} | {c['sd_snapshot_pop']:.2f} |")
    return "\n".join(L)


def grid_md(rows, generations: int, top: int = 12) -> tuple[str, dict | None]:
    present = lambda vs: [v for v in vs if any(v in r["reports"] for r in rows)]
    fa_v, lead_v = present(FA_VARIANTS), present(LEAD_VARIANTS)
    g = cal.grid(rows, fa_v, lead_v, generations)
    best = cal.choose(g)
    ok = sorted((r for r in g if cal.admissible(r)), key=cal.rank)
    run = next(r for r in g if (r["trend_k"], r["trend_z"], r["trend_floor"]) == RUN_TREND)
    head = ["| trend_k | trend_z | trend_floor | " + " | ".join(f"FA `{v}`" for v in fa_v)
            + " | " + " | ".join(f"first trend / alarm `{v}` {NAMES[s]}" for v in lead_v
                                 for s in ("s1", "s2")) + " | score | hits |",
            "|---" * (5 + len(fa_v) + 2 * len(lead_v)) + "|"]

    def line(r, mark=""):
        return (f"| {r['trend_k']} | {r['trend_z']:g} | {r['trend_floor']:g}{mark} | "
                + " | ".join(_rate(r["fa"][v]) for v in fa_v) + " | "
                + " | ".join(f"{fmt_first(r['trend'][(v, s)])} / {fmt_first(r['alarm'][(v, s)])}"
                             for v in lead_v for s in ("s1", "s2")) + f" | {r['score']:g} | {r['hits']} |")
    L = [f"Grid of {len(g)} settings (trend_k {cal.GRID['trend_k']}, trend_z {cal.GRID['trend_z']}, "
         f"trend_floor {cal.GRID['trend_floor']}), replayed on the stored reports; admissible = "
         f"control false alarms ≤ {100 * cal.MAX_FALSE_ALARM:g} % on every variant where the trend is "
         f"evaluated; score = sum of the median first alarm (trend or drift warning; never = "
         f"{generations + 1}) over the baseline-0 variants × {{S1, S2}}; hits = S1/S2 generations "
         "(baseline-0 variants, every seed) where the trend fires, i.e. before a drift warning; "
         "ranked by score, then hits, then closeness to the previous defaults (fewest changed "
         "settings; floor before z before k; smaller floor). "
         "The replay reproduces the "
         "daemon's own alerts at the run's settings: "
         + ", ".join(f"`{v}` {'yes' if cal.replay_matches_daemon(rows, v, *RUN_TREND) else 'NO'}"
                     for v in fa_v) + ".", "",
         f"Admissible settings, best first ({len(ok)} of {len(g)}; top {top}):", ""] + head
    L += [line(r, " ←" if r is best else "") for r in ok[:top]]
    L += ["", "The run's settings (the previous defaults):", ""] + head + [line(run)]
    return "\n".join(L), best


def lead_md(rows, trend: tuple[int, float, float], generations: int) -> str:
    k, z, f = trend
    L = [f"With trend_k = {k}, trend_z = {z:g}, trend_floor = {f:g}: first early_warning_trend, "
         "first drift warning, first alarm (either), and the lead = first drift warning − first "
         f"alarm per seed (a drift warning that never fires counts as generation {generations + 1}, "
         "so such a lead is a lower bound): median [min–max] over seeds.", "",
         "| variant | setting | first trend | first drift warning | first alarm | lead |",
         "|---|---|---|---|---|---|"]
    for v in LEAD_VARIANTS:
        if not any(v in r["reports"] for r in rows):
            continue
        for s in ("s1", "s2"):
            cells = [fmt_first(cal.summarize(cal.per_seed(
                rows, s, lambda ser, kind=kind: cal.first_gen(cal.alert_flags(ser, v, kind, trend)))))
                for kind in ("trend", "drift", "alarm")]
            cells.append(fmt_first(cal.summarize(cal.leads(rows, v, s, trend, generations))))
            L.append(f"| `{v}` | {NAMES[s]} | " + " | ".join(cells) + " |")
    return "\n".join(L)


def timing_md(step_seconds: dict[str, float]) -> str:
    """Wall seconds per kind of step (steps named as in replicates.py)."""
    kinds = {"gen-0 training (once)": lambda n: n == "gen0/train",
             "fine-tuning": lambda n: n.endswith("/train") and n != "gen0/train",
             "sampling": lambda n: n.endswith("/generate"),
             "embedding (both taps)": lambda n: n.endswith("/embed"),
             "streaming + seal, one job": lambda n: n.startswith("stream/"),
             "exact log-det": lambda n: "/exact/" in n}
    L = ["| step | count | min | median | max | sum |", "|---|---|---|---|---|---|"]
    total = 0.0
    for label, match in kinds.items():
        xs = sorted(v for n, v in step_seconds.items() if v is not None and match(n))
        if xs:
            total += sum(xs)
            L.append(f"| {label} | {len(xs)} | {xs[0]:.1f} | {statistics.median(xs):.1f} | "
                     f"{xs[-1]:.1f} | {sum(xs):.0f} |")
    L.append(f"| **all steps** | | | | | **{total:.0f} ({total / 60:.1f} min)** |")
    return "\n".join(L)


def write(runs: Path) -> Path | None:
    p = Path(runs) / "v2" / "rows.json"
    if not p.exists():
        return None
    res = json.loads(p.read_text())
    rows, G = res["rows"], res["config"]["generations"]
    variants = list(dict.fromkeys(v for r in rows for v in r["reports"]))
    gmd, best = grid_md(rows, G)
    parts = ["# Validation 2: seeds, control, trend calibration", "",
             f"Seeds: {cal.seeds_in(rows)}; settings: {[NAMES[s] for s in cal.settings_in(rows)]}; "
             f"rows: {len(rows)}.", "", "Config: `" + json.dumps(res["config"]) + "`", "",
             "## First fire", "", first_fire_md(rows, variants), "",
             "## False alarms on the control", "", false_alarm_md(rows, variants), "",
             "## S2 / S1", "", ratio_md(rows, ["m0", "probe"]), "",
             "## Interval coverage on the control", "", coverage_md(rows, variants), "",
             "## Trend settings", "", gmd, ""]
    marks = (json.loads(q.read_text()) for q in (Path(runs) / "v2" / "steps").glob("*.done.json"))
    steps = {j["step"]: j.get("seconds") for j in marks}
    if best:
        t = (best["trend_k"], best["trend_z"], best["trend_floor"])
        parts += [f"Chosen: trend_k = {t[0]}, trend_z = {t[1]:g}, trend_floor = {t[2]:g}.", "",
                  "## Lead of the chosen setting", "", lead_md(rows, t, G), "",
                  "## Lead of the run's setting", "", lead_md(rows, RUN_TREND, G), ""]
    parts += ["## Timings (seconds per step)", "", timing_md(steps), ""]
    out = Path(runs) / "v2" / "results.md"
    out.write_text("\n".join(parts))
    return out
