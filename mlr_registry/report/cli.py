"""The paper's tables from MLflow runs: ``python -m mlr_registry.report --benchmark atari100k``.

Only FINISHED runs with the metric ``final_return`` count. Prints the table (ours beside the
paper's MLR and Baseline) and writes table.md, per_game.csv, aggregates.csv and PNGs into
--out, then logs that folder as a run named ``report`` in the MLflow experiment ``reports``.
Input errors (no matching runs, unknown experiment, bad --tag) print one line and exit 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mlr_registry.report.aggregate import DEFAULT_REPS
from mlr_registry.report.data import BENCHMARKS

EXIT_USAGE = 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mlr_registry.report",
        description="The paper's tables (Atari-100k Table 1, DMC Table 2) from MLflow training runs.",
        epilog="example: python -m mlr_registry.report --benchmark atari100k --experiment atari100k "
               "--objective mlr --objective baseline")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="which paper table to reproduce")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    p.add_argument("--experiment", action="append", default=[], metavar="NAME",
                   help="only runs of this MLflow experiment; repeat for several (default: all experiments)")
    p.add_argument("--objective", action="append", default=[], metavar="NAME",
                   help="only runs with this objective tag, e.g. mlr; repeat for several; one column group "
                        "each, in the order given (default: every objective found)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="only runs with this tag value, e.g. --tag agent=rainbow; repeat for several")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: reports/<benchmark>-<timestamp>)")
    p.add_argument("--no-plots", action="store_true", help="write tables and CSVs only")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report as an MLflow run")
    p.add_argument("--reps", type=int, default=DEFAULT_REPS,
                   help=f"bootstrap replications for the CIs (default {DEFAULT_REPS}, about 0.3 s per objective; "
                        "rliable's default 50000 takes about 10 s per objective and moves the CI bounds by "
                        "about 0.003)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from mlr_registry.errors import MLRError

    try:
        from mlr_registry.report.build import ReportOptions, build_report
        from mlr_registry.report.runs import RunFilter, parse_tag
        from mlr_registry.tracking.mlflow_run import resolve_tracking_uri

        flt = RunFilter(args.benchmark, resolve_tracking_uri(args.tracking_uri), tuple(args.experiment),
                        tuple(args.objective), tuple(parse_tag(t) for t in args.tag))
        out = args.out or Path("reports") / f"{args.benchmark}-{time.strftime('%Y%m%d-%H%M%S')}"
        report = build_report(ReportOptions(flt, out, reps=args.reps, seed=args.seed,
                                            plots=not args.no_plots, log_run=not args.no_mlflow))
    except MLRError as exc:
        if args.debug:
            raise
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    print(report.text)
    if not report.comparable:  # the table is long: the warning at its top may have scrolled away
        print(f"\nwarning: {report.protocol_warning[0]} (details at the top of the table and of table.md)",
              file=sys.stderr)
    print(f"\nwrote {len(report.files)} files to {report.out_dir}", file=sys.stderr)
    if report.run_id:
        print(f"MLflow run {report.run_id} (experiment 'reports') at {flt.tracking_uri}", file=sys.stderr)
    return 0
