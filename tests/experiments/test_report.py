"""The 'which moves first' bookkeeping of the report, on synthetic rows."""
import sys
from pathlib import Path

# experiments/sigma_exp is a plain source package (not installed): import it from the tree.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from sigma_exp import report


def row(k, drift, half, alerts, d1, rep):
    rep_ = {"track2_drift": drift, "drift_halfwidth": half,
            "alerts": [{"rule": r, "severity": s} for r, s in alerts]}
    return {"generation": k, "taps": {"minilm": {"report": rep_}},
            "surface": {"distinct_1": d1, "rep_rate": rep}}


ROWS = [row(0, 0.0, 1.0, [("low_confidence", "warning")], 0.50, 0.00),
        row(1, 3.0, 1.0, [("low_confidence", "warning")], 0.49, 0.01),
        row(2, 9.0, 1.0, [("early_warning_divergence", "warning")], 0.47, 0.02),
        row(3, 20.0, 1.0, [("collapse_expansion", "critical")], 0.40, 0.09)]


def test_alert_and_significance():
    assert report.alert_gen(ROWS, "minilm") == 2       # low_confidence does not count
    assert report.significant_gen(ROWS, "minilm") == 1
    assert report.alert_gen(ROWS[:2], "minilm") is None


def test_surface_moves():
    assert report.surface_move(ROWS, "distinct_1", "rel", 0.10) == 3   # 0.40 vs 0.50
    assert report.surface_move(ROWS, "rep_rate", "abs", 0.05) == 3
    assert report.surface_move(ROWS[:3], "rep_rate", "abs", 0.05) is None
