"""A sweep's trials as Ray tasks: joining a cluster or starting a local Ray instance, one task
per trial, and cancelling them on Ctrl-C or SIGTERM (their runs end KILLED)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from mlr_registry.errors import MLRError
from mlr_registry.sweep.trial import EXIT_INTERRUPTED


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
