"""``python -m mlr_registry.run --resume RUN_ID``: continue a run from its latest checkpoint.

Everything is read and checked before the run is touched (its status, that no live process on
this host still writes it, its logged config, its checkpoint and that it fits the rebuilt
trainer), so a failure leaves the run as it was; then it goes back to RUNNING and trains on
(``run_lifecycle.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlr_registry.run_lifecycle import (
    _build_trainer,
    _checkpointer,
    _environment_tags,
    _extra_tags,
    _log_environment,
    _process_tags,
    _run_to_end,
    _store_errors,
)


def resume(args: argparse.Namespace) -> int:
    """Continue run ``args.resume``. Everything is read and checked (config, checkpoint files,
    state shapes) before the run is touched, so a failure leaves it exactly as it was."""
    import tempfile

    import mlflow

    from mlr_registry.errors import CheckpointError
    from mlr_registry.tracking.mlflow_run import RESUMABLE_STATUSES, TrackedRun

    with _store_errors(args.tracking_uri):
        run = TrackedRun(args.tracking_uri)
        info = run.get_run(args.resume).info
    if info.status not in RESUMABLE_STATUSES:
        raise CheckpointError(f"run {args.resume} is {info.status}; only {', '.join(RESUMABLE_STATUSES)} runs resume")
    if info.status == "RUNNING":
        _refuse_if_alive(args.resume, run.get_run(args.resume).data.tags)
    if not run.has_artifact(args.resume, "config/config.gin"):  # an unreachable store raises instead
        raise CheckpointError(f"run {args.resume} has no config/config.gin artifact to rebuild it from")
    with tempfile.TemporaryDirectory(prefix="mlr_registry_resume_") as tmp:
        config_file = mlflow.artifacts.download_artifacts(
            run_id=args.resume, artifact_path="config/config.gin", dst_path=tmp, tracking_uri=run.tracking_uri)
        _, trainer, params = _build_trainer([config_file], args.bind)
    try:  # a remote store's checkpoint is downloaded into a folder that the run deletes at its end
        step, latest = _load_latest_checkpoint(run, args.resume, trainer, params)
    except BaseException:
        run.remove_scratch()
        raise
    run.resume(args.resume, from_step=step)
    run.set_tags({"resumed_from_step": str(step), **_process_tags(), **_environment_tags(trainer),
                  **_extra_tags(args)})
    print(f"resuming MLflow run {run.run_id} from step {step} ({latest})", file=sys.stderr)
    checkpointer = _checkpointer(run, params)
    checkpointer.last_saved_step = step
    return _run_to_end(run, trainer, checkpointer, preamble=lambda: _log_environment(run))


def _refuse_if_alive(run_id: str, tags: dict[str, str]) -> None:
    """A RUNNING run may be one that crashed (kill -9, a lost machine) or one still training:
    resuming the latter would have two processes write one run's metrics and checkpoints. On
    this host a live process with the run's pid that runs mlr_registry says which; from
    another host it cannot be told, so that gets a warning."""
    import socket

    from mlr_registry.errors import CheckpointError

    host, pid = tags.get("host"), tags.get("pid", "")
    if host is None or not pid.isdigit():
        return
    if host != socket.gethostname():
        print(f"warning: run {run_id} is RUNNING on host {host}; if its process (pid {pid}) still runs, "
              "both will write to the run", file=sys.stderr)
        return
    try:
        alive = b"mlr_registry" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no such process (or no /proc: then os.kill tells whether the pid exists)
        alive = False
    if alive:
        raise CheckpointError(f"run {run_id} is RUNNING and its process (pid {pid} on this host) is still alive: "
                              "stop it first (Ctrl-C or SIGTERM end it KILLED with a checkpoint), then resume")


def _load_latest_checkpoint(run, run_id: str, trainer, params) -> tuple[int, Path]:
    """Load run ``run_id``'s newest checkpoint into ``trainer``: (its step, its path)."""
    from mlr_registry.errors import CheckpointError
    from mlr_registry.training.checkpoint import latest_checkpoint, load_checkpoint

    root = run.download_checkpoints(run_id)
    latest = latest_checkpoint(root) if root is not None else None
    if latest is None:
        steps = sorted(p.name for p in root.glob("step_*")) if root is not None and root.is_dir() else []
        if steps:
            raise CheckpointError(f"run {run_id} has checkpoint folders ({', '.join(steps)}) but no {root}/latest "
                                  "pointer: write the newest complete folder's name into it to resume from there")
        raise CheckpointError(f"run {run_id} has no checkpoint (no {root}/latest): it ran with "
                              "checkpoint_every = 0 or stopped before its first checkpoint")
    state, meta = load_checkpoint(latest, params)
    try:
        trainer.load_state_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{latest}: {exc}") from None
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{latest} does not fit this run's trainer: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return int(meta["step"]), latest
