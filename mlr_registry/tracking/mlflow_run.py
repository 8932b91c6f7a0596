"""One MLflow run per training run, with the run conventions of DESIGN.md.

Only the CLI and the trainer use this module; components never see MLflow. The run always ends
with a terminal status: FINISHED, FAILED (an exception) or KILLED (Ctrl-C or SIGTERM), so the
UI never shows a dead run as RUNNING. A run can be reopened (:meth:`TrackedRun.resume`) to
continue from a checkpoint; its checkpoints live in its artifact store under ``checkpoints/``.
Which store a run goes to is ``store.py``'s.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

# Re-exported: mlflow_run.py held the store's location and the git commit before store.py and reproduce.py.
from mlr_registry.tracking.reproduce import git_commit as git_commit
from mlr_registry.tracking.store import DEFAULT_ARTIFACT_DIR as DEFAULT_ARTIFACT_DIR
from mlr_registry.tracking.store import DEFAULT_TRACKING_URI as DEFAULT_TRACKING_URI
from mlr_registry.tracking.store import missing_sqlite_store as missing_sqlite_store
from mlr_registry.tracking.store import resolve_tracking_uri, sqlite_artifact_location

DEFAULT_EXPERIMENT = "mlr_registry"
# MLflow limits: params are at most 6,000 characters; a batch holds at most 100 params / 1,000 metrics.
_PARAM_LIMIT = 6000
_PARAM_BATCH = 100
_METRIC_BATCH = 1000
CHECKPOINT_DIR = "checkpoints"
RESUMABLE_STATUSES = ("RUNNING", "KILLED", "FAILED")
# What MLflow 3's UI reads (in the releases before its global GenAI / machine-learning switch, and
# what its experiment-kind selector writes) to open an experiment in its model-training view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class TrackedRun:
    """An MLflow run: created on ``start``, ended once with a terminal status.

    Metrics are buffered and flushed in batches (every ``flush_every_s`` seconds and at the
    end) so that logging stays off the training hot path.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                 run_name: str | None = None, flush_every_s: float = 10.0):
        import mlflow  # deferred: importing mlflow costs seconds, and --list doesn't need it

        self._mlflow = mlflow
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._pending: list[Any] = []
        self._last_flush = time.monotonic()
        self._flush_every_s = flush_every_s
        self._ended = False
        self._already_logged: set[tuple[str, int]] = set()
        self._scratch: list[Path] = []  # local staging / download folders for a remote store
        self._unsent: Path | None = None  # a staged checkpoint whose upload did not complete
        self._delete_warned = False
        # Called before each metric log: the run CLI raises there an interrupt that Python lost.
        self.interrupt_check: Callable[[], None] = lambda: None

    def _experiment_id(self) -> str:
        """The experiment's id, created where missing (artifacts beside a SQLite store, see
        :func:`sqlite_artifact_location`), and marked as model training (:data:`EXPERIMENT_KIND_TAG`)
        where it is not marked yet: a kind that a user chose in the UI stays."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return self.client.create_experiment(self.experiment,
                                                 artifact_location=sqlite_artifact_location(self.tracking_uri),
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        if EXPERIMENT_KIND_TAG not in found.tags:
            self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id

    def start(self, tags: Mapping[str, str], params: Mapping[str, str]) -> str:
        from mlflow.entities import Param, RunTag

        # MLflow names an unnamed run from Python's `random`, which the trainer seeds: every run
        # of one seed would get the same "random" name. Unnamed here means named by the clock.
        name = self.run_name or f"{self.experiment} · {time.strftime('%Y-%m-%d %H:%M:%S')}"
        self.experiment_id = self._experiment_id()
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        items = [Param(k[:250], str(v)[:_PARAM_LIMIT]) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _PARAM_BATCH])
        self.client.log_batch(self.run_id, tags=[RunTag("mlflow.runName", run.info.run_name)])
        return self.run_id

    def get_run(self, run_id: str) -> Any:
        """The MLflow run ``run_id`` (a CheckpointError when the store does not have it)."""
        from mlflow.exceptions import MlflowException

        from mlr_registry.errors import CheckpointError

        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            raise CheckpointError(f"no MLflow run {run_id!r} in {self.tracking_uri}: "
                                  f"{str(exc).splitlines()[0]}") from None

    def resume(self, run_id: str, from_step: int) -> None:
        """Reopen ``run_id`` (status back to RUNNING) to continue it from a checkpoint at
        ``from_step``. Metric points the interrupted process had already logged at steps >=
        ``from_step`` (after its last checkpoint, before a SIGKILL) are not logged again, so
        each (metric, step) keeps one value."""
        run = self.get_run(run_id)
        self.run_id = run_id
        self.experiment_id = run.info.experiment_id
        self.experiment = self.client.get_experiment(run.info.experiment_id).name
        self.run_name = run.info.run_name
        for key in run.data.metrics:
            for m in self.client.get_metric_history(run_id, key):
                if m.step >= from_step:
                    self._already_logged.add((key, int(m.step)))
        self.client.update_run(run_id, status="RUNNING")
        self._ended = False

    def ui_hint(self) -> str:
        """Where to see this run in the MLflow UI, in its model-training view (MLflow 3.17's UI
        opens in its GenAI view unless the address asks for ``workflowType=machine_learning``):
        the server's address for an http(s) store, else the ``mlflow ui`` command and the
        address it serves (its default port)."""
        route = f"#/experiments/{self.experiment_id}/runs/{self.run_id}?workflowType=machine_learning"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/{route}"
        return f"mlflow ui --backend-store-uri {self.tracking_uri}, then http://127.0.0.1:5000/{route}"

    def artifact_dir(self) -> Path | None:
        """The run's artifact folder when the artifact store is a local file system, else None."""
        uri = self.client.get_run(self.run_id).info.artifact_uri
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return Path(unquote(parsed.path))
        if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
            return Path(uri)
        return None

    def checkpoint_root(self) -> Path:
        """Where this run's checkpoints are written: ``<artifact dir>/checkpoints`` for a local
        artifact store (written in place, so a killed process leaves its last complete
        checkpoint in the run's artifacts); a local staging folder for a remote store, whose
        checkpoints :meth:`upload_checkpoint` copies into the run's ``checkpoints/``."""
        local = self.artifact_dir()
        if local is not None:
            return local / CHECKPOINT_DIR
        return self._scratch_folder()

    def _scratch_folder(self) -> Path:
        """A temporary folder that :meth:`end` (or :meth:`remove_scratch`) deletes."""
        folder = Path(tempfile.mkdtemp(prefix=f"mlr_registry_ckpt_{self.run_id}_"))
        self._scratch.append(folder)
        return folder

    def upload_checkpoint(self, path: Path) -> None:
        """Copy a checkpoint written to a staging folder into a remote artifact store, then its
        ``latest`` pointer, then delete the store's older checkpoints (only the newest is kept,
        as in a local store). No-op for local stores, where it was written in place."""
        if self.artifact_dir() is not None:
            return
        self._unsent = path
        self.client.log_artifacts(self.run_id, str(path), f"{CHECKPOINT_DIR}/{path.name}")
        self.client.log_artifact(self.run_id, str(path.parent / "latest"), CHECKPOINT_DIR)
        self._unsent = None
        self._delete_remote_checkpoints(keep=path.name)

    def _delete_remote_checkpoints(self, keep: str) -> None:
        """Delete the run's uploaded checkpoints other than ``keep`` (after ``latest`` names it,
        so a crash at any point leaves a complete checkpoint behind). A store that cannot delete
        keeps them, with one warning."""
        old = [f.path for f in self.client.list_artifacts(self.run_id, CHECKPOINT_DIR)
               if f.is_dir and Path(f.path).name != keep]
        if not old:
            return
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(self.client.get_run(self.run_id).info.artifact_uri,
                                       tracking_uri=self.tracking_uri)
        try:
            for path in old:
                repo.delete_artifacts(path)
        except Exception as exc:  # noqa: BLE001 - NotImplementedError, or a server refusing DELETE
            if not self._delete_warned:
                self._delete_warned = True
                print(f"warning: older checkpoints of run {self.run_id} stay in its artifact store "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no delete'})",
                      file=sys.stderr)

    def remove_scratch(self) -> None:
        """Delete this run's staging and download folders, except one holding a checkpoint that
        was not uploaded (then the only copy; its path is printed)."""
        for folder in self._scratch:
            if self._unsent is not None and folder in self._unsent.parents:
                print(f"warning: checkpoint {self._unsent} was not uploaded to the artifact store; "
                      "it stays there", file=sys.stderr)
                continue
            shutil.rmtree(folder, ignore_errors=True)
        self._scratch = []

    def download_checkpoints(self, run_id: str) -> Path | None:
        """A local folder holding the run's ``latest`` pointer and the checkpoint it names
        (the artifact folder itself for a local store); None when the run has no checkpoint."""
        self.run_id = run_id
        local = self.artifact_dir()
        if local is not None:
            return local / CHECKPOINT_DIR
        import mlflow

        root = self._scratch_folder() / CHECKPOINT_DIR
        root.mkdir()

        def download(path: str) -> Path:  # MLflow puts a file or folder at dst_path/<its name>
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{path}",
                                                            dst_path=str(root), tracking_uri=self.tracking_uri))

        if not self.has_artifact(run_id, f"{CHECKPOINT_DIR}/latest"):
            return None  # no checkpoint uploaded; a store that cannot be read raises instead
        latest = download("latest")
        download(latest.read_text().strip())
        return root

    def has_artifact(self, run_id: str, path: str) -> bool:
        """Whether run ``run_id`` holds the artifact file ``path`` (a listing of its folder, so
        that an unreachable store raises rather than reads as "absent")."""
        folder = path.rpartition("/")[0] or None
        return any(f.path == path for f in self.client.list_artifacts(run_id, folder))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        self.interrupt_check()
        now = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                             if (k, int(step)) not in self._already_logged)
        if time.monotonic() - self._last_flush > self._flush_every_s or len(self._pending) >= _METRIC_BATCH:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            chunk, self._pending = self._pending[:_METRIC_BATCH], self._pending[_METRIC_BATCH:]
            self.client.log_batch(self.run_id, metrics=chunk)
        self._last_flush = time.monotonic()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def end(self, status: str) -> None:
        """Flush and mark the run FINISHED, FAILED or KILLED (only the first call counts).

        Ending must not fail: metrics that cannot be written (e.g. a batch cut short by Ctrl-C
        inside a database write) are dropped with a warning, and the status write is retried
        once with a fresh client, so the run never stays RUNNING.
        """
        if self._ended or self.run_id is None:
            return
        self._ended = True
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - the status below matters more than a metric batch
            print(f"warning: {len(self._pending)} metric values of run {self.run_id} were not written: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            self._pending.clear()
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception:  # noqa: BLE001 - retry once on a fresh connection
            self.client = self._mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
            self.client.set_terminated(self.run_id, status=status)
        finally:
            self.remove_scratch()
