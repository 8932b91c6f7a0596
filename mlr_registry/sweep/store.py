"""A sweep's runs in the tracking store: the tags that mark them, each trial's earlier runs (which
of them finished, which a re-run resumes), and the sweep's parent run."""

from __future__ import annotations

import argparse

from mlr_registry.sweep.grid import TRIAL_TAG, Trial

SWEEP_TAG = "sweep"
ROLE_TAG = "sweep_role"
LABEL_TAG = "sweep_trial_label"
VARIANT_TAG = "sweep_variant"  # the label without game/task/seed: one report per value
PARENT_TAG = "mlflow.parentRunId"


def trial_runs(client, experiments: set[str], trial_ids: set[str]) -> dict[str, list]:
    """trial id -> its runs in the store (any status), oldest first."""
    found: dict[str, list] = {}
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TRIAL_TAG}` LIKE '%'",
                                      order_by=["attributes.start_time ASC"], max_results=1000, page_token=token)
            for run in page:
                if run.data.tags.get(TRIAL_TAG) in trial_ids:
                    found.setdefault(run.data.tags[TRIAL_TAG], []).append(run)
            token = page.token
            if not token:
                break
    return found


def _finished(runs: dict[str, list]) -> dict[str, object]:
    """trial id -> its latest FINISHED run, for the trials that have one."""
    done = {tid: [r for r in rs if r.info.status == "FINISHED"] for tid, rs in runs.items()}
    return {tid: rs[-1] for tid, rs in done.items() if rs}


def _resumable(runs: dict[str, list]) -> dict[str, str]:
    """trial id -> its latest run when that ended KILLED or FAILED (a RUNNING one may be alive)."""
    return {tid: rs[-1].info.run_id for tid, rs in runs.items() if rs[-1].info.status in ("KILLED", "FAILED")}


def _parent_run(tracking_uri: str, experiment: str, name: str, args: argparse.Namespace, trials: list[Trial]):
    """The sweep's parent run: the earlier one of this sweep name, reopened, or a new one."""
    from mlr_registry.tracking.mlflow_run import TrackedRun

    parent = TrackedRun(tracking_uri, experiment=experiment, run_name=f"sweep:{name}")
    exp_id = parent._experiment_id()
    earlier = parent.client.search_runs(
        [exp_id], filter_string=f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{ROLE_TAG}` = 'parent'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if earlier:
        parent.run_id = earlier[0].info.run_id
        parent.client.update_run(parent.run_id, status="RUNNING")
        return parent, True
    params = {"gin_files": ",".join(args.gin), "bindings": "; ".join(args.bind) or "none",
              "grid": "; ".join(args.grid) or "none", "games": args.games or "none", "tasks": args.tasks or "none",
              "seeds": str(args.seeds), "first_seed": str(args.first_seed), "trials": str(len(trials)),
              "cpus_per_trial": str(args.cpus_per_trial), "gpus_per_trial": str(args.gpus_per_trial)}
    parent.start({SWEEP_TAG: name, ROLE_TAG: "parent"}, params)
    return parent, False
