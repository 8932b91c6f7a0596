"""Reading training runs back from MLflow, by the run conventions of DESIGN.md "Tracking".

A run counts when it is FINISHED and has the metric ``final_return``; its tags ``benchmark``,
``env``, ``objective`` and ``seed`` say where it belongs. Everything else (RUNNING, FAILED or
KILLED runs, runs without a final evaluation, report runs) is left out, and what was left out
is said in the notes, never silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlr_registry.errors import MLRError
from mlr_registry.report.protocol import Verdict, judge

FINAL_METRIC = "final_return"
CURVE_METRIC = "eval/return_mean"
_PAGE = 1000
# A benchmark whose score is also an evaluation point of a longer one: DMC-500k runs evaluate
# every 5,000 env steps (as the reference's do), so each holds its DMC-100k score at env step
# 100,000, after the same updates a 100k run's final evaluation follows.
ALSO_FROM: dict[str, tuple[str, int]] = {"dmc100k": ("dmc500k", 100_000)}


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
    config: str = ""  # experiment and gin files (see :func:`config_of`)
    at_step: int | None = None  # a longer run's score at this env step (ALSO_FROM), else its final
    protocol: Verdict = Verdict(checked=False)  # its budget and evaluation against the benchmark's


def parse_tag(text: str) -> tuple[str, str]:
    """``key=value`` -> (key, value); the value may contain '='."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ReportError(f"--tag {text!r} is not of the form key=value (e.g. --tag agent=rainbow)")
    return key.strip(), value.strip()


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _filter_string(flt: RunFilter, status: str = "= 'FINISHED'") -> str:
    clauses = [f"tags.`benchmark` = {_quote(flt.benchmark)}", f"attributes.status {status}"]
    clauses += [f"tags.`{k}` = {_quote(v)}" for k, v in flt.tags]
    return " and ".join(clauses)


