"""Prints what ``tools/gpu_check.sh`` measured, from its output folder: the game's throughput
windows (MLflow), its projected full-run wall time, GPU utilisation, the benchmark table and
the final evaluation's wall time with and without worker processes.

    python tools/gpu_summary.py gpu_out
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

FULL_ENV_STEPS = 100_000  # Atari-100k


def tagged_runs(out: Path, prefix: str) -> tuple[object, list] | None:
    """The MLflow client and the runs tagged ``gpu_check=<prefix>*``, oldest first."""
    db = out / "mlruns.db"
    if not db.exists():
        print(f"{prefix}: no mlruns.db")
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("gpu_check", "").startswith(prefix)]
    if not runs:
        print(f"{prefix}: no run tagged gpu_check={prefix}*")
    return client, sorted(runs, key=lambda r: r.info.start_time)


def game(out: Path) -> None:
    found = tagged_runs(out, "game")
    for run in found[1] if found else []:
        one_game(found[0], run)


def evaluation(out: Path) -> None:
    """Each evaluation-alone run: its wall time (throughput/eval_seconds), the whole run's, the mean score."""
    found = tagged_runs(out, "eval")
    for run in found[1] if found else []:
        m = run.data.metrics
        print(f"{run.data.tags['gpu_check']}: status={run.info.status} evaluation "
              f"{m.get('throughput/eval_seconds', float('nan')):.1f} s of a {run_minutes(run) * 60:.0f} s run, "
              f"mean score {m.get('final_return', float('nan')):.2f}")


def one_game(client, run) -> None:
    """The throughput windows of one game run and the full game's projected wall time."""
    tags = {k: v for k, v in run.data.tags.items() if k.startswith("fast_path") or k in ("device", "game")}
    print(f"{run.data.tags['gpu_check']}: run {run.info.run_id} status={run.info.status} tags={tags}")
    ups = client.get_metric_history(run.info.run_id, "throughput/updates_per_s")
    sps = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "throughput/env_steps_per_s")}
    print(f"{'env step':>9} {'updates/s':>10} {'env steps/s':>12}")
    for m in sorted(ups, key=lambda m: m.step):
        print(f"{m.step:>9} {m.value:>10.1f} {sps.get(m.step, float('nan')):>12.1f}")
    learning = [m for m in sorted(ups, key=lambda m: m.step) if m.value > 0]
    steady = learning[2:] if len(learning) > 3 else learning[1:]  # the first windows hold compilation
    if steady:
        u = statistics.median(m.value for m in steady)
        s = statistics.median(sps[m.step] for m in steady if m.step in sps)
        last = max(m.step for m in ups)
        print(f"steady state (median of {len(steady)} windows): {u:.1f} updates/s, {s:.1f} env steps/s; "
              f"projected training wall time for {FULL_ENV_STEPS} env steps: "
              f"{(FULL_ENV_STEPS - last) / s / 60 + run_minutes(run, ups):.1f} min (+ final evaluation)")


def run_minutes(run, metrics=()) -> float:
    """Minutes from the run's start to its end; for a run that never ended (still RUNNING: its
    process died without closing it), to the last of ``metrics`` logged."""
    end = run.info.end_time or max((m.timestamp for m in metrics), default=run.info.start_time)
    return (end - run.info.start_time) / 60_000


def utilisation(out: Path) -> None:
    for path in sorted(out.glob("*util.csv")):
        rows = list(csv.reader(path.open()))[1:]
        util = [float(r[1].strip().split()[0]) for r in rows if len(r) > 2 and r[1].strip().split()[0].isdigit()]
        if util:
            tail = util[len(util) // 2:]
            print(f"GPU utilisation ({path.stem}, nvidia-smi, 1 s samples): second half mean "
                  f"{statistics.mean(tail):.0f}%, max {max(util):.0f}%, memory used at the end {rows[-1][2].strip()}")


def bench(out: Path) -> None:
    path = out / "bench.json"
    if not path.exists():
        print("bench: no bench.json")
        return
    data = json.loads(path.read_text())
    print(f"machine: {data.get('machine_info', {}).get('cpu', {}).get('brand_raw', '?')}")
    print(f"{'benchmark':<72} {'median ms':>10} {'min ms':>8} {'per s':>9}")
    for b in data["benchmarks"]:
        s = b["stats"]
        per_round = b.get("extra_info", {}).get("steps_per_round", 1)  # env benchmarks step many times a round
        print(f"{b['fullname'].split('::')[-1]:<72} {s['median'] * 1e3:>10.2f} {s['min'] * 1e3:>8.2f} "
              f"{per_round / s['median']:>9.1f}")
        info = {k: v for k, v in b.get("extra_info", {}).items() if k in ("precision", "compile", "device")}
        if info:
            print(f"{'':<4}{info}")


def main(argv: list[str]) -> None:
    out = Path(argv[1] if len(argv) > 1 else "gpu_out")
    for part in (game, utilisation, bench, evaluation):
        try:
            part(out)
        except Exception as exc:  # a summary of partial results: one broken part must not hide the rest
            print(f"{part.__name__}: could not summarise ({type(exc).__name__}: {exc})")


if __name__ == "__main__":
    main(sys.argv)
