"""A tracked training run from its start to its terminal status (``python -m mlr_registry.run``).

The config is parsed and the trainer built, the MLflow run starts with its tags (provenance,
process, environment, ``--tag`` options) and params, then :func:`_run_to_end` trains, logs the
config and environment artifacts and ends the run FINISHED, FAILED (the error becomes the run's
``error`` tag) or KILLED (an interrupt: exit 130). A store that cannot be used is one line
(exit 2). ``--resume`` reuses these steps (``run_resume.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from mlr_registry.run_signals import _clear_pending_interrupt, _raise_lost_interrupt, _signals_ignored

EXIT_INTERRUPTED = 130


def _build_trainer(gin_files, bindings):
    """Parse the config, build the experiment's trainer; returns (settings, trainer, params)."""
    from mlr_registry import config
    from mlr_registry.training.experiment import experiment

    config.parse(gin_files, bindings)
    try:
        settings = experiment()
        trainer = settings.trainer()
    except (ValueError, TypeError) as exc:
        translated = config.translate_call_error(exc)
        if translated is None:
            raise
        raise translated from exc
    return settings, trainer, config.operative_params()


def _extra_tags(args: argparse.Namespace) -> dict[str, str]:
    """``--tag KEY=VALUE`` options (split at the first '=')."""
    return {k.strip(): v for k, v in (t.split("=", 1) for t in args.tag)}


@contextlib.contextmanager
def _store_errors(tracking_uri: str):
    """MLflow's errors for a store it cannot use (an unknown scheme, a folder instead of a
    database) as one line naming the store (exit 2), not a traceback. A server's errors stay
    failures (exit 1): one that does not answer may answer later, and a sweep retries those."""
    from mlr_registry.errors import ConfigError, MLRError
    from mlr_registry.tracking.mlflow_run import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    try:
        yield
    except MLRError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException, sqlalchemy's errors
        if uri.startswith(("http://", "https://")):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"cannot use the MLflow tracking store {uri!r}: "
                          f"{type(exc).__name__}: "
                          f"{first[:300]} (the default is sqlite:///mlruns.db; a server is http://HOST:PORT)") from exc


def _process_tags() -> dict[str, str]:
    """Which process writes the run: ``--resume`` refuses a RUNNING run whose process is alive."""
    import socket

    return {"host": socket.gethostname(), "pid": str(os.getpid())}


def _checkpointer(run, params):
    from mlr_registry.training.checkpoint import Checkpointer

    return Checkpointer(run.checkpoint_root(), params, before_save=run.flush, after_save=run.upload_checkpoint)


def _accepts_checkpointer(trainer) -> bool:
    import inspect

    return "checkpointer" in inspect.signature(trainer.train).parameters


def _environment_tags(trainer) -> dict[str, str]:
    """Python, torch, CUDA, cuDNN and the device the trainer runs on (see tracking.environment)."""
    from mlr_registry.tracking.environment import environment_tags

    device = getattr(trainer, "device", None)
    return environment_tags(None if device is None else str(device))


def _log_environment(run) -> None:
    from mlr_registry.tracking.environment import PACKAGES_ARTIFACT, installed_packages

    run.log_text(installed_packages(), PACKAGES_ARTIFACT)


def _log_config(run, text: str, artifact_file: str) -> None:
    """``artifact_file`` (``config/config.gin``: what --resume and users download) and a copy
    with ``.txt`` appended, which the MLflow UI previews (it shows no ``.gin`` file)."""
    run.log_text(text, artifact_file)
    run.log_text(text, artifact_file + ".txt")


def train(args: argparse.Namespace) -> int:
    from mlr_registry import __version__, config, registry
    from mlr_registry.tracking.mlflow_run import TrackedRun, git_commit
    from mlr_registry.tracking.naming import run_name
    from mlr_registry.tracking.reproduce import NOTE_TAG, reproduce_note

    settings, trainer, params = _build_trainer(args.gin, args.bind)
    plugins = registry.loaded_plugins()
    commit = git_commit()
    tags = {**trainer.run_tags(),
            "plugins": ",".join(sorted(set(plugins.values()))) or "none",
            "mlr_registry_version": __version__, "git_commit": commit,
            "gin_files": ",".join(args.gin), "bindings": "; ".join(args.bind), **_process_tags(),
            **_environment_tags(trainer), NOTE_TAG: reproduce_note(args.gin, args.bind, commit, __version__),
            **_extra_tags(args)}
    name = settings.run_name or run_name(tags, args.gin, args.bind)
    with _store_errors(args.tracking_uri):
        run = TrackedRun(args.tracking_uri, experiment=settings.name, run_name=name)
        run.start(tags, params)
    print(f"MLflow run {run.run_id} ({name}) in experiment {settings.name!r} at {run.tracking_uri}",
          file=sys.stderr)
    print(f"view it: {run.ui_hint()}", file=sys.stderr)
    try:  # a checkpoint folder that cannot be made (permissions, full disk) must not leave it RUNNING
        checkpointer = _checkpointer(run, params) if _accepts_checkpointer(trainer) else None
    except BaseException:
        run.end("FAILED")
        raise
    return _run_to_end(run, trainer, checkpointer, preamble=lambda: (
        _log_config(run, config.config_str(), "config/config.gin"),
        _log_config(run, config.operative_config_str(), "config/operative_config.gin"),
        _log_environment(run)))


def _run_to_end(run, trainer, checkpointer, preamble=None) -> int:
    from mlr_registry import config

    status = "FAILED"
    run.interrupt_check = _raise_lost_interrupt
    try:
        if preamble is not None:
            preamble()
        final = trainer.train(run, checkpointer) if checkpointer is not None else trainer.train(run)
        _log_config(run, config.operative_config_str(), "config/operative_config.gin")
        status = "FINISHED"
    except KeyboardInterrupt:
        _clear_pending_interrupt()
        status = "KILLED"
        print(f"interrupted: MLflow run {run.run_id} ends KILLED with what it had logged", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the run keeps why it failed, not only the console
        with contextlib.suppress(Exception):
            run.set_tags({"error": f"{type(exc).__name__}: {str(exc).strip()}"[:1000]})
        raise
    finally:
        # A second Ctrl-C or SIGTERM while the status is written would leave the run RUNNING.
        with _signals_ignored():
            run.end(status)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in final.items())
    print(f"finished MLflow run {run.run_id}: {summary}", file=sys.stderr)
    with contextlib.suppress(Exception):  # where to look is a courtesy: the run is already saved
        print(_where_to_look(run), file=sys.stderr)
    return 0


def _where_to_look(run) -> str:
    """Where a finished run's results are: its store and experiment, its artifacts (a folder for
    a local store) and how to see it in the MLflow UI."""
    info = run.client.get_run(run.run_id).info
    experiment = run.client.get_experiment(info.experiment_id).name
    folder = run.artifact_dir()
    artifacts = str(folder) if folder is not None else info.artifact_uri
    listed = ", ".join(f.path + "/" * f.is_dir for f in run.client.list_artifacts(run.run_id))
    return (f"  store:      {run.tracking_uri} (experiment {experiment!r}, run {run.run_id})\n"
            f"  artifacts:  {artifacts}" + (f" ({listed})" if listed else "") + "\n"
            f"  view it:    {run.ui_hint()}")
