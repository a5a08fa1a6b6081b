"""Validation 2 analysis (issue 19): first-fire generations, false alarms on the control,
S2/S1 drift ratios, interval coverage on the control, and the trend-setting grid.

Input: the rows of replicates.py (RUNS/v2/rows.json): dicts with seed, setting ("s1", "s2",
"ctl"), generation, surface (metrics.surface_metrics), heldout_loss, reports (variant ->
sigmad report as a dict). Pure Python: no torch, no daemon.

`replay_trend` re-evaluates sigmad's early_warning_trend rule (server/src/core/
report_builder.cc EvaluateTrend, spec §3 "Early warning by significance") on stored reports
for other (trend_k, trend_z, trend_floor); at the daemon's settings it must give the
daemon's own alerts (checked on every run by `replay_matches_daemon`).
"""
from __future__ import annotations

import math
import statistics
from typing import Callable, Iterable, Optional

DRIFT_RULES = ("collapse_contraction", "collapse_expansion")
ALERT_KINDS = {"trend": ("early_warning_trend",), "drift": DRIFT_RULES,
               "divergence": ("early_warning_divergence",)}
# surface metric -> (kind, amount): "rel" = |v - v0| >= amount * |v0|, "abs" = |v - v0| >= amount
SURFACE_MOVES = {"distinct_1": ("rel", 0.10), "distinct_2": ("rel", 0.10),
                 "rep_rate": ("abs", 0.01), "heldout_loss": ("abs", 0.10)}
GRID = {"trend_k": (1, 2, 3), "trend_z": (2.0, 3.0, 4.0, 6.0),
        "trend_floor": (0.0, 0.005, 0.01, 0.02, 0.03, 0.05)}
MAX_FALSE_ALARM = 0.05
# The defaults before validation 2 (trend_k, trend_z, trend_floor): the sealed reports of
# the run carry them; ties in the choice go to the setting closest to them.
PREVIOUS = (2, 3.0, 0.01)


# ---------------------------------------------------------------- series
def settings_in(rows) -> list[str]:
    return [s for s in ("s1", "s2", "ctl") if any(r["setting"] == s for r in rows)]


def seeds_in(rows) -> list[int]:
    return sorted({r["seed"] for r in rows})


def series(rows, setting: str, seed: int) -> list[dict]:
    """The rows of one (setting, seed), by generation (0 = the baseline)."""
    return sorted((r for r in rows if r["setting"] == setting and r["seed"] == seed),
                  key=lambda r: r["generation"])


def fires(report: dict, rules: Iterable[str]) -> bool:
    return any(a["rule"] in rules and a["severity"] in ("warning", "critical")
               for a in report["alerts"])


def reports(ser: list[dict], variant: str) -> list[dict]:
    """The variant's reports of one series, by generation (rows without it skipped: the
    generations before a later pinned baseline are not streamed)."""
    return [r["reports"][variant] | {"generation": r["generation"]} for r in ser
            if variant in r["reports"]]


def after_baseline(rep: dict) -> bool:
    """The report has a drift: its generation is past its baseline."""
    return rep["generation"] > rep.get("baseline_generation", 0)


def first_gen(flags: list[tuple[int, bool]]) -> Optional[int]:
    """First generation >= 1 whose flag is set; None when none is."""
    return next((g for g, f in flags if g >= 1 and f), None)


# ---------------------------------------------------------------- the trend rule
def _qualifies(rep: dict, negative: bool, z_min: float, floor: float) -> bool:
    z = rep["drift_zscore"]
    if not rep["trend_evaluated"] or rep["flags"]["cholesky_failed"]:
        return False
    return (abs(z) >= z_min and (math.copysign(1.0, z) < 0) == negative
            and abs(rep["per_dim"]["track2_drift"]) >= floor)


def replay_trend(reports: list[dict], k: int, z_min: float, floor: float) -> list[bool]:
    """early_warning_trend for each report of one (job, tap), by generation: the last k
    reports (this one included) each evaluated, |z| >= z_min with this one's sign and
    |track2_drift| / m >= floor, while no contraction/expansion alert fires."""
    out = []
    for i, rep in enumerate(reports):
        negative = math.copysign(1.0, rep["drift_zscore"]) < 0
        window = reports[max(0, i - k + 1):i + 1]
        ok = (len(window) == k and all(_qualifies(r, negative, z_min, floor) for r in window)
              and not fires(rep, DRIFT_RULES))
        out.append(ok)
    return out


