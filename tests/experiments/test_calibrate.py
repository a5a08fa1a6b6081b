"""Validation 2 analysis (experiments/sigma_exp/calibrate.py, report_v2.py) on synthetic
reports whose answers are worked out by hand."""
import json
import math
import sys
from pathlib import Path

# experiments/sigma_exp is a plain source package (not installed): import it from the tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import pytest

from sigma_exp import calibrate as cal
from sigma_exp import report_v2

M = 100


def rep(drift, z, alerts=(), evaluated=True, half=1.0, half_pop=2.0, track2=None):
    return {"track2_drift": drift, "drift_zscore": z, "trend_evaluated": evaluated,
            "per_dim": {"track2_drift": drift / M}, "flags": {"cholesky_failed": False},
            "alerts": [{"rule": r, "severity": "warning"} for r in alerts], "m": M, "n_a": 1600,
            "drift_halfwidth": half, "drift_halfwidth_pop": half_pop,
            "track2_ci_halfwidth": half / math.sqrt(2), "track2_pop_halfwidth": half_pop / math.sqrt(2),
            "track2": -1000.0 + drift if track2 is None else track2}


def row(setting, seed, g, report, d1=0.5, loss=4.0):
    return {"setting": setting, "seed": seed, "generation": g, "heldout_loss": loss,
            "surface": {"distinct_1": d1, "distinct_2": 0.5, "rep_rate": 0.0},
            "reports": {"v": report}}


BASE = rep(0.0, 0.0, evaluated=False)


def test_replay_trend_streak_sign_floor_and_drift_alert():
    reps = [BASE, rep(-3, -4), rep(-4, -5), rep(5, 6), rep(6, 7),
            rep(-20, -30, alerts=("collapse_contraction",))]
    # k = 2, z 3, floor 0.01: gen 2 (gens 1, 2 both negative, |drift|/m 0.03/0.04);
    # gen 3 flips sign (no); gen 4 (3, 4 positive); gen 5 breaks on the sign of gen 4 and
    # anyway the drift alert speaks.
    assert cal.replay_trend(reps, 2, 3.0, 0.01) == [False, False, True, False, True, False]
    # k = 1: every qualifying generation fires by itself (not the drift-alert one).
    assert cal.replay_trend(reps, 1, 3.0, 0.01) == [False, True, True, True, True, False]
    # the floor: |drift|/m = 0.03..0.06 < 0.05 for gens 1-3
    assert cal.replay_trend(reps, 1, 3.0, 0.05) == [False, False, False, True, True, False]
    # z: only |z| >= 6
    assert cal.replay_trend(reps, 1, 6.0, 0.0) == [False, False, False, True, True, False]
    # a not-evaluated generation breaks the streak (the baseline, for k = 2 at gen 1)
    assert cal.replay_trend([BASE, rep(-3, -4)], 2, 3.0, 0.0) == [False, False]
    assert cal.replay_trend([BASE, rep(-3, -4, evaluated=False), rep(-3, -4)], 1, 3.0, 0.0) \
        == [False, False, True]


def test_infinite_z_counts_with_its_sign():
    reps = [BASE, rep(-2, -math.inf), rep(-2, -math.inf)]
    assert cal.replay_trend(reps, 2, 3.0, 0.01) == [False, False, True]
    assert cal.replay_trend(reps, 2, 3.0, 0.03) == [False, False, False]


def test_replay_matches_daemon_checks_every_series():
    good = [row("s1", 1, 0, BASE), row("s1", 1, 1, rep(-3, -4)),
            row("s1", 1, 2, rep(-4, -5, alerts=("early_warning_trend",)))]
    assert cal.replay_matches_daemon(good, "v", 2, 3.0, 0.01)
    bad = good[:2] + [row("s1", 1, 2, rep(-4, -5))]
    assert not cal.replay_matches_daemon(bad, "v", 2, 3.0, 0.01)


