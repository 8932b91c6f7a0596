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

Here: the arguments, ``--list`` and the dispatch. A run's course is in ``run_lifecycle.py``,
``--resume`` in ``run_resume.py``, signal handling in ``run_signals.py``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from mlr_registry.run_lifecycle import EXIT_INTERRUPTED as EXIT_INTERRUPTED
from mlr_registry.run_lifecycle import train
from mlr_registry.run_resume import resume
from mlr_registry.run_signals import Terminated as Terminated
from mlr_registry.run_signals import _clear_pending_interrupt, _enable_faulthandler, _on_interrupt

EXIT_USAGE = 2


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
    from mlr_registry.execution import Execution

    print("execution (how a run executes, set once per run; not a component):", file=out)
    for name, parameter in inspect.signature(Execution).parameters.items():
        print(f"      {name} = {parameter.default!r}", file=out)


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