def replay_matches_daemon(rows, variant: str, k: int, z_min: float, floor: float) -> bool:
    """True when the replay at the daemon's settings gives the daemon's own alerts."""
    for s in settings_in(rows):
        for seed in seeds_in(rows):
            reps = reports(series(rows, s, seed), variant)
            daemon = [fires(r, ALERT_KINDS["trend"]) for r in reps]
            if replay_trend(reps, k, z_min, floor) != daemon:
                return False
    return True


# ---------------------------------------------------------------- first fire / move
def alert_flags(ser: list[dict], variant: str, kind: str,
                trend: Optional[tuple[int, float, float]] = None) -> list[tuple[int, bool]]:
    """(generation, fired) of one alert kind for the generations past the baseline; kind
    "trend" is replayed when `trend` = (k, z, floor) is given, "alarm" = trend or drift
    warning."""
    reps = reports(ser, variant)
    if kind in ("trend", "alarm") and trend is not None:
        t = replay_trend(reps, *trend)
    else:
        t = [fires(r, ALERT_KINDS["trend"]) for r in reps]
    if kind == "trend":
        f = t
    elif kind == "alarm":
        f = [a or fires(r, DRIFT_RULES) for a, r in zip(t, reps)]
    else:
        f = [fires(r, ALERT_KINDS[kind]) for r in reps]
    return [(r["generation"], x) for r, x in zip(reps, f) if after_baseline(r)]


def surface_value(row: dict, key: str) -> float:
    return row["heldout_loss"] if key == "heldout_loss" else row["surface"][key]


def surface_flags(ser: list[dict], key: str) -> list[tuple[int, bool]]:
    kind, amount = SURFACE_MOVES[key]
    v0 = surface_value(ser[0], key)
    tol = amount * max(abs(v0), 1e-12) if kind == "rel" else amount
    return [(r["generation"], abs(surface_value(r, key) - v0) >= tol) for r in ser]


def per_seed(rows, setting: str, fn: Callable[[list[dict]], Optional[int]]) -> list[Optional[int]]:
    return [fn(series(rows, setting, seed)) for seed in seeds_in(rows)
            if series(rows, setting, seed)]


def summarize(values: list[Optional[int]]) -> dict:
    """Median and range over seeds; never (None) sorts after every generation."""
    if not values:
        return {"median": None, "min": None, "max": None, "fired": 0, "n": 0}
    key = [math.inf if v is None else v for v in values]
    med = statistics.median_low(sorted(key))
    return {"median": None if med == math.inf else med,
            "min": None if min(key) == math.inf else min(key),
            "max": None if max(key) == math.inf else max(key),
            "fired": sum(v is not None for v in values), "n": len(values)}


def false_alarm_rate(rows, flags_fn: Callable[[list[dict]], list[tuple[int, bool]]],
                     setting: str = "ctl") -> tuple[int, int]:
    """(fired, total) over the setting's generations >= 1 and seeds."""
    fired = total = 0
    for seed in seeds_in(rows):
        ser = series(rows, setting, seed)
        if not ser:
            continue
        for g, f in flags_fn(ser):
            if g >= 1:
                total += 1
                fired += bool(f)
    return fired, total


# ---------------------------------------------------------------- S2/S1, coverage
def drift_ratios(rows, variant: str) -> dict[int, list[float]]:
    """generation -> [S2 drift / S1 drift per seed] (Track II drift, nats)."""
    out: dict[int, list[float]] = {}
    for seed in seeds_in(rows):
        s1 = {p["generation"]: p["track2_drift"] for p in reports(series(rows, "s1", seed), variant)
              if after_baseline(p)}
        s2 = {p["generation"]: p["track2_drift"] for p in reports(series(rows, "s2", seed), variant)
              if after_baseline(p)}
        for g in sorted(set(s1) & set(s2)):
            if s1[g] != 0:
                out.setdefault(g, []).append(s2[g] / s1[g])
    return out


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def coverage(rows, variant: str, setting: str = "ctl") -> dict:
    """On the control, over the generations past the baseline: how often ±drift_half
    (corpus) and ±drift_half_pop cover zero drift, their mean widths, the observed spread of
    the drift, and the spread between equivalent generations (1..G of one seed, all M0
    after the same fine-tuning) against the single-snapshot sd each interval implies
    (half / 1.96)."""
    drifts, cov, cov_pop, half, half_pop, within, sd_c, sd_p = [], 0, 0, [], [], [], [], []
    m = n_a = None
    for seed in seeds_in(rows):
        reps = [p for p in reports(series(rows, setting, seed), variant) if p["generation"] >= 1]
        for p in filter(after_baseline, reps):
            m, n_a = p["m"], p["n_a"]
            d = p["track2_drift"]
            drifts.append(d)
            cov += abs(d) <= p["drift_halfwidth"]
            cov_pop += abs(d) <= p["drift_halfwidth_pop"]
            half.append(p["drift_halfwidth"])
            half_pop.append(p["drift_halfwidth_pop"])
            sd_c.append(p["track2_ci_halfwidth"] / 1.959964)
            sd_p.append(p["track2_pop_halfwidth"] / 1.959964)
        if len(reps) > 1:
            within.append(statistics.variance([p["track2"] for p in reps]))
    n = len(drifts)
    return {"n": n, "m": m, "n_a": n_a, "covered": cov, "covered_pop": cov_pop,
            "mean_drift": statistics.fmean(drifts) if n else float("nan"),
            "sd_drift": _sd(drifts), "mean_half": statistics.fmean(half) if n else float("nan"),
            "mean_half_pop": statistics.fmean(half_pop) if n else float("nan"),
            "sd_between_gens": math.sqrt(statistics.fmean(within)) if within else float("nan"),
            "sd_snapshot_corpus": statistics.fmean(sd_c) if n else float("nan"),
            "sd_snapshot_pop": statistics.fmean(sd_p) if n else float("nan")}


