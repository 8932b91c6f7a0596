"""K seeds of one task at once on one machine (one GPU), each its own process and MLflow run.

    python tools/pack_seeds.py --gin gin/fast/dmc_mlr_fast.gin --gin gin/dmc/cartpole_swingup.gin \\
        --seeds 0,1,2,3 --out packed/cartpole --deadline-s 540

Each seed is ``python -m mlr_registry.run --gin ... --bind "trainers.dmc.seed = S"`` (the
configured trainer's seed) writing to
one sqlite store, ``OUT/mlruns.db`` (artifacts in ``OUT/mlartifacts/``), with its output in
``OUT/logs/seed<S>.log``. The machine's cores are shared out: each child runs on its own
``--cpus-per-run`` cores (CPU affinity) with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` set to
that count; the child records the affinity and thread count it got as the run's tags
``pack_cpus`` and ``pack_omp_num_threads`` (and on its log's first line). Every child shares
the GPUs the packer sees.

At ``--deadline-s`` seconds after the packer's start no further seed starts and the running ones get
SIGTERM: each writes a checkpoint at the end of its current step and ends KILLED (resumable
with ``python -m mlr_registry.run --resume RUN_ID``); one still alive ``--grace-s`` later is
killed. KILLED runs are not results. At the end the packer prints one line per seed (status,
wall time, final return, updates/s) and writes ``OUT/summary.json``; when every run FINISHED it
runs ``python -m mlr_registry.report`` on the store into ``OUT/report/``. Exit status: 0 when
every run finished and the report was written, 2 for an error in the config (nothing started),
1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

RATE_METRIC = "throughput/updates_per_s"
FINAL_METRIC = "final_return"
RUN_ID_IN_LOG = re.compile(r"MLflow run ([0-9a-f]{32})\b")
POLL_S = 0.5
# Runs in the child: record the CPU affinity and thread count this process got (its log's first
# line and two MLflow tags), then be ``python -m mlr_registry.run`` with the same arguments.
CHILD_CODE = """\
import os, runpy, sys
cpus = ','.join(str(c) for c in sorted(os.sched_getaffinity(0)))
omp = os.environ.get('OMP_NUM_THREADS', '')
print(f'pack: pid {os.getpid()} cpus {cpus} OMP_NUM_THREADS {omp}', file=sys.stderr, flush=True)
sys.argv = ['mlr_registry.run', *sys.argv[1:], '--tag', f'pack_cpus={cpus}', '--tag', f'pack_omp_num_threads={omp}']
runpy.run_module('mlr_registry.run', run_name='__main__', alter_sys=True)
"""


@dataclass
class SeedResult:
    """How one seed's process and MLflow run ended. ``status`` is the run's MLflow status
    (FINISHED, KILLED, FAILED, RUNNING), else CONFIG_ERROR (exit 2, no run), FAILED (no run)
    or NOT_STARTED (the deadline came first)."""

    seed: int
    status: str = "NOT_STARTED"
    returncode: int | None = None
    run_id: str | None = None
    wall_s: float | None = None
    final_return: float | None = None
    updates_per_s: float | None = None    # median of the run's logged windows
    cpus: list[int] = field(default_factory=list)
    log: str = ""
    device: str = ""
    commit: str = ""


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2,3") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected distinct integers, e.g. 0,1,2,3")
    return seeds


def available_cpus() -> list[int]:
    """The cores this process may run on (its affinity), sorted."""
    return sorted(os.sched_getaffinity(0))


def cpu_slots(cpus: Sequence[int], jobs: int, per_run: int | None) -> list[list[int]]:
    """``jobs`` sets of ``per_run`` cores (default: an equal share, at least one each; at most
    all of them), disjoint while there are enough cores, wrapping round (shared) where there are not."""
    per_run = min(per_run or max(1, len(cpus) // jobs), len(cpus))
    return [[cpus[(j * per_run + i) % len(cpus)] for i in range(per_run)] for j in range(jobs)]


def prepare_store(gin: Sequence[str], bind: Sequence[str], uri: str) -> str:
    """Parse the config (an error in it stops the packer before any seed starts), create the
    store and the run's experiment in it (seeds starting at once on a new sqlite store would race
    to create its tables and the experiment), and return the trainer's seed parameter
    (``trainers.dmc.seed``)."""
    import inspect

    import gin as gin_lib

    from mlr_registry import config, registry
    from mlr_registry.sweep.grid import trainer_selector
    from mlr_registry.tracking.mlflow_run import TrackedRun
    from mlr_registry.training.experiment import experiment

    registry.load_all()
    config.parse(list(gin), list(bind))
    try:
        name = str(gin_lib.query_parameter("experiment.name"))
    except ValueError:
        name = str(inspect.signature(experiment).parameters["name"].default)
    TrackedRun(uri, experiment=name)._experiment_id()
    return f"{trainer_selector()}.seed"


def seed_command(gin: Sequence[str], bind: Sequence[str], seed_param: str, seed: int, tracking_uri: str,
                 tags: Sequence[str] = ()) -> list[str]:
    """The child's command line: ``mlr_registry.run`` behind :data:`CHILD_CODE`."""
    args = [a for g in gin for a in ("--gin", g)]
    args += [a for b in (*bind, f"{seed_param} = {seed}") for a in ("--bind", b)]
    args += [a for t in tags for a in ("--tag", t)]
    return [sys.executable, "-c", CHILD_CODE, *args, "--tracking-uri", tracking_uri]


