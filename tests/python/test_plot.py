"""The report figure (issue 16 part 3): integer generation ticks, a visible 95 % band,
Track I distinguishable from an equal Track II, one y-scale per job, markers unclipped."""
from __future__ import annotations

import pytest

from sigma_client.report import Alert, GenerationReport, PerDimension

pytest.importorskip("matplotlib")
from sigma_client.plot import draw_reports  # noqa: E402


def rep(job, k, drift, hw=0.001, alerts=()):
    return GenerationReport(job=job, tap="t", generation=k, m=8, n_a=100,
                            per_dim=PerDimension(track1_drift=drift, track2_drift=drift,
                                                 drift_halfwidth=hw),
                            alerts=tuple(Alert(a, "critical") for a in alerts))


def test_figure_ticks_scales_band_tracks_and_markers():
    import matplotlib.pyplot as plt

    small = [rep("small", k, -0.01 * k) for k in range(3)]
    big = [rep("big", k, -1.5 * k, alerts=("collapse_contraction",) if k == 2 else ())
           for k in range(3)]
    fig = draw_reports({"small": small, "big": big})
    try:
        top_small, top_big = fig.axes[0], fig.axes[1]
        fig.canvas.draw()
        ticks = [t for t in top_small.get_xticks() if top_small.get_xlim()[0] <= t <= top_small.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert top_small.get_ylim() != top_big.get_ylim(), "one y-scale per job"
        # the critical marker at y = -3.0 lies inside the range and is not clipped
        lo, hi = top_big.get_ylim()
        markers = [l for l in top_big.lines if l.get_marker() == "X"]
        assert markers and not markers[0].get_clip_on() and lo < -3.0 < hi
        # Track I and Track II equal: drawn differently (hollow dashed squares vs filled dots)
        t1 = next(l for l in top_small.lines if l.get_label().startswith("Track I drift"))
        t2 = next(l for l in top_small.lines if l.get_label().startswith("Track II drift"))
        assert (t1.get_marker(), t1.get_linestyle()) != (t2.get_marker(), t2.get_linestyle())
        assert t1.get_markerfacecolor() == "none"
        # the band is also drawn as error bars (a thin band stays visible)
        assert any(c.get_label() == "Track II 95 % band" for c in top_small.collections)
        assert len(top_small.containers) == 1  # the errorbar container
    finally:
        plt.close(fig)


def test_thresholds_are_drawn_as_they_were_at_seal_time():
    import dataclasses

    import matplotlib.pyplot as plt

    reports = [dataclasses.replace(rep("j", k, -0.05 * k),
                                   thresholds_at_seal={"drift_warning": 0.2, "drift_critical": c,
                                                       "divergence_warning": 0.05})
               for k, c in enumerate((0.5, 0.5, 0.3))]
    fig = draw_reports({"j": reports})
    try:
        top = fig.axes[0]
        critical = [l for l in top.lines if l.get_label().startswith("critical")]
        assert critical and "(at seal)" in critical[0].get_label(), [l.get_label() for l in top.lines]
        ys = list(critical[0].get_ydata())
        assert ys == [0.5, 0.5, 0.3], ys  # a step where ConfigureJob changed it, not today's value
        warning = [l for l in top.lines if l.get_label().startswith("warning")]
        assert warning and list(warning[0].get_ydata()) == [0.2, 0.2]  # unchanged: one horizontal line
    finally:
        plt.close(fig)