# ---------------------------------------------------------------- the grid (issue 19 item 5)
def grid_row(rows, fa_variants: list[str], lead_variants: list[str], k: int, z: float,
             floor: float, generations: int) -> dict:
    """For one setting of (trend_k, trend_z, trend_floor): the control's false alarms of
    early_warning_trend per fa_variant, and the first trend / first alarm (trend or drift
    warning) on s1 and s2 per lead_variant. score = sum over lead variants and s1/s2 of
    the median first alarm (never = G + 1); hits = recursive generations (lead variants,
    s1/s2, every seed) where the trend fires, i.e. flagged before a drift warning."""
    t = (k, z, floor)
    out = {"trend_k": k, "trend_z": z, "trend_floor": floor, "fa": {}, "alarm": {},
           "trend": {}, "score": 0.0, "hits": 0}
    for v in fa_variants:
        out["fa"][v] = false_alarm_rate(rows, lambda s: alert_flags(s, v, "trend", t))
    for v in lead_variants:
        for s in ("s1", "s2"):
            out["hits"] += false_alarm_rate(rows, lambda ser: alert_flags(ser, v, "trend", t), s)[0]
            first = per_seed(rows, s, lambda ser: first_gen(alert_flags(ser, v, "alarm", t)))
            out["alarm"][(v, s)] = summarize(first)
            out["trend"][(v, s)] = summarize(
                per_seed(rows, s, lambda ser: first_gen(alert_flags(ser, v, "trend", t))))
            if first:
                out["score"] += statistics.median_low(
                    sorted(generations + 1 if g is None else g for g in first))
            else:
                out["score"] += generations + 1
    return out


def grid(rows, fa_variants: list[str], lead_variants: list[str], generations: int) -> list[dict]:
    return [grid_row(rows, fa_variants, lead_variants, k, z, f, generations)
            for k in GRID["trend_k"] for z in GRID["trend_z"] for f in GRID["trend_floor"]]


def leads(rows, variant: str, setting: str, trend: tuple[int, float, float],
          generations: int) -> list[Optional[int]]:
    """Per seed: first drift warning (never = G + 1) minus the first alarm (trend or drift
    warning) under `trend`; None when neither fires."""
    out = []
    for seed in seeds_in(rows):
        ser = series(rows, setting, seed)
        if not ser:
            continue
        alarm = first_gen(alert_flags(ser, variant, "alarm", trend))
        drift = first_gen(alert_flags(ser, variant, "drift"))
        out.append(None if alarm is None else (generations + 1 if drift is None else drift) - alarm)
    return out


def admissible(row: dict, max_rate: float = MAX_FALSE_ALARM) -> bool:
    return all(t > 0 and f / t <= max_rate for f, t in row["fa"].values())


def choose(grid_rows: list[dict], max_rate: float = MAX_FALSE_ALARM) -> Optional[dict]:
    """The admissible setting with the earliest alarms, then the most trend hits on the
    recursive runs; remaining ties (the data cannot tell them apart) go to the setting
    closest to PREVIOUS: fewest changed settings, a changed floor before a changed z
    before a changed k (the floor is the guard against magnitudes the interval
    understates), then the smaller floor."""
    ok = [r for r in grid_rows if admissible(r, max_rate)]
    return min(ok, key=rank) if ok else None


def rank(r: dict) -> tuple:
    k0, z0, f0 = PREVIOUS
    changed = (r["trend_k"] != k0, r["trend_z"] != z0, r["trend_floor"] != f0)
    return (r["score"], -r["hits"], sum(changed), changed[0], changed[1], r["trend_floor"])
