"""The paper's reference numbers, shipped as package data (``mlr_registry/report/data/*.csv``).

Every number comes from ``paper/mlr_neurips2022_slides.txt`` (Table 1: Atari-100k; Table 2:
DMControl-100k/500k); nothing is filled in. Files:

- ``atari100k.csv``: the 26 games (``game`` = the run tag ``env``, the ALE ROM id), the paper's
  title, Random and Human scores, and each method's per-game score as printed in Table 1.
- ``atari100k_aggregates.csv``: the IQM and optimality gap rows of Table 1. The paper prints no
  median or mean; :func:`reference` derives them from the per-game means (marked as derived).
- ``dmc_tasks.csv``: Table 2's mean ± std per task (``task`` = the run tag ``env``,
  ``domain-task``), long format; a "-" cell of the paper is simply absent.
- ``dmc_aggregates.csv``: Table 2's Mean and Median rows (over the six per-task means).
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from mlr_registry.atari_scores import HUMAN_SCORES, RANDOM_SCORES
from mlr_registry.errors import MLRError

BENCHMARKS: tuple[str, ...] = ("atari100k", "dmc100k", "dmc500k")
# The four aggregates of rliable, in the order tables and plots show them.
AGGREGATES: tuple[str, ...] = ("iqm", "optimality_gap", "median", "mean")
AGGREGATE_TITLES: dict[str, str] = {"iqm": "IQM", "optimality_gap": "Optimality gap",
                                    "median": "Median", "mean": "Mean"}
# The paper's two columns that a run of ours is compared with.
PAPER_METHODS: tuple[str, ...] = ("MLR", "Baseline")
# DMC episodes last 1000 steps with rewards in [0, 1], so a return / 1000 is in [0, 1].
DMC_MAX_RETURN = 1000.0


class UnknownBenchmarkError(MLRError, ValueError):
    """A benchmark name with no reference table."""


@dataclass(frozen=True)
class Reference:
    """One benchmark's tasks and the paper's numbers for them.

    ``paper[method][task]`` is the paper's per-task score (Atari: the game score; DMC: the mean
    over seeds), ``paper_std`` the DMC std over seeds; ``paper_aggregates[metric][method]`` the
    aggregate rows, where ``derived`` names the metrics we computed from the per-task means
    because the paper does not print them.
    """

    benchmark: str
    tasks: tuple[str, ...]
    titles: dict[str, str]
    paper: dict[str, dict[str, float]]
    paper_std: dict[str, dict[str, float]] = field(default_factory=dict)
    paper_aggregates: dict[str, dict[str, float]] = field(default_factory=dict)
    derived: frozenset[str] = frozenset()
    random: dict[str, float] = field(default_factory=dict)
    human: dict[str, float] = field(default_factory=dict)

    @property
    def is_atari(self) -> bool:
        return self.benchmark.startswith("atari")

    @property
    def normalized_name(self) -> str:
        """What the aggregates are computed on."""
        return "human-normalized score" if self.is_atari else "return / 1000"

    def normalize(self, task: str, score: np.ndarray | float) -> np.ndarray:
        """Atari: (score - random) / (human - random) from Table 1; DMC: return / 1000."""
        score = np.asarray(score, dtype=np.float64)
        if self.is_atari:
            random = self.random[task]
            return (score - random) / (self.human[task] - random)
        return score / DMC_MAX_RETURN

    def paper_normalized(self, method: str) -> dict[str, float]:
        """The paper's per-task scores of ``method``, normalized (tasks the paper lacks omitted)."""
        return {t: float(self.normalize(t, s)) for t, s in self.paper.get(method, {}).items()}


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("mlr_registry.report").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _atari() -> Reference:
    rows = _read_csv("atari100k.csv")
    fixed = {"game", "title", "random", "human"}
    methods = [k for k in rows[0] if k not in fixed]
    tasks = tuple(r["game"] for r in rows)
    paper = {m: {r["game"]: float(r[m]) for r in rows} for m in methods}
    aggregates: dict[str, dict[str, float]] = {}
    for r in _read_csv("atari100k_aggregates.csv"):
        aggregates.setdefault(r["metric"], {})[r["method"]] = float(r["value"])
    random, human = dict(RANDOM_SCORES), dict(HUMAN_SCORES)  # the one reading of these columns
    # Table 1 prints IQM and OG only; median and mean follow from the per-game means.
    derived = frozenset(m for m in ("median", "mean") if m not in aggregates)
    for method in methods:
        hns = np.array([(s - random[g]) / (human[g] - random[g]) for g, s in paper[method].items()])
        aggregates.setdefault("median", {}).setdefault(method, float(np.median(hns)))
        aggregates.setdefault("mean", {}).setdefault(method, float(np.mean(hns)))
    return Reference("atari100k", tasks, {r["game"]: r["title"] for r in rows}, paper,
                     paper_aggregates=aggregates, derived=derived, random=random, human=human)


def _dmc(benchmark: str) -> Reference:
    rows = [r for r in _read_csv("dmc_tasks.csv") if r["benchmark"] == benchmark]
    tasks = tuple(dict.fromkeys(r["task"] for r in rows))
    paper: dict[str, dict[str, float]] = {}
    paper_std: dict[str, dict[str, float]] = {}
    for r in rows:
        paper.setdefault(r["method"], {})[r["task"]] = float(r["mean"])
        paper_std.setdefault(r["method"], {})[r["task"]] = float(r["std"])
    aggregates: dict[str, dict[str, float]] = {}
    for r in _read_csv("dmc_aggregates.csv"):
        if r["benchmark"] == benchmark:
            aggregates.setdefault(r["metric"], {})[r["method"]] = float(r["value"])
    return Reference(benchmark, tasks, {r["task"]: r["title"] for r in rows}, paper, paper_std,
                     aggregates)


@functools.cache
def reference(benchmark: str) -> Reference:
    """The reference table of ``benchmark`` (one of :data:`BENCHMARKS`)."""
    if benchmark == "atari100k":
        return _atari()
    if benchmark in ("dmc100k", "dmc500k"):
        return _dmc(benchmark)
    raise UnknownBenchmarkError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
