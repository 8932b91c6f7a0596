"""Train from gin files: ``python -m mlr_registry.run --gin gin/atari_mlr.gin``.

Files compose in order (later wins), then ``--bind`` bindings. The operative config is saved
as an MLflow artifact and flattened into params. Errors caused by input (missing file, syntax,
unknown component or parameter, out-of-range value, broken plugin) print one line and exit 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run ends KILLED with what it had logged."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


@contextlib.contextmanager
def _signals_ignored():
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mlr_registry.run", description=__doc__.splitlines()[0])
    p.add_argument("--gin", action="append", default=[], metavar="FILE",
                   help="gin config file; repeat to compose (later files override earlier ones)")
    p.add_argument("--bind", action="append", default=[], metavar="BINDING",
                   help="a gin binding applied after the files, e.g. --bind \"atari.game = 'pong'\"")
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
    if not args.list and not args.gin:
        p.error("give at least one --gin FILE (or --list); e.g. --gin gin/smoke/atari_mlr.gin")
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


def train(args: argparse.Namespace) -> int:
    from mlr_registry import __version__, config, registry
    from mlr_registry.tracking.mlflow_run import TrackedRun, git_commit
    from mlr_registry.training.experiment import experiment

    config.parse(args.gin, args.bind)
    try:
        settings = experiment()
        trainer = settings.trainer()
    except (ValueError, TypeError) as exc:
        translated = config.translate_call_error(exc)
        if translated is None:
            raise
        raise translated from exc
    plugins = registry.loaded_plugins()
    tags = {**trainer.run_tags(),
            "plugins": ",".join(sorted(set(plugins.values()))) or "none",
            "mlr_registry_version": __version__, "git_commit": git_commit(),
            "gin_files": ",".join(args.gin),
            **dict(t.split("=", 1) for t in args.tag)}
    run = TrackedRun(args.tracking_uri, experiment=settings.name, run_name=settings.run_name)
    run.start(tags, config.operative_params())
    print(f"MLflow run {run.run_id} in experiment {settings.name!r} at {run.tracking_uri}", file=sys.stderr)
    status = "FAILED"
    try:
        run.log_text(config.config_str(), "config/config.gin")
        run.log_text(config.operative_config_str(), "config/operative_config.gin")
        final = trainer.train(run)
        run.log_text(config.operative_config_str(), "config/operative_config.gin")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(f"interrupted: MLflow run {run.run_id} ends KILLED with what it had logged", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        # A second Ctrl-C or SIGTERM while the status is written would leave the run RUNNING.
        with _signals_ignored():
            run.end(status)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in final.items())
    print(f"finished MLflow run {run.run_id}: {summary}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from mlr_registry import registry
    from mlr_registry.errors import MLRError

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        for failure in registry.load_all():
            print(f"warning: {failure}", file=sys.stderr)
        if args.list:
            print_components()
            return 0
        if args.dry_run:
            from mlr_registry.dry_run import dry_run

            dry_run(args.gin, args.bind)
            return 0
        return train(args)
    except MLRError as exc:
        if args.debug:
            raise
        # gin appends "In call to configurable ..." lines; the first line is the error itself.
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
