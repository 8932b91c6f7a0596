"""Sweeps on Ray: ``python -m mlr_registry.sweep --gin gin/atari_mlr.gin --games atari26 --seeds 5``.

Every combination of the grid (``--grid``, ``--games``, ``--tasks``) and the seeds runs as its
own tracked run (``python -m mlr_registry.run`` in a subprocess, one Ray task each) on a local
Ray instance, or on a cluster with ``--address``. All runs are children of one MLflow parent
run (tag ``sweep=NAME``) in one tracking store. Trials whose run already FINISHED in the store
are skipped, and those whose run an earlier sweep left KILLED or FAILED resume it; a failed
trial is retried once from its last checkpoint, then reported. The sweep
ends with a summary and the report command to run. Exit status: 0 when every trial finished,
1 when some failed, 2 for input errors, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mlr_registry.errors import MLRError
from mlr_registry.sweep.grid import TRIAL_TAG, Axis, Trial

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
SWEEP_TAG = "sweep"
ROLE_TAG = "sweep_role"
LABEL_TAG = "sweep_trial_label"
VARIANT_TAG = "sweep_variant"  # the label without game/task/seed: one report per value
PARENT_TAG = "mlflow.parentRunId"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mlr_registry.sweep", description=__doc__.splitlines()[0],
        epilog='example: python -m mlr_registry.sweep --gin gin/atari_mlr.gin --grid "atari.game=[alien,pong]" '
               "--seeds 5")
    p.add_argument("--gin", action="append", default=[], metavar="FILE", required=True,
                   help="gin config file of every trial; repeat to compose (as in mlr_registry.run)")
    p.add_argument("--bind", action="append", default=[], metavar="BINDING",
                   help="a gin binding of every trial, applied after the files")
    p.add_argument("--grid", action="append", default=[], metavar="PARAM=[V1,V2]",
                   help="sweep a gin parameter over values, e.g. \"envs.atari.game=[alien,pong]\" (short names "
                        "that gin resolves uniquely work: atari.game); repeat for a product of grids")
    p.add_argument("--games", metavar="SET", help="Atari games: atari26 (the paper's 26) or alien,pong,...")
    p.add_argument("--tasks", metavar="SET", help="DMC tasks with their gin/dmc/<task>.gin overlays: dmc6 "
                                                  "(the paper's 6) or cheetah-run,walker-walk,...")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="N seeds per grid point (the trainer's seed parameter = first-seed .. first-seed+N-1); "
                        "default: the config's seed only")
    p.add_argument("--first-seed", type=int, default=0, metavar="S", help="the first seed (default 0)")
    p.add_argument("--name", default=None,
                   help="the sweep's name (MLflow tag sweep=NAME on the parent and every trial); default: "
                        "the gin files' names, plus a hash of the --bind lines if any")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI of every trial (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlruns.db); a cluster needs a tracking server (http://HOST:5000)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join, from one of its nodes (auto, or HEAD_IP:6379); default: start a local "
                        "Ray instance")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="CPUs of the local Ray instance (default: all of this machine's)")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="GPUs of the local Ray instance (default: the ones Ray detects)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CPUs reserved per trial; also its OMP_NUM_THREADS (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPU share per trial, e.g. 0.25 runs four trials per GPU (default 0)")
    p.add_argument("--retries", type=int, default=1,
                   help="retries of a failed trial, each from its last checkpoint (default 1)")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="trial logs (default: sweeps/<name>/logs; also logged to each run as artifacts)")
    p.add_argument("--rerun-finished", action="store_true",
                   help="run trials again even where a FINISHED run exists")
    p.add_argument("--fresh", action="store_true",
                   help="start unfinished trials afresh instead of resuming the KILLED or FAILED runs that an "
                        "earlier sweep left")
    p.add_argument("--dry-run", action="store_true", help="list the trials and what would be skipped; run nothing")
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    args = p.parse_args(argv)
    if args.cpus_per_trial <= 0 or args.gpus_per_trial < 0 or args.retries < 0:
        p.error("--cpus-per-trial must be > 0, --gpus-per-trial and --retries >= 0")
    return args


def build_axes(args: argparse.Namespace) -> list[Axis]:
    """The sweep's axes: --grid ones, then games or tasks, then seeds (which vary fastest)."""
    from mlr_registry.sweep import grid

    axes = [grid.parse_grid(text) for text in args.grid]
    if args.games:
        axes.append(grid.games_axis(args.games))
    if args.tasks:
        axes.append(grid.tasks_axis(args.tasks))
    for axis in axes:
        grid.check_env_axis(axis, args.gin, args.bind)
    if args.seeds is not None:
        axes.append(grid.seeds_axis(args.seeds, args.gin, args.bind, args.first_seed))
    return axes


