"""The report's tables: ours beside the paper's MLR and Baseline, as text, Markdown and CSV.

One :class:`Table` (headers + string cells) is rendered both for the terminal and for
``table.md``, so the two never disagree. Games or tasks without runs stay in the table, marked
``—  (no runs)``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlr_registry.report.data import AGGREGATE_TITLES, AGGREGATES, PAPER_METHODS

if TYPE_CHECKING:  # pragma: no cover
    from mlr_registry.report.build import Report

NO_RUNS = "—  (no runs)"
DASH = "—"


@dataclass
class Table:
    """A table of strings; the first column is left-aligned, the others right-aligned."""

    headers: list[str]
    rows: list[list[str]]

    def to_text(self) -> str:
        widths = [max(len(r[i]) for r in [self.headers, *self.rows]) for i in range(len(self.headers))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(self.headers), rule, *(line(r) for r in self.rows)])

    def to_markdown(self) -> str:
        head = "| " + " | ".join(self.headers) + " |"
        align = "|" + "|".join([":---"] + ["---:"] * (len(self.headers) - 1)) + "|"
        body = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows]
        return "\n".join([head, align, *body])


def _num(x: float | None, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{x:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return DASH
    return f"{mean:.0f} ± {std:.0f}" if std is not None and not math.isnan(std) else f"{mean:.0f}"


def _interval(iv) -> str:
    return f"{iv.point:.3f} [{iv.low:.3f}, {iv.high:.3f}]" if iv is not None else DASH


def _paper_agg(report: Report, metric: str, method: str, scale: float = 1.0) -> str:
    value = report.ref.paper_aggregates.get(metric, {}).get(method)
    if value is None:
        return DASH
    mark = "*" if metric in report.ref.derived else ""
    return f"{value / scale:.3f}{mark}"


def paper_header(report: Report, method: str) -> str:
    """A paper column's header; off-protocol runs make it say the column is not comparable."""
    return f"Paper {method}" + ("" if report.comparable else " (not comparable)")


def warning_text(report: Report) -> list[str]:
    """The off-protocol warning as console lines (empty when every run is at the protocol)."""
    if report.comparable:
        return []
    head, *details = report.protocol_warning
    return [f"WARNING: {head}.", *(f"  - {d}" for d in details), ""]


def warning_markdown(report: Report) -> list[str]:
    """The off-protocol warning as a Markdown quote block (empty when every run is at the protocol)."""
    if report.comparable:
        return []
    head, *details = report.protocol_warning
    return [f"> **WARNING: {head}.**", ">", *(f"> - {d}" for d in details), ""]


def per_task_table(report: Report) -> Table:
    """Atari: score (n seeds) and HNS per objective; DMC: mean ± std (n) per objective."""
    ref = report.ref
    tasks = list(ref.tasks) + report.extra_tasks
    if ref.is_atari:
        headers = ["Game", "Random", "Human"]
        for obj in report.objectives:
            headers += [f"{obj} (n)", f"{obj} HNS"]
        headers += [paper_header(report, m) for m in PAPER_METHODS]
    else:
        headers = ["Task", *(f"{obj} (n)" for obj in report.objectives),
                   *(paper_header(report, m) for m in PAPER_METHODS)]
    rows = []
    for task in tasks:
        row = [ref.titles.get(task, task)]
        if ref.is_atari:
            row += [_num(ref.random.get(task), 1), _num(ref.human.get(task), 1)]
        for obj in report.objectives:
            st = report.stats.get(obj, {}).get(task)
            if st is None:
                row += [NO_RUNS, ""] if ref.is_atari else [NO_RUNS]
            elif ref.is_atari:
                row += [f"{st.mean:.1f} ({st.n})", _num(st.normalized_mean, 3)]
            else:
                row += [f"{_pm(st.mean, st.std)} ({st.n})"]
        for method in PAPER_METHODS:
            mean = ref.paper.get(method, {}).get(task)
            row.append(_num(mean, 1) if ref.is_atari else _pm(mean, ref.paper_std.get(method, {}).get(task)))
        rows.append(row)
    if not ref.is_atari:
        for metric in ("mean", "median"):
            row = [f"{metric.capitalize()} (over tasks)"]
            for obj in report.objectives:
                summary = report.summaries.get(obj)
                row.append(_num(summary[metric], 1) if summary else DASH)
            row += [_num(ref.paper_aggregates.get(metric, {}).get(m), 1) for m in PAPER_METHODS]
            rows.append(row)
    return Table(headers, rows)


