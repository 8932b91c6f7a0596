"""Sweeps on Ray: ``python -m mlr_registry.sweep --gin gin/atari_mlr.gin --games atari26 --seeds 5``.

Every combination of the grid (``--grid``, ``--games``, ``--tasks``) and the seeds runs as its
own tracked run (``python -m mlr_registry.run`` in a subprocess, one Ray task each) on a local
Ray instance, or on a cluster with ``--address``. All runs are children of one MLflow parent
run (tag ``sweep=NAME``) in one tracking store. Trials whose run already FINISHED in the store
are skipped, and those whose run an earlier sweep left KILLED or FAILED resume it; a failed
trial is retried once from its last checkpoint, then reported. The sweep
ends with a summary and the report command to run. Exit status: 0 when every trial finished,
1 when some failed, 2 for input errors, 130 when interrupted.

Here: the arguments and the sweep's course. The trials are in ``grid.py``, their runs on Ray in
``ray_runner.py``, their earlier runs and the parent run in ``store.py``, the closing summary in
``summary.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from mlr_registry.errors import MLRError
from mlr_registry.sweep.grid import TRIAL_TAG, Axis
from mlr_registry.sweep.ray_runner import SweepError as SweepError
from mlr_registry.sweep.ray_runner import _init_ray, run_on_ray
from mlr_registry.sweep.store import (
    LABEL_TAG,
    PARENT_TAG,
    SWEEP_TAG,
    VARIANT_TAG,
    _finished,
    _parent_run,
    _resumable,
    trial_runs,
)
from mlr_registry.sweep.store import ROLE_TAG as ROLE_TAG
from mlr_registry.sweep.summary import _summary, report_commands

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


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
