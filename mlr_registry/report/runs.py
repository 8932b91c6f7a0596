"""Reading training runs back from MLflow, by the run conventions of DESIGN.md "Tracking".

A run counts when it is FINISHED and has the metric ``final_return``; its tags ``benchmark``,
``env``, ``objective`` and ``seed`` say where it belongs. Everything else (RUNNING, FAILED or
KILLED runs, runs without a final evaluation, report runs) is left out, and what was left out
is said in the notes, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlr_registry.errors import MLRError

FINAL_METRIC = "final_return"
CURVE_METRIC = "eval/return_mean"
_PAGE = 1000


class ReportError(MLRError):
    """A report cannot be made as asked (bad filter, unknown experiment, missing library)."""


class NoRunsError(ReportError, LookupError):
    """No run matches the filters."""


@dataclass(frozen=True)
class RunFilter:
    """Which runs a report covers: every filter must hold (empty tuples: no filter)."""

    benchmark: str
    tracking_uri: str
    experiments: tuple[str, ...] = ()
    objectives: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """The filters in one line, for error messages and the report's header."""
        parts = [f"benchmark={self.benchmark}",
                 f"experiments={','.join(self.experiments) or 'all'}",
                 f"objectives={','.join(self.objectives) or 'all'}"]
        parts += [f"tag {k}={v}" for k, v in self.tags]
        return ", ".join(parts) + f" at {self.tracking_uri}"


@dataclass(frozen=True)
class RunRecord:
    """One finished training run: its identity and final evaluation."""

    run_id: str
    experiment: str
    objective: str
    env: str
    seed: str
    agent: str
    final_return: float
    end_time: int


def parse_tag(text: str) -> tuple[str, str]:
    """``key=value`` -> (key, value); the value may contain '='."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ReportError(f"--tag {text!r} is not of the form key=value (e.g. --tag agent=rainbow)")
    return key.strip(), value.strip()


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _filter_string(flt: RunFilter) -> str:
    clauses = [f"tags.`benchmark` = {_quote(flt.benchmark)}", "attributes.status = 'FINISHED'"]
    clauses += [f"tags.`{k}` = {_quote(v)}" for k, v in flt.tags]
    return " and ".join(clauses)


def _experiments(client, flt: RunFilter) -> dict[str, str]:
    """Experiment id -> name of the experiments to search."""
    if flt.experiments:
        found = {}
        for name in flt.experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                known = sorted(e.name for e in client.search_experiments())
                raise ReportError(f"no experiment {name!r} at {flt.tracking_uri}; "
                                  f"known: {', '.join(known) or '(none)'}")
            found[exp.experiment_id] = exp.name
        return found
    found, token = {}, None
    while True:
        page = client.search_experiments(max_results=_PAGE, page_token=token)
        found.update({e.experiment_id: e.name for e in page})
        token = page.token
        if not token:
            return found


def _seed_key(seed: str) -> tuple[int, float, str]:
    try:
        return (0, float(seed), seed)
    except ValueError:
        return (1, 0.0, seed)


def sort_seeds(seeds) -> list[str]:
    """Seeds in numeric order where they are numbers, then the rest by name."""
    return sorted(seeds, key=_seed_key)


def find_runs(client, flt: RunFilter) -> tuple[list[RunRecord], list[str]]:
    """The runs that count for the report, and notes about the runs that were left out.

    Raises :class:`NoRunsError` (naming the filters) when none counts. Of several runs with the
    same objective, env and seed, the one that ended last counts.
    """
    experiments = _experiments(client, flt)
    runs, token = [], None
    while experiments:
        page = client.search_runs(list(experiments), filter_string=_filter_string(flt),
                                  max_results=_PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    notes: list[str] = []
    no_final = no_env = other_objective = 0
    latest: dict[tuple[str, str, str], RunRecord] = {}
    duplicates = 0
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get("report") == "true":
            continue
        if FINAL_METRIC not in metrics or not np.isfinite(metrics[FINAL_METRIC]):
            no_final += 1
            continue
        if not tags.get("env"):
            no_env += 1
            continue
        objective = tags.get("objective", "unknown")
        if flt.objectives and objective not in flt.objectives:
            other_objective += 1
            continue
        record = RunRecord(run.info.run_id, experiments[run.info.experiment_id], objective, tags["env"],
                           tags.get("seed", run.info.run_id[:8]), tags.get("agent", "unknown"),
                           float(metrics[FINAL_METRIC]), int(run.info.end_time or 0))
        key = (record.objective, record.env, record.seed)
        if key in latest:
            duplicates += 1
            if latest[key].end_time >= record.end_time:
                continue
        latest[key] = record
    if not latest:
        why = (f" ({len(runs)} FINISHED runs have the tags, but {no_final} lack {FINAL_METRIC}"
               f", {no_env} lack the env tag, {other_objective} have another objective)" if runs else "")
        raise NoRunsError(f"no FINISHED runs with metric {FINAL_METRIC} match {flt.describe()}{why}")
    if no_final:
        notes.append(f"{no_final} FINISHED run(s) without {FINAL_METRIC} left out")
    if no_env:
        notes.append(f"{no_env} run(s) without an env tag left out")
    if duplicates:
        notes.append(f"{duplicates} run(s) repeat an (objective, env, seed): the one that ended last counts")
    return sorted(latest.values(), key=lambda r: (r.objective, r.env, _seed_key(r.seed))), notes


def metric_histories(client, records: list[RunRecord], key: str = CURVE_METRIC
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """run id -> (steps, values) of metric ``key``, sorted by step (runs without it omitted)."""
    out = {}
    for record in records:
        history = client.get_metric_history(record.run_id, key)
        if history:
            points = sorted((m.step, m.timestamp, m.value) for m in history)
            # If a step was logged twice, the last value logged counts.
            by_step = {step: value for step, _, value in points}
            steps = np.array(list(by_step), dtype=np.int64)
            out[record.run_id] = (steps, np.array(list(by_step.values()), dtype=np.float64))
    return out
