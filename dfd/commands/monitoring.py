"""`dfd monitor`: drift of the served traffic against the production model's reference."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path


def cmd_monitor(args: argparse.Namespace) -> int:
    """Exit 0 whatever the verdict (a drifted week is an answer), 3 when an enabled alert channel failed."""
    from dfd.commands import params_from_args
    from dfd.monitoring.traffic import parse_time, window_start
    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from tasks.monitor import headline, run

    params = params_from_args(args)
    until = parse_time(args.until) if args.until else None
    window_start(args.since or params.monitor.window, until or datetime.now(UTC))  # bad input fails before any store
    res = run(params, Layout.from_params(params, Path.cwd()), Tracker.from_params(params, Path.cwd()), args.since,
              now=until)
    print(headline(res.summary, res.version, res.summary["window"]))
    print(f"report: {res.out_dir}")
    return 3 if "failed" in res.alerts.values() else 0