def test_first_fire_summary_and_false_alarms():
    rows = []
    for seed, fire_at in ((1, 2), (2, 3), (3, None)):
        for g in range(4):
            al = ("collapse_contraction",) if fire_at is not None and g >= fire_at else ()
            rows.append(row("s1", seed, g, rep(-g, -g, alerts=al) if g else BASE))
    first = cal.per_seed(rows, "s1", lambda s: cal.first_gen(cal.alert_flags(s, "v", "drift")))
    assert first == [2, 3, None]
    assert cal.summarize(first) == {"median": 3, "min": 2, "max": None, "fired": 2, "n": 3}
    assert cal.summarize([None, None, 1])["median"] is None
    # 3 + 2 + 0 generations >= 1 fire out of 9 (generation 0 is never counted)
    assert cal.false_alarm_rate(rows, lambda s: cal.alert_flags(s, "v", "drift"), "s1") == (3, 9)
    assert report_v2.fmt_first(cal.summarize(first)) == "3 [2–never] (2/3)"


def test_surface_flags_relative_and_absolute():
    ser = [row("ctl", 1, 0, BASE, d1=0.50, loss=4.0), row("ctl", 1, 1, rep(0, 0), d1=0.46, loss=4.05),
           row("ctl", 1, 2, rep(0, 0), d1=0.44, loss=4.2)]
    assert cal.surface_flags(ser, "distinct_1") == [(0, False), (1, False), (2, True)]
    assert cal.surface_flags(ser, "heldout_loss") == [(0, False), (1, False), (2, True)]


def test_drift_ratios_and_coverage():
    rows = []
    for seed, (d1, d2) in ((1, (-10, -20)), (2, (-10, -15))):
        for s, d in (("s1", d1), ("s2", d2)):
            rows += [row(s, seed, 0, BASE), row(s, seed, 1, rep(-5, -5)), row(s, seed, 2, rep(d, -9))]
    r = cal.drift_ratios(rows, "v")
    assert r[1] == [1.0, 1.0] and r[2] == [2.0, 1.5]
    ctl = [row("ctl", 1, 0, BASE), row("ctl", 1, 1, rep(0.5, 0.5, track2=-1000.0)),
           row("ctl", 1, 2, rep(1.5, 1.5, track2=-1002.0)), row("ctl", 1, 3, rep(-3.0, -3.0, track2=-1001.0))]
    c = cal.coverage(ctl, "v")
    assert (c["n"], c["covered"], c["covered_pop"]) == (3, 1, 2)
    assert c["mean_drift"] == pytest.approx(-1 / 3)
    assert c["sd_between_gens"] == pytest.approx(1.0)            # sd of -1000, -1002, -1001
    assert c["sd_snapshot_pop"] == pytest.approx(2 / math.sqrt(2) / 1.959964)


def test_a_later_baseline_counts_only_the_generations_past_it():
    """The -b1 jobs: generation 0 not streamed, generation 1 the baseline."""
    b1 = lambda p: dict(p, baseline_generation=1)
    rows = [row("ctl", 1, 0, BASE), row("ctl", 1, 1, b1(rep(0, 0, evaluated=False))),
            row("ctl", 1, 2, b1(rep(-3, -4))), row("ctl", 1, 3, b1(rep(-3, -4)))]
    del rows[0]["reports"]["v"]
    flags = cal.alert_flags(cal.series(rows, "ctl", 1), "v", "trend", (2, 3.0, 0.01))
    assert flags == [(2, False), (3, True)]      # the baseline breaks the streak at 2
    assert cal.false_alarm_rate(rows, lambda s: cal.alert_flags(s, "v", "trend", (1, 3.0, 0.01))) \
        == (2, 2)
    c = cal.coverage(rows, "v")
    assert c["n"] == 2 and c["covered"] == 0


def _grid_rows():
    """Control: seed 1 drifts +0.02/dim at z 4 in every generation; s1: contraction
    growing at z -5 per generation, drift warning from generation 4."""
    rows = []
    for seed in (1, 2):
        rows.append(row("ctl", seed, 0, BASE))
        rows += [row("ctl", seed, g, rep(2.0 if seed == 1 else 0.1, 4.0 if seed == 1 else 0.2))
                 for g in (1, 2, 3, 4)]
        rows.append(row("s1", seed, 0, BASE))
        rows += [row("s1", seed, g, rep(-3.0 * g, -5.0 * g,
                                        alerts=("collapse_contraction",) if g >= 4 else ()))
                 for g in (1, 2, 3, 4)]
    return rows