def aggregate_table(report: Report) -> Table:
    """IQM, optimality gap, median, mean with 95% CIs per objective, beside the paper's."""
    ref = report.ref
    scale = 1.0 if ref.is_atari else 1000.0  # the paper's DMC mean/median are in returns
    headers = [f"Aggregate ({ref.normalized_name})", *(f"{obj} [95% CI]" for obj in report.objectives),
               *(paper_header(report, m) for m in PAPER_METHODS)]
    rows = []
    for metric in AGGREGATES:
        row = [AGGREGATE_TITLES[metric]]
        row += [_interval(report.intervals.get(obj, {}).get(metric)) for obj in report.objectives]
        row += [_paper_agg(report, metric, m, scale) for m in PAPER_METHODS]
        rows.append(row)
    coverage = ["games (seeds each)" if ref.is_atari else "tasks (seeds each)"]
    for obj in report.objectives:
        m = report.matrices.get(obj)
        coverage.append(f"{len(m.tasks)}/{len(ref.tasks)} ({m.seeds_per_task})" if m else DASH)
    rows.append(coverage + [f"{len(ref.tasks)}/{len(ref.tasks)}"] * len(PAPER_METHODS))
    return Table(headers, rows)


def paper_footnote(report: Report) -> str:
    if report.ref.is_atari:
        return ("* the paper prints IQM and optimality gap only; its median and mean here are computed "
                "from Table 1's per-game means (the paper's IQM/OG come from per-run scores).")
    return "Paper: mean and median of Table 2 divided by 1000; the paper gives no IQM or optimality gap."


def render_text(report: Report) -> str:
    parts = [f"{report.ref.benchmark} report: {report.filter.describe()}", "", *warning_text(report),
             per_task_table(report).to_text(), "", aggregate_table(report).to_text(),
             paper_footnote(report)]
    if report.notes:
        parts += ["", "Notes:", *(f"- {n}" for n in report.notes)]
    return "\n".join(parts)


def render_markdown(report: Report, plots: list[str]) -> str:
    parts = [f"# {report.ref.benchmark} report", "", *warning_markdown(report),
             f"Runs: {report.filter.describe()}.", "", "## Per " + ("game" if report.ref.is_atari else "task"), "",
             per_task_table(report).to_markdown(), "", "## Aggregates", "",
             aggregate_table(report).to_markdown(), "", paper_footnote(report)]
    if report.notes:
        parts += ["", "## Notes", "", *(f"- {n}" for n in report.notes)]
    if plots:
        parts += ["", "## Plots", "", *(f"![{p}]({p})" for p in plots)]
    return "\n".join(parts) + "\n"


def write_per_task_csv(report: Report, path: Path) -> None:
    ref = report.ref
    headers = ["benchmark", "objective", "task", "title", "n_seeds", "seeds", "mean", "std",
               "normalized_mean", "in_aggregates"]
    for m in PAPER_METHODS:
        headers += [f"paper_{m}", f"paper_{m}_std"]
    headers.append("comparable_with_paper")  # false when runs are off the benchmark's protocol
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(headers)
        for obj in report.objectives:
            matrix = report.matrices.get(obj)
            for task in list(ref.tasks) + report.extra_tasks:
                st = report.stats.get(obj, {}).get(task)
                row = [ref.benchmark, obj, task, ref.titles.get(task, task)]
                if st is None:
                    row += [0, "", "", "", "", "false"]
                else:
                    row += [st.n, ";".join(st.seeds), repr(st.mean), "" if st.n < 2 else repr(st.std),
                            "" if st.normalized is None else repr(st.normalized_mean),
                            str(bool(matrix and task in matrix.tasks)).lower()]
                for m in PAPER_METHODS:
                    mean = ref.paper.get(m, {}).get(task)
                    std = ref.paper_std.get(m, {}).get(task)
                    row += ["" if mean is None else mean, "" if std is None else std]
                w.writerow([*row, str(report.comparable).lower()])


def write_aggregates_csv(report: Report, path: Path) -> None:
    ref = report.ref
    scale = 1.0 if ref.is_atari else 1000.0
    headers = ["benchmark", "objective", "metric", "on", "point", "ci_low", "ci_high", "n_tasks",
               "seeds_per_task", *(f"paper_{m}" for m in PAPER_METHODS), "comparable_with_paper"]
    comparable = str(report.comparable).lower()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(headers)
        for obj in report.objectives:
            matrix = report.matrices.get(obj)
            for metric, iv in report.intervals.get(obj, {}).items():
                paper = [ref.paper_aggregates.get(metric, {}).get(m) for m in PAPER_METHODS]
                w.writerow([ref.benchmark, obj, metric, ref.normalized_name, repr(iv.point), repr(iv.low),
                            repr(iv.high), len(matrix.tasks), matrix.seeds_per_task,
                            *("" if p is None else round(p / scale, 6) for p in paper), comparable])
            if not ref.is_atari and obj in report.summaries:
                # Table 2's rows: mean and median over tasks of the per-task mean returns (no CI).
                for metric, value in report.summaries[obj].items():
                    paper = [ref.paper_aggregates.get(metric, {}).get(m) for m in PAPER_METHODS]
                    n = sum(t in report.stats[obj] for t in ref.tasks)
                    w.writerow([ref.benchmark, obj, f"task_{metric}", "return", repr(value), "", "", n, "",
                                *("" if p is None else p for p in paper), comparable])
