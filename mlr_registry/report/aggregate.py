"""From finished runs to the paper's statistics: per-task means over seeds, rliable aggregates.

Atari-100k (Table 1): per game the mean score over seeds and its human-normalized score
(HNS = (score - random) / (human - random), Random and Human from Table 1); per objective the
IQM, optimality gap, median and mean of the HNS with 95% stratified-bootstrap CIs (rliable,
Agarwal et al. 2021, as the paper). DMC (Table 2): per task mean ± std over seeds; per objective
the mean and median over tasks of the per-task means; the same rliable aggregates on
return / 1000 are given too.

rliable needs a rectangular (runs x tasks) matrix. When games have different numbers of seeds,
the aggregates use the first k seeds (in seed order) of every game, k the smallest count, so
that every game weighs the same; per-task means always use every seed. The report says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mlr_registry.report.data import AGGREGATES, Reference
from mlr_registry.report.runs import ReportError, RunRecord, sort_seeds

# rliable's own default is 50,000 bootstrap replications (about 10 s per objective for 26 games x
# 5 seeds on one CPU core); 2,000 take about 0.3 s, and their CI bounds differ from 50,000's by
# about 0.003 HNS (measured on such a matrix).
DEFAULT_REPS = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class TaskStats:
    """One objective's runs on one game or task: final returns per seed, in seed order."""

    objective: str
    task: str
    seeds: tuple[str, ...]
    scores: np.ndarray  # (n,) final_return per seed
    normalized: np.ndarray | None  # (n,) HNS (Atari) or return / 1000 (DMC); None: no reference

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        """Sample std over seeds (ddof=1, as across-seed spreads are usually given); NaN for 1 seed."""
        return float(np.std(self.scores, ddof=1)) if self.n > 1 else float("nan")

    @property
    def normalized_mean(self) -> float:
        return float(np.mean(self.normalized)) if self.normalized is not None else float("nan")


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    point: float
    low: float
    high: float


@dataclass(frozen=True)
class ScoreMatrix:
    """Normalized final scores of one objective, (k seeds x tasks), ready for rliable."""

    scores: np.ndarray
    tasks: tuple[str, ...]
    seeds_per_task: int
    truncated: tuple[str, ...]  # tasks that had more than k seeds


def task_stats(records: Iterable[RunRecord], ref: Reference) -> dict[str, dict[str, TaskStats]]:
    """objective -> task -> stats. Tasks without a reference score get ``normalized=None``."""
    grouped: dict[str, dict[str, dict[str, float]]] = {}
    for r in records:
        grouped.setdefault(r.objective, {}).setdefault(r.env, {})[r.seed] = r.final_return
    out: dict[str, dict[str, TaskStats]] = {}
    for objective, tasks in grouped.items():
        out[objective] = {}
        for task, by_seed in tasks.items():
            seeds = tuple(sort_seeds(by_seed))
            scores = np.array([by_seed[s] for s in seeds], dtype=np.float64)
            normalized = ref.normalize(task, scores) if task in ref.tasks else None
            out[objective][task] = TaskStats(objective, task, seeds, scores, normalized)
    return out


def score_matrix(stats: dict[str, TaskStats], ref: Reference) -> ScoreMatrix | None:
    """The (k x tasks) matrix of normalized scores over the reference tasks that have runs."""
    tasks = tuple(t for t in ref.tasks if t in stats)
    if not tasks:
        return None
    k = min(stats[t].n for t in tasks)
    scores = np.stack([stats[t].normalized[:k] for t in tasks], axis=1)
    return ScoreMatrix(scores, tasks, k, tuple(t for t in tasks if stats[t].n > k))