def _search(client, experiments: dict[str, str], filter_string: str) -> list:
    """Every run of ``experiments`` that matches ``filter_string`` (all pages)."""
    runs, token = [], None
    while experiments:
        page = client.search_runs(list(experiments), filter_string=filter_string, max_results=_PAGE,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _unfinished_note(client, experiments: dict[str, str], flt: RunFilter) -> list[str]:
    """A note counting the runs with the filters' tags that are not FINISHED (RUNNING, FAILED,
    KILLED: a crashed or interrupted run is left out, and said so)."""
    counts = Counter(run.info.status for run in _search(client, experiments, _filter_string(flt, "!= 'FINISHED'"))
                     if run.data.tags.get("report") != "true")
    if not counts:
        return []
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return [f"{sum(counts.values())} run(s) not FINISHED left out ({parts}): resume or rerun them to count them"]


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


# Bindings of these parameters pick a run's cell (env, seed), not its configuration.
_CELL_PARAMETERS = ("seed", "game", "task")


def config_of(experiment: str, tags: dict[str, str]) -> str:
    """A run's configuration as the report tells them apart: its experiment, its ``gin_files``
    tag without DMC's per-task overlays (``gin/dmc/<task>.gin``, which a sweep adds per task and
    the ``env`` tag already separates) and its ``bindings`` tag (the ``--bind`` options) without
    those that set the seed, game or task (a sweep's per-trial ones)."""
    files = [f for f in tags.get("gin_files", "").split(",") if f and Path(f).parent.parts[-2:] != ("gin", "dmc")]
    bindings = [b.strip() for b in tags.get("bindings", "").split("; ") if b.strip()]
    own = [b for b in bindings if b.split("=", 1)[0].strip().rsplit(".", 1)[-1] not in _CELL_PARAMETERS]
    text = f"experiment {experiment!r}, gin {','.join(files) or '(not tagged)'}"
    return text + (f", bind {'; '.join(own)}" if own else "")


def _one_config_per_cell(cells: dict[tuple[str, str, str], list[RunRecord]]) -> None:
    """Several runs of one (objective, env, seed) count as reruns only when they share a config;
    from different configs (the main file and an ablation, a smoke run) they are not
    interchangeable, so the report refuses to pick one and says how to choose."""
    clashes = [(key, sorted({r.config for r in runs})) for key, runs in cells.items()
               if len({r.config for r in runs}) > 1]
    if clashes:
        lines = [f"objective={o} env={e} seed={s}: " + " | ".join(configs) for (o, e, s), configs in clashes[:5]]
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise ReportError(
            f"runs of different configurations share an (objective, env, seed){more}:\n  " + "\n  ".join(lines)
            + "\nchoose the runs with --experiment NAME and/or --tag gin_files=FILES, --tag bindings=... "
            "(the run tags), or --tag sweep_variant=... for one value of a sweep's grid")


def _mixed_config_notes(records: list[RunRecord]) -> list[str]:
    """A note per objective whose counted runs come from more than one configuration."""
    notes = []
    for objective in sorted({r.objective for r in records}):
        counts = Counter(r.config for r in records if r.objective == objective)
        if len(counts) > 1:
            parts = "; ".join(f"{c} ({n} run{'s' * (n != 1)})" for c, n in counts.most_common())
            notes.append(f"objective {objective} pools runs of {len(counts)} configurations: {parts}; "
                         "narrow it with --experiment or --tag gin_files=...")
    return notes


def find_runs(client, flt: RunFilter) -> tuple[list[RunRecord], list[str]]:
    """The runs that count for the report, and notes about the runs that were left out.

    Raises :class:`NoRunsError` (naming the filters) when none counts. Of several runs with the
    same objective, env and seed and the same configuration (:func:`config_of`), the one that
    ended last counts; from different configurations they raise :class:`ReportError`. A
    benchmark in :data:`ALSO_FROM` also counts the longer benchmark's runs at its env step.
    """
    experiments = _experiments(client, flt)
    found = _search(client, experiments, _filter_string(flt))
    runs = [(run, run.data.metrics.get(FINAL_METRIC), None) for run in found]
    notes: list[str] = _unfinished_note(client, experiments, flt)
    if flt.benchmark in ALSO_FROM:
        longer, step = ALSO_FROM[flt.benchmark]
        extra = _search(client, experiments, _filter_string(RunFilter(longer, flt.tracking_uri, tags=flt.tags)))
        runs += [(run, _value_at(client, run.info.run_id, step), step) for run in extra]
    no_final = no_step = no_env = other_objective = 0
    cells: dict[tuple[str, str, str], list[RunRecord]] = {}
    for run, final, at_step in runs:
        tags = run.data.tags
        if tags.get("report") == "true":
            continue
        if final is None or not np.isfinite(final):
            no_final += at_step is None
            no_step += at_step is not None
            continue
        if not tags.get("env"):
            no_env += 1
            continue
        objective = tags.get("objective", "unknown")
        if flt.objectives and objective not in flt.objectives:
            other_objective += 1
            continue
        experiment = experiments[run.info.experiment_id]
        record = RunRecord(run.info.run_id, experiment, objective, tags["env"],
                           tags.get("seed", run.info.run_id[:8]), tags.get("agent", "unknown"),
                           float(final), int(run.info.end_time or 0), config_of(experiment, tags), at_step,
                           judge(flt.benchmark, run.data.params, at_step))
        cells.setdefault((record.objective, record.env, record.seed), []).append(record)
    _one_config_per_cell(cells)
    latest = {key: max(runs, key=lambda r: r.end_time) for key, runs in cells.items()}
    duplicates = sum(len(runs) - 1 for runs in cells.values())
    if not latest:
        why = (f" ({len(runs)} FINISHED runs have the tags, but {no_final} lack {FINAL_METRIC}"
               f", {no_env} lack the env tag, {other_objective} have another objective)" if runs else "")
        raise NoRunsError(f"no FINISHED runs with metric {FINAL_METRIC} match {flt.describe()}{why}")
    if no_final:
        notes.append(f"{no_final} FINISHED run(s) without {FINAL_METRIC} left out")
    if no_step:
        notes.append(f"{no_step} longer run(s) without {CURVE_METRIC} at the benchmark's env step left out")
    if no_env:
        notes.append(f"{no_env} run(s) without an env tag left out")
    if duplicates:
        notes.append(f"{duplicates} run(s) repeat an (objective, env, seed) of the same configuration: "
                     "the one that ended last counts")
    records = sorted(latest.values(), key=lambda r: (r.objective, r.env, _seed_key(r.seed)))
    longer_runs = [r for r in records if r.at_step is not None]
    if longer_runs:
        notes.append(f"{len(longer_runs)} run(s) of {ALSO_FROM[flt.benchmark][0]} counted at their evaluation "
                     f"at env step {longer_runs[0].at_step:,}")
    return records, notes + _mixed_config_notes(records)


def _value_at(client, run_id: str, step: int, key: str = CURVE_METRIC) -> float | None:
    """The value of metric ``key`` logged at ``step`` (the last one logged there), or None."""
    at = [(m.timestamp, m.value) for m in client.get_metric_history(run_id, key) if m.step == step]
    return max(at)[1] if at else None


def metric_histories(client, records: list[RunRecord], key: str = CURVE_METRIC
                     ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """run id -> (steps, values) of metric ``key``, sorted by step (runs without it omitted)."""
    out = {}
    for record in records:
        history = client.get_metric_history(record.run_id, key)
        if history:
            # A longer run counted at an earlier step (ALSO_FROM): its curve up to that step.
            points = sorted((m.step, m.timestamp, m.value) for m in history
                            if record.at_step is None or m.step <= record.at_step)
            # If a step was logged twice, the last value logged counts.
            by_step = {step: value for step, _, value in points}
            steps = np.array(list(by_step), dtype=np.int64)
            out[record.run_id] = (steps, np.array(list(by_step.values()), dtype=np.float64))
    return out