def test_grid_admissible_and_choice():
    rows = _grid_rows()
    r = cal.grid_row(rows, ["v"], ["v"], 1, 3.0, 0.01, generations=4)
    assert r["fa"]["v"] == (4, 8)                  # seed 1's four control generations
    assert not cal.admissible(r)
    r = cal.grid_row(rows, ["v"], ["v"], 1, 3.0, 0.03, generations=4)   # floor above 0.02
    assert r["fa"]["v"] == (0, 8) and cal.admissible(r)
    assert r["alarm"][("v", "s1")]["median"] == 1  # -3/100 = 0.03 >= floor at generation 1
    assert r["trend"][("v", "s1")]["median"] == 1
    assert r["score"] == 1 + 5                     # no s2 rows: never = G + 1
    assert r["hits"] == 6                          # gens 1-3 of both seeds (4: the drift warning)
    assert cal.grid_row(rows, ["v"], ["v"], 2, 3.0, 0.03, generations=4)["hits"] == 4
    # lead: drift warning at 4; alarm at 1 (k = 1, floor 0.03), or at 4 with floor 0.2 (above
    # every |drift|/m: only the drift warning alarms); the control never alarms
    assert cal.leads(rows, "v", "s1", (1, 3.0, 0.03), 4) == [3, 3]
    assert cal.leads(rows, "v", "s1", (1, 3.0, 0.2), 4) == [0, 0]
    assert cal.leads(rows, "v", "ctl", (1, 3.0, 0.03), 4) == [None, None]
    best = cal.choose(cal.grid(rows, ["v"], ["v"], 4))
    # Earliest alarm (gen 1) needs k = 1 with z <= 5 and floor in (0.02, 0.03]; of the ties
    # (z 2, 3, 4) the one closest to the previous defaults (2, 3, 0.01) keeps z = 3.
    assert (best["trend_k"], best["trend_z"], best["trend_floor"]) == (1, 3.0, 0.03)


def test_ties_go_to_the_fewest_changes_floor_first():
    row = lambda k, z, f: {"trend_k": k, "trend_z": z, "trend_floor": f, "score": 5, "hits": 0,
                           "fa": {"v": (0, 10)}}
    tied = [row(3, 6.0, 0.05), row(3, 3.0, 0.01), row(2, 3.0, 0.05), row(2, 3.0, 0.03),
            row(2, 4.0, 0.01)]
    best = cal.choose(tied)
    assert (best["trend_k"], best["trend_z"], best["trend_floor"]) == (2, 3.0, 0.03)
    assert cal.choose(tied[:2] + [row(2, 4.0, 0.01)])["trend_z"] == 4.0   # z before k
    better = dict(row(3, 6.0, 0.05), hits=1)                              # hits before closeness
    assert cal.choose(tied + [better]) is better


def test_timing_table_groups_steps_by_kind():
    md = report_v2.timing_md({"gen0/train": 100.0, "seed1/gen1/train": 10.0,
                              "seed1/ctl/gen2/train": 30.0, "seed1/gen1/generate": 5.0,
                              "stream/v2-s1-s1-m0/gen1": 0.5, "seed1/gen1/exact/m0_gen": None})
    assert "| gen-0 training (once) | 1 | 100.0 | 100.0 | 100.0 | 100 |" in md
    assert "| fine-tuning | 2 | 10.0 | 20.0 | 30.0 | 40 |" in md
    assert "exact log-det" not in md                    # no timed step of that kind
    assert "**146 (2.4 min)**" in md


def test_report_writes_every_section(tmp_path):
    rows = _grid_rows()
    for r in rows:
        r["reports"] = {v: r["reports"]["v"] for v in ("m0", "probe")}
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "rows.json").write_text(json.dumps(
        {"config": {"generations": 4, "variants": {"m0": [], "probe": []}}, "rows": rows}))
    text = report_v2.write(tmp_path).read_text()
    for section in ("## First fire", "## False alarms on the control", "## S2 / S1",
                    "## Interval coverage on the control", "## Trend settings", "Chosen: trend_k = 1",
                    "## Lead of the chosen setting", "| `m0` | S1 | 1 [1–1] (2/2) | 4 [4–4] (2/2) "):
        assert section in text
    assert "`m0` | control | — (0/2)" in text