def _bootstrap(library, score_dict, func, reps: int, seed: int):
    """rliable's stratified bootstrap, seeded. arch 7 warns that ``random_state`` (which rliable
    passes) is deprecated; the warning is not the user's to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        return library.get_interval_estimates(score_dict, func, reps=reps,
                                              confidence_interval_size=CONFIDENCE,
                                              random_state=np.random.RandomState(seed))


def _rliable():
    try:
        from rliable import library, metrics
    except Exception as exc:  # arch < 8 with pandas >= 3 fails at import with a TypeError
        raise ReportError(f"rliable cannot be imported ({type(exc).__name__}: {exc}); it needs "
                          "arch<8 and, for arch 7, pandas<3: pip install 'arch>=7,<8' 'pandas<3'") from exc
    return library, metrics


def aggregate_function():
    """(runs x tasks) -> [IQM, optimality gap, median, mean], in the order of AGGREGATES."""
    _, metrics = _rliable()

    def aggregates(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_optimality_gap(scores),
                         metrics.aggregate_median(scores), metrics.aggregate_mean(scores)])
    return aggregates


def aggregate_intervals(matrices: dict[str, ScoreMatrix], reps: int = DEFAULT_REPS, seed: int = 0
                        ) -> dict[str, dict[str, Interval]]:
    """objective -> metric -> point estimate with its 95% stratified-bootstrap CI (rliable)."""
    library, _ = _rliable()
    if reps < 1:
        raise ReportError(f"--reps = {reps} must be at least 1")
    score_dict = {obj: m.scores for obj, m in matrices.items()}
    if not score_dict:
        return {}
    points, cis = _bootstrap(library, score_dict, aggregate_function(), reps, seed)
    return {obj: {metric: Interval(float(points[obj][i]), float(cis[obj][0, i]), float(cis[obj][1, i]))
                  for i, metric in enumerate(AGGREGATES)} for obj in score_dict}


def performance_profiles(matrices: dict[str, ScoreMatrix], taus: np.ndarray, reps: int = DEFAULT_REPS,
                         seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable score distributions: fraction of runs with normalized score > tau, with CIs.

    Same as ``rliable.library.create_performance_profile`` (which has no random_state), with
    its per-tau ``np.vectorize`` replaced by one comparison (tens of times faster).
    """
    library, _ = _rliable()
    score_dict = {obj: m.scores for obj, m in matrices.items()}
    taus = np.asarray(taus, dtype=np.float64)

    def score_distribution(scores: np.ndarray) -> np.ndarray:  # (runs, tasks) -> (len(taus),)
        return (scores.reshape(-1, 1) > taus).mean(axis=0)
    return _bootstrap(library, score_dict, score_distribution, reps, seed)


def task_summary(stats: dict[str, TaskStats], tasks: Iterable[str]) -> dict[str, float]:
    """Mean and median over ``tasks`` (those with runs) of the per-task mean returns (Table 2)."""
    means = np.array([stats[t].mean for t in tasks if t in stats])
    if not len(means):
        return {"mean": float("nan"), "median": float("nan")}
    return {"mean": float(np.mean(means)), "median": float(np.median(means))}


def bootstrap_mean_ci(values: np.ndarray, reps: int, rng: np.random.Generator
                      ) -> tuple[float, float, float]:
    """Mean of ``values`` (seeds) and the percentile-bootstrap 95% CI of that mean."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean, mean
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    boots = values[idx].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return mean, float(low), float(high)


@dataclass(frozen=True)
class Curve:
    """Mean over seeds and its bootstrap CI at each evaluation step."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seeds: np.ndarray  # number of runs with a value at each step


def learning_curve(histories: list[tuple[np.ndarray, np.ndarray]], reps: int, seed: int = 0) -> Curve:
    """Combine per-run (steps, values) histories; at each step use the runs that logged it."""
    rng = np.random.default_rng(seed)
    steps = np.unique(np.concatenate([s for s, _ in histories])) if histories else np.zeros(0, np.int64)
    rows = []
    for step in steps:
        vals = np.array([v[s == step][-1] for s, v in histories if np.any(s == step)])
        rows.append((*bootstrap_mean_ci(vals, reps, rng), len(vals)))
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return Curve(steps, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3].astype(np.int64))