class Child:
    """One seed's process: its own session (a Ctrl-C at the terminal reaches the packer, which
    stops the children with SIGTERM) on its own cores."""

    def __init__(self, result: SeedResult, args: list[str], env: dict[str, str], log_path: Path):
        self.result = result
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("w")
        self._log.write("$ " + shlex.join(a if a != CHILD_CODE else "<pack child>" for a in args) + "\n")
        self._log.flush()
        cpus = set(result.cpus)
        self.start = time.monotonic()
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        self.terminated_at: float | None = None

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and self.result.returncode is None:
            self.result.returncode = code
            self.result.wall_s = time.monotonic() - self.start
            self._log.close()
        return code

    def terminate(self) -> None:
        if self.proc.poll() is None and self.terminated_at is None:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated_at = time.monotonic()

    def kill(self) -> None:
        """SIGKILL the child's whole session (its evaluation workers included)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_packed(gin: Sequence[str], bind: Sequence[str], seeds: Sequence[int], out: Path, *,
               jobs: int | None = None, cpus_per_run: int | None = None, deadline_s: float | None = None,
               grace_s: float = 120.0, tags: Sequence[str] = (), echo=print) -> list[SeedResult]:
    """Run every seed (``jobs`` at a time, default all) into ``out/mlruns.db``; stop at the
    deadline. Returns one :class:`SeedResult` per seed, in the order given, read back from MLflow."""
    start = time.monotonic()  # the deadline counts the config's check and the store's creation too
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(out)
    seed_param = prepare_store(gin, bind, uri)
    jobs = min(jobs or len(seeds), len(seeds))
    slots = cpu_slots(available_cpus(), jobs, cpus_per_run)
    threads = str(len(slots[0]))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    results = [SeedResult(seed=s, log=str(out / "logs" / f"seed{s}.log")) for s in seeds]
    queue, running, free = list(results), {}, list(range(jobs))
    try:
        while queue or running:
            past_deadline = deadline_s is not None and time.monotonic() - start >= deadline_s
            while queue and free and not past_deadline:
                result, slot = queue.pop(0), free.pop(0)
                result.cpus = slots[slot]
                command = seed_command(gin, bind, seed_param, result.seed, uri, tags)
                running[slot] = Child(result, command, env, Path(result.log))
                echo(f"seed {result.seed}: started (pid {running[slot].proc.pid}, cpus {result.cpus})")
            if past_deadline:
                queue.clear()
                for child in running.values():
                    if child.terminated_at is None:
                        echo(f"seed {child.result.seed}: deadline ({deadline_s:g} s), SIGTERM")
                    child.terminate()
                    if child.terminated_at is not None and time.monotonic() - child.terminated_at > grace_s:
                        child.kill()
            for slot, child in list(running.items()):
                if child.poll() is not None:
                    echo(f"seed {child.result.seed}: exit {child.result.returncode} after {child.result.wall_s:.0f} s")
                    del running[slot]
                    free.append(slot)
            time.sleep(POLL_S)
    finally:  # Ctrl-C or an error in the packer: the children end KILLED, not orphaned
        for child in running.values():
            child.terminate()
        for child in running.values():
            try:
                child.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                child.kill()
            child.poll()
    for result in results:
        read_back(result, uri)
    return results


def tracking_uri(out: Path) -> str:
    return f"sqlite:///{(out / 'mlruns.db').resolve()}"


def read_back(result: SeedResult, uri: str) -> None:
    """Fill ``result`` from its MLflow run (found by the id its log prints)."""
    if result.returncode is None:
        return
    log = Path(result.log)
    found = RUN_ID_IN_LOG.findall(log.read_text(errors="replace")) if log.exists() else []
    if not found:
        result.status = "CONFIG_ERROR" if result.returncode == 2 else "FAILED"
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    result.run_id = found[0]
    run = client.get_run(result.run_id)
    result.status = run.info.status
    result.final_return = run.data.metrics.get(FINAL_METRIC)
    rates = [m.value for m in client.get_metric_history(result.run_id, RATE_METRIC)]
    result.updates_per_s = statistics.median(rates) if rates else None
    result.device = run.data.tags.get("device_name", "")
    result.commit = run.data.tags.get("git_commit", "")


def summary_lines(results: Sequence[SeedResult]) -> list[str]:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = [f"{'seed':>5}  {'status':<12} {'wall s':>7}  {'final return':>12}  {'updates/s':>9}  run"]
    for r in results:
        lines.append(f"{r.seed:>5}  {r.status:<12} {num(r.wall_s, '7.0f')}  {num(r.final_return, '12.1f')}  "
                     f"{num(r.updates_per_s, '9.2f')}  {r.run_id or '-'}")
    rates = [r.updates_per_s for r in results if r.updates_per_s is not None]
    lines.append(f"aggregate updates/s: {sum(rates):.2f} over {len(rates)} runs")
    return lines


def aggregate_rate(results: Sequence[SeedResult]) -> float:
    return sum(r.updates_per_s for r in results if r.updates_per_s is not None)


def write_summary(path: Path, results: Sequence[SeedResult], **extra) -> dict:
    finished = all(r.status == "FINISHED" for r in results)
    data = {**extra, "all_finished": finished, "aggregate_updates_per_s": aggregate_rate(results),
            "devices": sorted({r.device for r in results if r.device}),
            "commits": sorted({r.commit for r in results if r.commit}),
            "runs": [asdict(r) for r in results]}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def run_report(uri: str, out: Path, benchmark: str, plots: bool) -> int:
    """``python -m mlr_registry.report`` on the store (its own output goes to ``out``.log)."""
    args = [sys.executable, "-m", "mlr_registry.report", "--benchmark", benchmark, "--tracking-uri", uri,
            "--out", str(out), *(() if plots else ("--no-plots",))]
    with out.with_suffix(".log").open("w") as log:
        return subprocess.run(args, stdout=log, stderr=subprocess.STDOUT).returncode


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python tools/pack_seeds.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--gin", action="append", required=True, metavar="FILE", help="gin file (repeat to compose)")
    p.add_argument("--bind", action="append", default=[], metavar="BINDING", help="gin binding passed to every seed")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="MLflow tag on every run")
    p.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2, 3], help="comma-separated seeds (default 0,1,2,3)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="holds mlruns.db, mlartifacts/, logs/, summary.json and report/")
    p.add_argument("--jobs", type=int, default=None, help="seeds running at once (default: all of them)")
    p.add_argument("--cpus-per-run", type=int, default=None,
                   help="cores per seed (default: the cores this process may use // jobs, at least 1)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="seconds after the start at which running seeds get SIGTERM (end KILLED with a "
                        "checkpoint) and no more start (default: none)")
    p.add_argument("--grace-s", type=float, default=120.0,
                   help="seconds a seed has after SIGTERM before it is killed (default 120)")
    p.add_argument("--benchmark", default="dmc100k", help="the report's --benchmark (default dmc100k)")
    p.add_argument("--no-report", action="store_true", help="do not run the report")
    p.add_argument("--no-plots", action="store_true", help="the report writes tables and CSVs only")
    args = p.parse_args(argv)
    for name in ("jobs", "cpus_per_run"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected an integer >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out
    from mlr_registry.errors import MLRError

    try:
        results = run_packed(args.gin, args.bind, args.seeds, out, jobs=args.jobs, cpus_per_run=args.cpus_per_run,
                             deadline_s=args.deadline_s, grace_s=args.grace_s, tags=args.tag)
    except MLRError as exc:  # the config, checked before any seed starts
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    for line in summary_lines(results):
        print(line)
    finished = all(r.status == "FINISHED" for r in results)
    report = None
    if finished and not args.no_report:
        code = run_report(tracking_uri(out), out / "report", args.benchmark, plots=not args.no_plots)
        report = str(out / "report") if code == 0 else None
        print(f"report: {report}" if report else f"report failed (exit {code}): see {out / 'report.log'}")
    elif not finished:
        print("not every run FINISHED: no report (KILLED runs resume with python -m mlr_registry.run --resume RUN_ID)")
    write_summary(out / "summary.json", results, gin=args.gin, bind=args.bind, seeds=args.seeds,
                  tracking_uri=tracking_uri(out), cpus_per_run=max(len(r.cpus) for r in results) or None,
                  deadline_s=args.deadline_s, report=report,
                  date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    print(f"wrote {out / 'summary.json'}")
    return 0 if finished and (report or args.no_report) else 1


if __name__ == "__main__":
    sys.exit(main())
