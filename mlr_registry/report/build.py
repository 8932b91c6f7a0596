"""Make a report: runs from MLflow -> statistics -> tables, CSVs, plots -> a ``report`` MLflow run.

:func:`build_report` is what ``python -m mlr_registry.report`` calls; notebooks and tests call it
directly. It always reports what it has: missing games or tasks, uneven seed counts and the
games the aggregates cover are listed in ``Report.notes`` (printed and in ``table.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlr_registry.report import aggregate, protocol, tables
from mlr_registry.report.aggregate import DEFAULT_REPS, Curve, Interval, ScoreMatrix, TaskStats
from mlr_registry.report.data import Reference, reference
from mlr_registry.report.runs import (
    CURVE_METRIC,
    ReportError,
    RunFilter,
    RunRecord,
    find_runs,
    metric_histories,
)

REPORT_EXPERIMENT = "reports"
REPORT_RUN_NAME = "report"


@dataclass
class ReportOptions:
    """What to report and where: ``out_dir`` receives table.md, the CSVs and the PNGs."""

    filter: RunFilter
    out_dir: Path
    reps: int = DEFAULT_REPS
    seed: int = 0
    plots: bool = True
    log_run: bool = True


@dataclass
class Report:
    """Everything a report shows; ``text`` is what the CLI prints."""

    filter: RunFilter
    ref: Reference
    objectives: list[str]
    records: list[RunRecord]
    stats: dict[str, dict[str, TaskStats]]
    matrices: dict[str, ScoreMatrix]
    intervals: dict[str, dict[str, Interval]]
    summaries: dict[str, dict[str, float]]
    extra_tasks: list[str]
    notes: list[str]
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None
    text: str = ""
    # Set when runs are off the benchmark's protocol (budget, evaluation): the headline first.
    # Tables, plots and the console then say the paper's columns are not comparable.
    protocol_warning: list[str] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        """Whether every counted run follows the benchmark's protocol as far as its params tell."""
        return not self.protocol_warning


def _list(items, limit: int = 30) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _coverage_notes(ref: Reference, objectives: list[str], stats, matrices, extra: list[str]) -> list[str]:
    word = "games" if ref.is_atari else "tasks"
    notes = []
    if extra:
        why = "no Random/Human score" if ref.is_atari else "not in the paper's Table 2"
        notes.append(f"runs on {word} outside {ref.benchmark}'s table ({why}), shown but left out of the "
                     f"aggregates: {_list(extra)}")
    for obj in objectives:
        have = stats.get(obj, {})
        missing = [t for t in ref.tasks if t not in have]
        if missing:
            notes.append(f"{obj}: no runs on {len(missing)} of {len(ref.tasks)} {word}: {_list(missing)}")
        present = [t for t in ref.tasks if t in have]
        if not present:
            continue
        most = max(have[t].n for t in present)
        fewer = [f"{t} ({have[t].n})" for t in present if have[t].n < most]
        if fewer:
            notes.append(f"{obj}: fewer seeds than the most ({most}) on: {_list(fewer)}")
        m = matrices.get(obj)
        if m is not None and (missing or m.truncated):
            cut = (f"; the first {m.seeds_per_task} seed(s) of every {word[:-1]} are used so that each "
                   f"counts the same ({len(m.truncated)} {word} have more; per-{word[:-1]} means use all)"
                   if m.truncated else "")
            what = "aggregates" if ref.is_atari else "aggregates and the mean/median over tasks"
            notes.append(f"{obj}: {what} over the {len(m.tasks)} of {len(ref.tasks)} {word} with runs "
                         f"only (the paper's cover all {len(ref.tasks)}){cut}")
        if m is not None and m.seeds_per_task == 1:
            notes.append(f"{obj}: one seed per {word[:-1]} in the aggregates, so their bootstrap CIs "
                         "(over seeds) have zero width")
    return notes


def _curves(client, report: Report, reps: int, seed: int) -> dict[str, dict[str, Curve]]:
    histories = metric_histories(client, report.records, CURVE_METRIC)
    grouped: dict[str, dict[str, list]] = {}
    for r in report.records:
        if r.run_id in histories:
            steps, values = histories[r.run_id]
            if report.ref.is_atari and r.env in report.ref.tasks:
                values = report.ref.normalize(r.env, values)
            grouped.setdefault(r.objective, {}).setdefault(r.env, []).append((steps, values))
    return {obj: {task: aggregate.learning_curve(h, reps, seed) for task, h in by_task.items()}
            for obj, by_task in grouped.items()}


