"""python -m sigma_client report --target T --job J [--job J2 ...] [--tap TAP] --out FILE.png"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .errors import SigmaError


def _report(a) -> int:
    from .monitor import Monitor
    from .plot import format_table, plot_reports

    series, thresholds = {}, {}
    for job in a.job:
        with Monitor(a.target, job=job, tap=a.tap or "default", rank=0, world_size=1,
                     timeout=a.timeout, max_retries=2) as mon:
            reports = mon.history(tap=a.tap or "")
            info = mon.job_info()
        if not reports:
            where = f" in tap {a.tap!r}" if a.tap else ""
            print(f"sigma report: job {job!r} has no sealed generations{where} on {mon.target}",
                  file=sys.stderr)
        taps = sorted({r.tap for r in reports}) or [a.tap or "default"]
        for tap in taps:
            name = job if len(taps) == 1 and (not a.tap or a.tap == tap) else f"{job}/{tap}"
            series[name] = [r for r in reports if r.tap == tap]
            thresholds[name] = info.config.thresholds if info else None
    print(format_table(series, with_info=a.all_alerts))
    if a.out:
        try:
            plot_reports(series, a.out, thresholds=thresholds, title=a.title)
        except ImportError as e:
            print(f"sigma report: --out needs matplotlib ({e}); pip install 'sigma_client[plot]'",
                  file=sys.stderr)
            return 1
        except OSError as e:
            print(f"sigma report: cannot write {a.out}: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"wrote {a.out}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sigma_client",
                                 description="SIGMA monitor client commands")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report", help="table and plot of the drift of one or several jobs")
    r.add_argument("--target", required=True, help="sigmad address host:port (or a,b list)")
    r.add_argument("--job", action="append", required=True, help="job name; repeat for several")
    r.add_argument("--tap", default=None, help="one tap (default: every tap of the job)")
    r.add_argument("--out", default=None, help="write the plot to this PNG")
    r.add_argument("--title", default=None)
    r.add_argument("--all-alerts", action="store_true", help="list info-level alerts too")
    r.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "report":
            return _report(a)
    except SigmaError as e:
        print(f"sigma {a.cmd}: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