def default_name(gin_files: Sequence[str], bindings: Sequence[str]) -> str:
    name = "+".join(Path(f).stem for f in gin_files)
    if bindings:
        name += "-" + hashlib.sha256("\n".join(bindings).encode()).hexdigest()[:6]
    return name


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


class SweepError(MLRError):
    """The sweep cannot start as asked (Ray unreachable, trials that no node can hold)."""


def _use_ray_token_if_available() -> None:
    """Clusters that ``ray start`` launches require token authentication from Ray 2.59 on, and
    a driver sends its token only with ``RAY_AUTH_MODE=token``. When a token is at hand
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, where ``ray start``
    writes it) and the user chose no mode, turn it on: a token-mode driver also joins clusters
    without authentication."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") \
            or (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _init_ray(args: argparse.Namespace):
    """Join the cluster at ``--address``, or start a local Ray instance; check a trial fits."""
    if args.address:
        _use_ray_token_if_available()  # before ray is imported: it reads the mode at import
    import ray

    try:
        if args.address:
            ray.init(address=args.address, log_to_driver=False, logging_level="WARNING")
        else:
            # address="local": a new instance even when `ray start` left a cluster on this machine
            # (ray.init() would join that one, and refuse num_cpus there)
            ray.init(address="local", num_cpus=args.num_cpus if args.num_cpus is not None else os.cpu_count(),
                     num_gpus=args.num_gpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    except (ConnectionError, TimeoutError) as exc:
        raise SweepError(f"cannot reach the Ray cluster at --address {args.address}: {exc} (start one with "
                         "`ray start --head`, then pass --address auto on its head node; a cluster with token "
                         "authentication needs its token in RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
    have = ray.cluster_resources()
    short = [f"{what} {need:g}, but the cluster has {have.get(key, 0):g} {key}"
             for what, key, need in (("--cpus-per-trial", "CPU", args.cpus_per_trial),
                                     ("--gpus-per-trial", "GPU", args.gpus_per_trial)) if need > have.get(key, 0)]
    if short:
        message = "; ".join(short)
        if not args.address:
            ray.shutdown()
            raise SweepError(f"no trial fits: {message} (set --num-cpus / --num-gpus, or ask for less)")
        print(f"warning: {message}: trials wait until the cluster grows", file=sys.stderr)
    return ray


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


def _killed(spec, since_ms: int) -> object:
    """A cancelled trial: its run (the one it resumed, or one it started since ``since_ms``), if
    any, ends KILLED (a worker that Ray's shutdown killed could not end it: it would stay RUNNING)."""
    from mlflow.tracking import MlflowClient

    from mlr_registry.sweep.trial import TrialResult, find_run

    run = (MlflowClient(tracking_uri=spec.tracking_uri).get_run(spec.resume_run) if spec.resume_run
           else find_run(spec.tracking_uri, spec.trial.experiment, spec.trial.trial_id, started_after_ms=since_ms))
    if run is not None and run.info.status == "RUNNING":
        MlflowClient(tracking_uri=spec.tracking_uri).set_terminated(run.info.run_id, "KILLED")
    return TrialResult(spec.trial, "KILLED", run.info.run_id if run else None, 1, EXIT_INTERRUPTED, 0.0)


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt()


def run_on_ray(ray, specs: list, args: argparse.Namespace) -> tuple[list, bool]:
    """One Ray task per trial; results as they come, printed one line each. Ctrl-C or SIGTERM
    cancels the running trials (their runs end KILLED). Returns (results, interrupted); shuts
    Ray down."""
    from mlr_registry.sweep.trial import TrialResult, run_trial

    remote = ray.remote(run_trial).options(num_cpus=args.cpus_per_trial, num_gpus=args.gpus_per_trial,
                                           max_retries=0)
    results, interrupted, start, since_ms = [], False, time.monotonic(), int(time.time() * 1000) - 1000
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    pending = {}
    try:
        pending = {remote.remote(spec): spec for spec in specs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a lost worker or node is that trial's failure
                result = TrialResult(spec.trial, "FAILED", None, 0, -1, 0.0, tail=f"ray: {exc}")
            results.append(result)
            print(f"[{len(results)}/{len(specs)} {time.monotonic() - start:.0f}s] {result.trial.label}: "
                  f"{result.status} after {result.attempts} attempt(s), run {result.run_id}", file=sys.stderr)
            if result.status != "FINISHED":
                print("    " + result.tail.rstrip().replace("\n", "\n    "), file=sys.stderr)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: cancelling the running trials (their runs end KILLED)", file=sys.stderr)
        for ref in pending:
            ray.cancel(ref)
        ray.wait(list(pending), num_returns=len(pending), timeout=90)
    finally:
        signal.signal(signal.SIGTERM, previous)
        ray.shutdown()
    return results + [_killed(spec, since_ms) for spec in pending.values()], interrupted


def sweep(args: argparse.Namespace) -> int:
    from mlr_registry import registry
    from mlr_registry.sweep import grid
    from mlr_registry.sweep.trial import TrialSpec
    from mlr_registry.tracking.mlflow_run import missing_sqlite_store, resolve_tracking_uri

    for failure in registry.load_all():
        print(f"warning: {failure}", file=sys.stderr)
    import mlr_registry.training.experiment  # noqa: F401 - registers `experiment` with gin

    trials = grid.expand(args.gin, args.bind, build_axes(args))
    name = args.name or default_name(args.gin, args.bind)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    log_dir = (args.log_dir or Path("sweeps") / name / "logs").resolve()

    from mlflow.tracking import MlflowClient

    experiments = {t.experiment for t in trials}
    if args.dry_run and missing_sqlite_store(tracking_uri) is not None:
        earlier = {}  # nothing ran before, and opening the store would create its file
    else:
        earlier = trial_runs(MlflowClient(tracking_uri=tracking_uri), experiments, {t.trial_id for t in trials})
    skipped = {} if args.rerun_finished else _finished(earlier)
    resume = {} if args.fresh else _resumable(earlier)
    todo = [t for t in trials if t.trial_id not in skipped]
    resuming = len(set(resume) - set(skipped))
    print(f"sweep {name!r}: {len(trials)} trials, {len(skipped)} finished before (skipped), {len(todo)} to run "
          f"({resuming} resuming an earlier run); tracking store {tracking_uri}", file=sys.stderr)
    if args.dry_run:
        for trial in trials:
            mark = "skip" if trial.trial_id in skipped else "resume" if trial.trial_id in resume else "run"
            print(f"{mark:<6}  {trial.label:<32} {TRIAL_TAG}={trial.trial_id}  {shlex.join(trial.run_args())}")
        return 0

    client = MlflowClient(tracking_uri=tracking_uri)
    ray = _init_ray(args) if todo else None
    # The driver creates every experiment before trials start: concurrent first runs would race to create it.
    from mlr_registry.tracking.mlflow_run import TrackedRun

    for experiment in sorted(experiments):
        TrackedRun(tracking_uri, experiment=experiment)._experiment_id()
    parent, reopened = _parent_run(tracking_uri, trials[0].experiment, name, args, trials)
    print(f"MLflow parent run {parent.run_id} ({'reopened' if reopened else 'new'}) in experiment "
          f"{trials[0].experiment!r}; trial logs in {log_dir}", file=sys.stderr)
    status = "FAILED"  # what the parent ends as if anything below raises: it never stays RUNNING
    try:
        tags = ((PARENT_TAG, parent.run_id), (SWEEP_TAG, name))
        specs = [TrialSpec(t, tracking_uri, (*tags, (TRIAL_TAG, t.trial_id), (LABEL_TAG, t.label),
                                                     (VARIANT_TAG, t.variant)), str(Path.cwd()),
                           str(log_dir), args.cpus_per_trial, retries=args.retries, resume_run=resume.get(t.trial_id))
                 for t in todo]

        results, interrupted = run_on_ray(ray, specs, args) if specs else ([], False)
        outcome, exit_code = ("KILLED", EXIT_INTERRUPTED) if interrupted else ("FINISHED", 0)
        text, counts = _summary(results, skipped, trials)
        if counts["failed"] and outcome == "FINISHED":
            outcome, exit_code = "FAILED", EXIT_FAILED
        finished = list(_finished(trial_runs(client, experiments, {t.trial_id for t in trials})).values())
        commands = report_commands(client, finished, tracking_uri, name) if finished else []
        text += "\n\nreport:\n" + ("\n".join(f"  {c}" for c in commands) or "  (no finished runs yet)")
        print("\n" + text)
        parent.log_metrics({f"trials_{k}": v for k, v in counts.items()}, step=0)
        parent.log_text(text + "\n", "sweep/summary.txt")
        status = outcome
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        parent.end(status)
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return sweep(args)
    except MLRError as exc:
        if args.debug:
            raise
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