def analyse(client, flt: RunFilter, reps: int = DEFAULT_REPS, seed: int = 0) -> Report:
    """Find the runs and compute every statistic of the report (no files)."""
    ref = reference(flt.benchmark)
    records, notes = find_runs(client, flt)
    stats = aggregate.task_stats(records, ref)
    asked = list(dict.fromkeys(flt.objectives))
    objectives = [o for o in asked if o in stats] if asked else sorted(stats)
    absent = [o for o in asked if o not in stats]
    if absent:
        notes.append(f"no runs for objective(s): {', '.join(absent)}")
    extra = sorted({t for obj in objectives for t in stats[obj] if t not in ref.tasks})
    matrices = {o: m for o in objectives if (m := aggregate.score_matrix(stats[o], ref)) is not None}
    intervals = aggregate.aggregate_intervals(matrices, reps=reps, seed=seed)
    summaries = {} if ref.is_atari else {
        o: aggregate.task_summary(stats[o], ref.tasks) for o in objectives if o in matrices}
    agents = sorted({r.agent for r in records})
    if len(agents) > 1:
        notes.append(f"runs of several agents are grouped by objective: {', '.join(agents)}")
    notes += _coverage_notes(ref, objectives, stats, matrices, extra)
    notes += protocol.unchecked_note(flt.benchmark, records)
    return Report(flt, ref, objectives, records, stats, matrices, intervals, summaries, extra, notes,
                  protocol_warning=protocol.warning_lines(flt.benchmark, records))


def _plots(client, report: Report, out: Path, reps: int, seed: int) -> list[Path]:
    from mlr_registry.report import plots

    files = []
    if report.intervals:
        files.append(plots.plot_aggregates(report, out / "aggregates.png"))
        # Up to the best normalized score seen (at least 1: human level, or DMC's maximum).
        best = max(float(np.max(m.scores)) for m in report.matrices.values())
        taus = np.linspace(0.0, max(1.0, np.ceil(best * 4) / 4), 81)
        profiles, cis = aggregate.performance_profiles(report.matrices, taus, reps=reps, seed=seed)
        files.append(plots.plot_profiles(report, profiles, cis, taus, out / "performance_profiles.png"))
    name = "per_game.png" if report.ref.is_atari else "per_task.png"
    files.append(plots.plot_per_task(report, out / name))
    curves = _curves(client, report, reps, seed)
    if curves:
        files.append(plots.plot_learning_curves(report, curves, out / "learning_curves.png"))
    else:
        report.notes.append(f"no learning curves: no run logged {CURVE_METRIC}")
    return files


def log_report_run(report: Report) -> str:
    """A run named ``report · <benchmark> · <objectives>`` in experiment ``reports``: tags, filters as params, the
    aggregates as metrics (``<objective>/<metric>``), and the output folder as artifacts."""
    from mlr_registry.tracking.mlflow_run import TrackedRun
    from mlr_registry.tracking.naming import SEPARATOR

    uri = report.filter.tracking_uri
    # e.g. "report · atari100k · mlr vs baseline": reports of one store tell apart in the runs table
    name = SEPARATOR.join([REPORT_RUN_NAME, report.filter.benchmark, " vs ".join(report.objectives)])
    run = TrackedRun(uri, experiment=REPORT_EXPERIMENT, run_name=name)  # artifacts beside a SQLite store
    flt = report.filter
    tags = {"benchmark": flt.benchmark, "report": "true", "objectives": ",".join(report.objectives),
            "comparable": str(report.comparable).lower()}
    params = {"experiments": ",".join(flt.experiments) or "all",
              "objectives_filter": ",".join(flt.objectives) or "all",
              "tags_filter": ";".join(f"{k}={v}" for k, v in flt.tags) or "none",
              "runs": str(len(report.records))}
    run.start(tags, params)
    status = "FAILED"
    try:
        for obj, by_metric in report.intervals.items():
            safe = "".join(c if c.isalnum() or c in "_-. /" else "_" for c in obj)
            run.log_metrics({f"{safe}/{metric}": iv.point for metric, iv in by_metric.items()}, step=0)
        run.flush()
        run.client.log_artifacts(run.run_id, str(report.out_dir))
        status = "FINISHED"
    finally:
        run.end(status)
    return run.run_id


def build_report(options: ReportOptions) -> Report:
    """Analyse the runs, write table.md, per_game.csv, aggregates.csv and the PNGs into
    ``options.out_dir``, log them as a ``report`` MLflow run, and return the report."""
    from mlflow.tracking import MlflowClient

    if options.reps < 1:
        raise ReportError(f"--reps = {options.reps} must be at least 1")
    from mlr_registry.tracking.mlflow_run import missing_sqlite_store

    missing = missing_sqlite_store(options.filter.tracking_uri)
    if missing is not None:
        raise ReportError(f"no MLflow store at {missing} (the file does not exist): pass the store your runs "
                          "used with --tracking-uri (by default mlruns.db in the folder you trained from)")
    client = MlflowClient(tracking_uri=options.filter.tracking_uri)
    report = analyse(client, options.filter, reps=options.reps, seed=options.seed)
    out = Path(options.out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file; give a folder (made if missing) for the report's files")
    out.mkdir(parents=True, exist_ok=True)
    report.out_dir = out
    pngs = _plots(client, report, out, options.reps, options.seed) if options.plots else []
    tables.write_per_task_csv(report, out / "per_game.csv")
    tables.write_aggregates_csv(report, out / "aggregates.csv")
    (out / "table.md").write_text(tables.render_markdown(report, [p.name for p in pngs]), encoding="utf-8")
    report.files = [out / "table.md", out / "per_game.csv", out / "aggregates.csv", *pngs]
    report.text = tables.render_text(report)
    if options.log_run:
        report.run_id = log_report_run(report)
    return report
