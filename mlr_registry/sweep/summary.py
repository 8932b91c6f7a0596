"""What a sweep prints and logs at its end: the table of its trials and the report commands
that aggregate its finished runs."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from mlr_registry.sweep.grid import Trial
from mlr_registry.sweep.store import SWEEP_TAG, VARIANT_TAG


def report_commands(client, runs: Sequence, tracking_uri: str, name: str) -> list[str]:
    """One report command per benchmark of the finished runs, selecting exactly this sweep's runs
    when every one of them carries its tag; and per grid variant (``sweep_variant``, e.g.
    ``mask_ratio=0.25``) when the sweep has several, since each is its own configuration."""
    from mlr_registry.tracking.mlflow_run import DEFAULT_TRACKING_URI

    groups: dict[tuple[str, str], set[str]] = {}
    tagged = all(r.data.tags.get(SWEEP_TAG) == name for r in runs)
    for run in runs:
        exp = client.get_experiment(run.info.experiment_id).name
        key = (run.data.tags.get("benchmark", "?"), run.data.tags.get(VARIANT_TAG, "") if tagged else "")
        groups.setdefault(key, set()).add(exp)
    commands = []
    for (benchmark, variant), experiments in sorted(groups.items()):
        parts = ["python -m mlr_registry.report", f"--benchmark {benchmark}"]
        parts += [f"--experiment {e}" for e in sorted(experiments)]
        if tagged:
            parts.append(f"--tag {SWEEP_TAG}={name}")
            if len({v for b, v in groups if b == benchmark}) > 1:
                parts.append("--tag " + shlex.quote(f"{VARIANT_TAG}={variant}"))
        if tracking_uri != DEFAULT_TRACKING_URI:
            parts.append(f"--tracking-uri {tracking_uri}")
        commands.append(" ".join(parts))
    return commands


def _summary(results, skipped: dict[str, object], trials: list[Trial]) -> tuple[str, dict[str, int]]:
    """The summary table and the counts logged as the parent's ``trials_*`` metrics. A re-run of
    a sweep skips the trials that finished before, and they still count as finished (the
    sweep's state is every trial's, not this invocation's): ``finished`` = ``finished_now`` +
    ``skipped``."""
    by_id = {r.trial.trial_id: r for r in results}
    lines = [f"{'trial':<32} {'status':<13} {'attempts':>8} {'seconds':>8}  run"]
    counts = {"finished": len(skipped), "finished_now": 0, "skipped": len(skipped), "failed": 0, "killed": 0,
              "not_run": 0}
    for trial in trials:
        if trial.trial_id in skipped:
            lines.append(f"{trial.label:<32} {'SKIPPED':<13} {0:>8} {'':>8}  "
                         f"{skipped[trial.trial_id].info.run_id} (finished before)")
            continue
        result = by_id.get(trial.trial_id)
        if result is None:
            counts["not_run"] += 1
            lines.append(f"{trial.label:<32} {'NOT RUN':<13}")
            continue
        counts[{"FINISHED": "finished_now", "KILLED": "killed"}.get(result.status, "failed")] += 1
        counts["finished"] += result.status == "FINISHED"
        lines.append(f"{trial.label:<32} {result.status:<13} {result.attempts:>8} {result.seconds:>8.0f}  "
                     f"{result.run_id or '(no run)'}")
    lines.append(f"{len(trials)} trials: {counts['finished']} finished ({counts['finished_now']} now, "
                 f"{counts['skipped']} before: skipped), {counts['failed']} failed, {counts['killed']} killed, "
                 f"{counts['not_run']} not run")
    return "\n".join(lines), counts
