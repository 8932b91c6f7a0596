"""The report's figures (PNG, matplotlib's Agg backend: no display needed).

- ``aggregates.png``: IQM, optimality gap, median, mean with 95% CIs (rliable), the paper's
  MLR and Baseline as dashed lines where the paper gives the number;
- ``performance_profiles.png``: rliable score distributions with CIs;
- ``per_game.png`` / ``per_task.png``: each game's (or task's) score of every objective beside
  the paper's MLR and Baseline;
- ``learning_curves.png``: evaluation return (Atari: HNS) against env steps, mean over seeds
  with a bootstrap 95% CI.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported anywhere, rliable's plot_utils included

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mlr_registry.report.data import AGGREGATE_TITLES, AGGREGATES, PAPER_METHODS  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from mlr_registry.report.aggregate import Curve
    from mlr_registry.report.build import Report

PAPER_STYLE = {"MLR": dict(color="black", linestyle="--"), "Baseline": dict(color="0.55", linestyle=":")}
DPI = 110


def _colors(objectives: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {obj: cmap(i % 10) for i, obj in enumerate(objectives)}


def _paper_label(report: Report, method: str) -> str:
    return f"paper {method}" + ("" if report.comparable else " (not comparable)")


def _banner(fig, report: Report) -> None:
    """Off-protocol runs: red lines above everything else in the figure (titles included) saying
    the paper's numbers are not comparable (``_save`` keeps them: its bounding box takes in
    every artist). Wrapped to the figure's width by hand: matplotlib's ``wrap`` misplaces text
    outside the figure."""
    if report.comparable:
        return
    renderer = fig.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible()]
    boxes += [t.get_window_extent(renderer) for t in (fig._suptitle,) if t is not None]
    top = max(b.y1 for b in boxes) + 4 * fig.dpi / 72  # pixels; 4 points of space
    chars = max(40, int(fig.get_figwidth() * _CHARS_PER_INCH))
    text = textwrap.fill(f"NOT COMPARABLE WITH THE PAPER: {report.protocol_warning[0]}", chars)
    y = fig.transFigure.inverted().transform((0, top))[1]
    fig.text(0.5, y, text, ha="center", va="bottom", color="red", fontsize="small", fontweight="bold")


_CHARS_PER_INCH = 12  # bold characters of matplotlib's "small" font (8.3 pt) per inch, about


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_aggregates(report: Report, path: Path) -> Path:
    from rliable import plot_utils

    objectives = [o for o in report.objectives if o in report.intervals]
    points = {o: np.array([report.intervals[o][m].point for m in AGGREGATES]) for o in objectives}
    cis = {o: np.array([[report.intervals[o][m].low for m in AGGREGATES],
                        [report.intervals[o][m].high for m in AGGREGATES]]) for o in objectives}
    fig, axes = plot_utils.plot_interval_estimates(
        points, cis, metric_names=[AGGREGATE_TITLES[m] for m in AGGREGATES], algorithms=objectives,
        colors=_colors(report.objectives), xlabel=report.ref.normalized_name.capitalize(),
        row_height=max(0.6, 0.45 * len(objectives)))
    scale = 1.0 if report.ref.is_atari else 1000.0
    for ax, metric in zip(np.atleast_1d(axes), AGGREGATES, strict=True):
        for method in PAPER_METHODS:
            value = report.ref.paper_aggregates.get(metric, {}).get(method)
            if value is not None:
                ax.axvline(value / scale, label=_paper_label(report, method), linewidth=1.2, **PAPER_STYLE[method])
    np.atleast_1d(axes)[-1].legend(*_paper_handles(np.atleast_1d(axes)[-1]), loc="upper left",
                                   bbox_to_anchor=(1.02, 1.0), frameon=False)
    _label_below_ticks(fig, np.atleast_1d(axes), report.ref.normalized_name.capitalize())
    _banner(fig, report)
    return _save(fig, path)


def _label_below_ticks(fig, axes, label: str) -> None:
    """Move rliable's x-label (a figure text at a fixed fraction of the figure's height, which
    on a figure of one or two rows lands on the tick labels) just below the lowest tick label,
    centred under the axes."""
    text = next((t for t in fig.texts if t.get_text() == label), None)
    if text is None:
        return
    renderer = fig.canvas.get_renderer()
    to_figure = fig.transFigure.inverted()
    bottom = min(ax.get_tightbbox(renderer).y0 for ax in axes)  # pixels, titles and tick labels included
    pad = 4 * fig.dpi / 72  # 4 points
    x0 = min(ax.get_position().x0 for ax in axes)
    x1 = max(ax.get_position().x1 for ax in axes)
    text.set_position(((x0 + x1) / 2, to_figure.transform((0, bottom - pad))[1]))
    text.set_verticalalignment("top")


def _paper_handles(ax):
    handles, labels = ax.get_legend_handles_labels()
    keep = [(h, lab) for h, lab in zip(handles, labels, strict=True) if lab.startswith("paper ")]
    return [h for h, _ in keep], [lab for _, lab in keep]


def plot_profiles(report: Report, profiles: dict, cis: dict, taus: np.ndarray, path: Path) -> Path:
    from rliable import plot_utils

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        profiles, taus, performance_profile_cis=cis, colors=_colors(report.objectives), ax=ax,
        xlabel=rf"{report.ref.normalized_name.capitalize()} ($\tau$)")
    ax.legend(loc="upper right", frameon=False)
    ax.set_title(f"{report.ref.benchmark}: performance profiles")
    _banner(fig, report)
    return _save(fig, path)


def plot_per_task(report: Report, path: Path) -> Path:
    """Grouped horizontal bars: ours (mean over seeds, seeds as dots) and the paper's columns."""
    ref = report.ref
    tasks = list(ref.tasks)
    series = [(obj, _colors(report.objectives)[obj]) for obj in report.objectives]
    n_series = len(series) + len(PAPER_METHODS)
    height = 0.8 / n_series
    fig, ax = plt.subplots(figsize=(8, 0.1 + len(tasks) * 0.12 * n_series + 1.2))
    y = np.arange(len(tasks))[::-1].astype(float)
    value = (lambda t, s: float(ref.normalize(t, s))) if ref.is_atari else (lambda t, s: float(s))
    for i, (obj, color) in enumerate(series):
        offset = (i - (n_series - 1) / 2) * height
        stats = report.stats.get(obj, {})
        means = [stats[t].normalized_mean if t in stats and ref.is_atari else
                 (stats[t].mean if t in stats else np.nan) for t in tasks]
        ax.barh(y - offset, means, height=height, color=color, label=f"ours: {obj}")
        for j, t in enumerate(tasks):
            if t in stats:
                pts = stats[t].normalized if ref.is_atari else stats[t].scores
                ax.plot(pts, np.full(len(pts), y[j] - offset), "o", color="k", markersize=2, alpha=0.6)
    for k, method in enumerate(PAPER_METHODS):
        i = len(series) + k
        offset = (i - (n_series - 1) / 2) * height
        paper = ref.paper.get(method, {})
        vals = [value(t, paper[t]) if t in paper else np.nan for t in tasks]
        err = None if ref.is_atari else [ref.paper_std.get(method, {}).get(t, 0.0) for t in tasks]
        ax.barh(y - offset, vals, height=height, xerr=err, color="none", hatch="///" if k == 0 else "...",
                edgecolor=PAPER_STYLE[method]["color"], label=_paper_label(report, method),
                error_kw={"linewidth": 0.8})
    ax.set_yticks(y, [ref.titles.get(t, t) for t in tasks])
    ax.set_xlabel("Human-normalized score" if ref.is_atari else "Return")
    if ref.is_atari:
        ax.axvline(1.0, color="0.8", linewidth=0.8)
        ax.set_xscale("symlog", linthresh=1.0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    versus = "ours vs the paper" if report.comparable else "ours (off-protocol) and the paper"
    ax.set_title(f"{ref.benchmark}: per {'game' if ref.is_atari else 'task'}, {versus}")
    _banner(fig, report)
    return _save(fig, path)


def plot_learning_curves(report: Report, curves: dict[str, dict[str, Curve]], path: Path) -> Path:
    ref = report.ref
    tasks = [t for t in list(ref.tasks) + report.extra_tasks if any(t in c for c in curves.values())]
    cols = min(len(tasks), 6 if ref.is_atari else 3) or 1
    rows = max(1, math.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False)
    colors = _colors(report.objectives)
    for ax, task in zip(axes.flat, tasks, strict=False):
        for obj in report.objectives:
            curve = curves.get(obj, {}).get(task)
            if curve is None:
                continue
            # Markers: a run evaluated once (Atari-100k's default) has a one-point curve, which a
            # line alone would not draw; its CI is then an error bar, as fill_between needs two.
            ax.plot(curve.steps, curve.mean, color=colors[obj], label=obj, linewidth=1.2, marker="o",
                    markersize=3.5)
            if len(curve.steps) > 1:
                ax.fill_between(curve.steps, curve.low, curve.high, color=colors[obj], alpha=0.2, linewidth=0)
            else:
                ax.errorbar(curve.steps, curve.mean, yerr=[curve.mean - curve.low, curve.high - curve.mean],
                            color=colors[obj], capsize=3, linewidth=1.0)
        ax.set_title(ref.titles.get(task, task), fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.xaxis.get_offset_text().set_fontsize("x-small")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="x-small")
    fig.supxlabel("Env steps")
    fig.supylabel("Eval HNS" if ref.is_atari else "Eval return")
    fig.suptitle(f"{ref.benchmark}: learning curves (mean over seeds, 95% bootstrap CI)")
    fig.tight_layout()
    _banner(fig, report)
    return _save(fig, path)
