"""One trial of a sweep, as a Ray task runs it: ``python -m mlr_registry.run`` in a subprocess.

A trial that fails is retried once, from its last checkpoint: its MLflow run is found by its
``sweep_trial`` tag (or, failing that, by the run id the CLI prints) and continued with
``python -m mlr_registry.run --resume RUN_ID``. Without a run (the first attempt died before
creating one) the retry starts afresh. Input errors (exit 2) and interruptions (exit 130) are
not retried: a second attempt would end the same. A trial whose run an earlier sweep left
KILLED or FAILED starts by resuming that run.

The subprocess gets ``OMP_NUM_THREADS`` (and MKL's) = the trial's CPUs, so that trials sharing
a node do not oversubscribe it; Ray sets ``CUDA_VISIBLE_DEVICES`` for the trial's GPU share.
Its output goes to one log file per attempt, which is also logged to the run as an artifact
(``logs/``), so that a cluster's logs land in the tracking store.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from mlr_registry.sweep.grid import TRIAL_TAG, Trial

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
RUN_COMMAND = (sys.executable, "-m", "mlr_registry.run")
_TAIL_LINES = 15
_TERMINATE_GRACE_S = 60.0
_POLL_S = 0.5


@dataclass(frozen=True)
class TrialSpec:
    """Everything a Ray task needs to run a trial (picklable; no MLflow objects)."""

    trial: Trial
    tracking_uri: str
    tags: tuple[tuple[str, str], ...]    # mlflow.parentRunId, sweep, sweep_trial, ...
    cwd: str                             # where gin paths and the default store are relative to
    log_dir: str
    num_cpus: float = 1.0
    # The run CLI; tests inject a failing command here to exercise the retry path.
    command: tuple[str, ...] = RUN_COMMAND
    retries: int = 1
    # A KILLED or FAILED run of this trial from an earlier sweep: the first attempt resumes it
    # (and starts afresh if it cannot: no checkpoint, exit 2).
    resume_run: str | None = None

    def fresh_args(self) -> list[str]:
        tags = [a for k, v in self.tags for a in ("--tag", f"{k}={v}")]
        return [*self.command, *self.trial.run_args(), *tags, "--tracking-uri", self.tracking_uri]

    def resume_args(self, run_id: str) -> list[str]:
        return [*self.command, "--resume", run_id, "--tracking-uri", self.tracking_uri]


@dataclass
class TrialResult:
    """How a trial ended: FINISHED, FAILED, CONFIG_ERROR (exit 2, not retried) or KILLED."""

    trial: Trial
    status: str
    run_id: str | None
    attempts: int
    returncode: int
    seconds: float
    logs: list[str] = field(default_factory=list)
    tail: str = ""     # the last lines of the last attempt's output, for the summary
    node: str = ""


def find_run(tracking_uri: str, experiment: str, trial_id: str, started_after_ms: int | None = None):
    """The latest MLflow run of ``experiment`` tagged ``sweep_trial=trial_id`` (started at or
    after ``started_after_ms``, epoch milliseconds, when given), or None."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = f"tags.`{TRIAL_TAG}` = '{trial_id}'"
    if started_after_ms is not None:
        query += f" and attributes.start_time >= {int(started_after_ms)}"
    found = client.search_runs([exp.experiment_id], filter_string=query,
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def _wait(proc: subprocess.Popen) -> int:
    """``proc.wait()`` in short slices: a blocking wait would not see Ray's cancel (a KeyboardInterrupt
    raised between bytecodes of this thread)."""
    while True:
        try:
            return proc.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            continue


def _attempt(args: list[str], cwd: str, env: dict[str, str], log_path: Path) -> tuple[int, str]:
    """Run one attempt, output to ``log_path``; Ctrl-C (Ray's cancel) ends the child with SIGTERM,
    which the run CLI turns into a KILLED run."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write("$ " + shlex.join(args) + "\n")
        log.flush()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            returncode = _wait(proc)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=_TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    with log_path.open() as log:
        tail = "".join(deque(log, maxlen=_TAIL_LINES))
    return returncode, tail


def _run_id_in_log(log_path: Path) -> str | None:
    """The run id the run CLI prints ("MLflow run <id> in experiment ..." / "resuming MLflow run <id>"):
    the fallback when the run lacks its sweep_trial tag."""
    found = re.findall(r"MLflow run ([0-9a-f]{32})\b", log_path.read_text(errors="replace"))
    return found[0] if found else None


def _log_artifact(tracking_uri: str, run_id: str, path: Path) -> None:
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=tracking_uri).log_artifact(run_id, str(path), "logs")
    except Exception as exc:  # noqa: BLE001 - a missing log must not fail the trial
        print(f"warning: could not log {path} to run {run_id}: {exc}", file=sys.stderr)


def _next_log(stem: Path) -> Path:
    """``<stem>.attempt<N>.log`` with the first N not taken (a rerun keeps the earlier sweep's logs)."""
    n = 1
    while (path := stem.with_name(f"{stem.name}.attempt{n}.log")).exists():
        n += 1
    return path


def _interruptible() -> None:
    """Ray cancels a running task by simulating SIGINT in its worker, which does nothing where
    SIGINT is ignored (a worker started from a background job inherits SIG_IGN)."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread: leave signals alone
        pass


def run_trial(spec: TrialSpec) -> TrialResult:
    """Run the trial, retrying a failure once from its last checkpoint (the body of the Ray task)."""
    import socket

    _interruptible()
    trial = spec.trial
    threads = str(max(1, int(spec.num_cpus)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    cwd = spec.cwd if Path(spec.cwd).is_dir() else os.getcwd()
    slug = re.sub(r"[^\w.=-]+", "_", trial.label)
    stem = Path(spec.log_dir) / f"{slug}.{trial.trial_id}"
    start = time.monotonic()
    args = spec.resume_args(spec.resume_run) if spec.resume_run else spec.fresh_args()
    logs, run_id, returncode, tail = [], spec.resume_run, EXIT_OK, ""
    retries_left, earlier = spec.retries, spec.resume_run is not None
    while True:
        log_path = _next_log(stem)
        logs.append(str(log_path))
        began_ms, resuming = int(time.time() * 1000) - 1000, "--resume" in args
        returncode, tail = _attempt(args, cwd, env, log_path)
        if not resuming:  # a fresh start made a new run (if it got that far); not an earlier one
            run = find_run(spec.tracking_uri, trial.experiment, trial.trial_id, started_after_ms=began_ms)
            run_id = run.info.run_id if run is not None else _run_id_in_log(log_path)
        if run_id is not None:
            _log_artifact(spec.tracking_uri, run_id, log_path)
        if earlier and returncode == EXIT_USAGE:  # the earlier run cannot resume (no checkpoint): start afresh
            earlier, args = False, spec.fresh_args()
            continue
        earlier = False
        if returncode in (EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED) or retries_left == 0:
            break
        retries_left -= 1
        args = spec.resume_args(run_id) if run_id is not None else spec.fresh_args()
    status = {EXIT_OK: "FINISHED", EXIT_USAGE: "CONFIG_ERROR", EXIT_INTERRUPTED: "KILLED"}.get(returncode, "FAILED")
    return TrialResult(trial, status, run_id, len(logs), returncode, time.monotonic() - start, logs, tail,
                       socket.gethostname())
