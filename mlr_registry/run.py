"""Train from gin files: ``python -m mlr_registry.run --gin gin/atari_mlr.gin``.

Files compose in order (later wins), then ``--bind`` bindings. The operative config is saved
as an MLflow artifact and flattened into params. Errors caused by input (missing file, syntax,
unknown component or parameter, out-of-range value, broken plugin, a missing, corrupt or
mismatched checkpoint) print one line and exit 2; ``--debug`` shows the traceback.

``--resume RUN_ID`` continues a run from its latest checkpoint (``checkpoints/`` in the run's
artifacts) with the config it logged (``config/config.gin``): the same MLflow run goes back to
RUNNING, metrics continue at their steps, and it ends FINISHED. Exit codes: 0 finished, 2 input
or checkpoint error (the run is left untouched), 130 interrupted (Ctrl-C / SIGTERM: a checkpoint
is written at the end of the current step, then the run ends KILLED).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run ends KILLED with what it had logged."""


# The interrupt whose exception has not yet reached _run_to_end. Python discards an exception
# raised inside a finalizer (``__del__``, a weakref callback such as SQLAlchemy's connection
# pool's): its signal handler runs wherever the main thread is, so one Ctrl-C could be printed as
# "Exception ignored" and lost, and the run trained on. The run's next metric log raises it again.
_pending_signal: int | None = None


def _on_interrupt(signum, frame):  # noqa: ARG001
    """SIGINT raises KeyboardInterrupt, SIGTERM Terminated; either stays pending until it ends the run."""
    global _pending_signal
    _pending_signal = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _raise_lost_interrupt() -> None:
    if _pending_signal is not None:
        _on_interrupt(_pending_signal, None)


def _clear_pending_interrupt() -> None:
    global _pending_signal
    _pending_signal = None


@contextlib.contextmanager
def _signals_ignored():
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _enable_faulthandler() -> None:
    """A crash in native code (a driver, a renderer) prints every thread's Python stack before
    the process dies, instead of ending it silently with its MLflow run left RUNNING. Left as it
    is where something (pytest, the user) enabled it already, or where stderr is no real file."""
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, OSError, RuntimeError):  # UnsupportedOperation; RuntimeError: stderr None
        pass


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mlr_registry.run", description=__doc__.splitlines()[0])
    p.add_argument("--gin", action="append", default=[], metavar="FILE",
                   help="gin config file; repeat to compose (later files override earlier ones)")
    p.add_argument("--bind", action="append", default=[], metavar="BINDING",
                   help="a gin binding applied after the files, e.g. --bind \"atari.game = 'pong'\"")
    p.add_argument("--resume", default=None, metavar="RUN_ID",
                   help="continue the MLflow run RUN_ID from its latest checkpoint, with its logged config "
                        "(--bind may change only run-control params such as progress or checkpoint_every)")
    p.add_argument("--list", action="store_true",
                   help="list every registered component by kind, with origin, parameters and defaults")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra MLflow tag on the run (repeatable), e.g. --tag sweep=alien-seeds")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the config and train a handful of steps at tiny widths; track nothing")
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    args = p.parse_args(argv)
    bad = [t for t in args.tag if "=" not in t or not t.split("=", 1)[0].strip()]
    if bad:
        p.error(f"--tag {bad[0]!r}: expected KEY=VALUE, e.g. --tag sweep=alien-seeds")
    if args.resume and args.gin:
        p.error("--resume continues a run with the config it logged; it takes no --gin")
    if args.resume and args.dry_run:
        p.error("--dry-run checks --gin files, not a run to resume; drop one of --dry-run and --resume")
    if not args.list and not args.gin and not args.resume:
        p.error("give at least one --gin FILE (or --list, or --resume RUN_ID); e.g. --gin gin/smoke/atari_mlr.gin")
    return args


def print_components(out=sys.stdout) -> None:
    import inspect

    from mlr_registry import registry

    for kind in registry.KINDS:
        print(f"{kind}:", file=out)
        found = registry.components(kind)
        if not found:
            print("  (none)", file=out)
        for component in found:
            print(f"  {component.name}  [{component.origin}]  gin: {component.selector}", file=out)
            for name, default in component.parameters().items():
                shown = "(required)" if default is inspect.Parameter.empty else repr(default)
                print(f"      {name} = {shown}", file=out)
    for failure in registry.plugin_failures():
        print(f"broken: {failure}", file=out)


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


def main(argv: Sequence[str] | None = None) -> int:
    _enable_faulthandler()
    args = parse_args(argv)
    from mlr_registry import registry
    from mlr_registry.errors import MLRError

    previous = {sig: signal.signal(sig, _on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    _clear_pending_interrupt()
    try:
        for failure in registry.load_all():
            print(f"warning: {failure}", file=sys.stderr)
            if args.debug and failure.traceback:
                print(failure.traceback, file=sys.stderr, end="")
        if args.list:
            print_components()
            return 0
        if args.dry_run:
            from mlr_registry.dry_run import dry_run

            dry_run(args.gin, args.bind)
            return 0
        return resume(args) if args.resume else train(args)
    except MLRError as exc:
        if args.debug:
            raise
        # gin appends "In call to configurable ..." lines; the first line is the error itself.
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
