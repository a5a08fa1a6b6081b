"""python -m sigma_client report|sync (also the console entry sigma-report).

    report --target T --job J [--job J2 ...] [--tap TAP] [--out FILE.png] [--csv FILE|-]
    sync DIR [--target T]      send the offline spool's shares, exactly once
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .errors import SigmaError

DEFAULT_TARGET = "127.0.0.1:50051"


def _target(a) -> str:
    """--target, else $SIGMA_TARGET, else 127.0.0.1:50051 (as sigmactl)."""
    return a.target or os.environ.get("SIGMA_TARGET") or DEFAULT_TARGET


def _report(a) -> int:
    from .monitor import Monitor
    from .plot import format_table, plot_reports
    from .tables import write_csv

    series, thresholds = {}, {}
    for job in a.job:
        with Monitor(_target(a), job=job, tap=a.tap or "default", rank=0, world_size=1,
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
    if a.csv:
        rows = [r for name in series for r in series[name]]
        try:
            if a.csv == "-":
                write_csv(rows, sys.stdout)
            else:
                with open(a.csv, "w", newline="") as f:
                    write_csv(rows, f)
        except OSError as e:
            print(f"sigma report: cannot write {a.csv}: {e.strerror or e}", file=sys.stderr)
            return 1
    if a.csv != "-":
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


def _sync(a) -> int:
    """Sends every spooled share of DIR, grouped by (target, job, tap, rank), oldest first."""
    from .monitor import Monitor
    from .spool import Spool

    spool = Spool(a.dir)
    if not spool.dir.is_dir():
        print(f"sigma sync: {a.dir}: no such directory", file=sys.stderr)
        return 1
    groups = {}
    for s in spool.pending():
        groups.setdefault((a.target or s.target, s.job, s.tap, s.rank), s.world_size)
    sent, failed, down = 0, [], []
    for (target, job, tap, rank), world in groups.items():
        with Monitor(target, job=job, tap=tap, rank=rank, world_size=world, timeout=a.timeout,
                     max_retries=2, token=a.token, tls=a.tls, tls_ca=a.tls_ca) as mon:
            try:
                n, bad = mon.drain_spool(spool)
            except SigmaError as e:
                down.append(f"{job}/{tap} rank {rank}: {e}")
                continue
        sent += n
        failed += bad
    print(f"sigma sync: sent {sent} shares from {a.dir}" +
          (f", {len(failed)} refused (renamed *.failed)" if failed else "") +
          (f", {len(down)} groups left (daemon unreachable)" if down else ""))
    for path, why in failed:
        print(f"  refused {path}: {why}", file=sys.stderr)
    for line in down:
        print(f"  not sent {line}", file=sys.stderr)
    return 1 if failed or down else 0


class _Parser(argparse.ArgumentParser):
    """Usage errors: the message and one line pointing at --help (not the whole usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}\nsee '{self.prog} --help'\n")


def _parser(prog: str) -> argparse.ArgumentParser:
    ap = _Parser(prog=prog, description="SIGMA monitor client commands")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    r = sub.add_parser("report", help="table, CSV and plot of the drift of one or several jobs")
    r.add_argument("--target", default=None,
                   help=f"sigmad address host:port or a,b list (default: $SIGMA_TARGET, else "
                        f"{DEFAULT_TARGET})")
    r.add_argument("--job", action="append", required=True, help="job name; repeat for several")
    r.add_argument("--tap", default=None, help="one tap (default: every tap of the job)")
    r.add_argument("--out", default=None, help="write the plot to this PNG")
    r.add_argument("--csv", default=None, metavar="FILE",
                   help="write one CSV row per report to FILE ('-': stdout, without the table)")
    r.add_argument("--title", default=None)
    r.add_argument("--all-alerts", action="store_true", help="list info-level alerts too")
    r.add_argument("--timeout", type=float, default=30.0)
    s = sub.add_parser("sync", help="send the shares of an offline spool directory (once)")
    s.add_argument("dir", help="the spool directory (Monitor(spool_dir=...), $SIGMA_SPOOL_DIR)")
    s.add_argument("--target", default=None,
                   help="send to this daemon instead of the one each share was meant for")
    s.add_argument("--token", default=None, help="bearer token (default: $SIGMA_TOKEN)")
    s.add_argument("--tls", action="store_true", help="connect over TLS")
    s.add_argument("--tls-ca", default=None, help="PEM bundle to check the server against")
    s.add_argument("--timeout", type=float, default=30.0)
    return ap


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m sigma_client") -> int:
    a = _parser(prog).parse_args(argv)
    try:
        if a.cmd == "report":
            return _report(a)
        if a.cmd == "sync":
            return _sync(a)
    except SigmaError as e:
        print(f"sigma {a.cmd}: {e}", file=sys.stderr)
        return 1
    return 2


def report_main(argv: Optional[Sequence[str]] = None) -> int:
    """The sigma-report console entry: `sigma-report --target T --job J ...`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["report"]:
        argv.insert(0, "report")
    return main(argv, prog="sigma-report")


if __name__ == "__main__":
    sys.exit(main())
