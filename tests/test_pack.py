"""tools/pack_seeds.py and tools/packing_curve.py on the CPU with the smoke DMC config: seeds
packed as separate processes and MLflow runs in one sqlite store, each on its own cores, a
deadline that ends them KILLED with a checkpoint, and the packing curve's CSV."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
SMOKE = "gin/smoke/dmc_mlr.gin"
# The report counts runs of its benchmark; a smoke run's own would be dmc0k.
AS_DMC100K = "trainers.dmc.benchmark = 'dmc100k'"


def tool(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, str(ROOT / "tools" / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def runs_of(out: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiments = [e.experiment_id for e in client.search_experiments() if e.name != "reports"]
    return client.search_runs(experiments)


@pytest.mark.slow(minutes=1.0)  # subprocess runs of the smoke config
def test_two_seeds_finish_in_one_store_on_their_own_cores(tmp_path):
    out = tmp_path / "packed"
    done = tool("pack_seeds.py", "--gin", SMOKE, "--bind", AS_DMC100K, "--seeds", "0,1", "--out", str(out),
                "--no-plots")
    assert done.returncode == 0, done.stdout + done.stderr

    runs = runs_of(out)
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.tags["bindings"].endswith(f"trainers.dmc.seed = {r.data.tags['seed']}") for r in runs)
    # The child records the affinity and thread count it ran with: one core each, different ones.
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // 2)
    cpus = [r.data.tags["pack_cpus"] for r in runs]
    assert [len(c.split(",")) for c in cpus] == [share, share]
    assert {r.data.tags["pack_omp_num_threads"] for r in runs} == {str(share)}
    if cores >= 2:
        assert set(cpus[0].split(",")).isdisjoint(cpus[1].split(","))
    for seed in (0, 1):
        first = (out / "logs" / f"seed{seed}.log").read_text().splitlines()[1]
        assert first.startswith("pack: pid ") and f"OMP_NUM_THREADS {share}" in first

    summary = json.loads((out / "summary.json").read_text())
    assert summary["all_finished"] is True and summary["seeds"] == [0, 1]
    assert summary["gin"] == [SMOKE] and summary["bind"] == [AS_DMC100K]
    assert summary["report"] == str(out / "report")
    by_seed = {r["seed"]: r for r in summary["runs"]}
    assert sorted(by_seed) == [0, 1]
    ids = {r.data.tags["seed"]: r.info.run_id for r in runs}
    for seed, row in by_seed.items():
        assert row["status"] == "FINISHED" and row["returncode"] == 0 and row["run_id"] == ids[str(seed)]
        run = next(r for r in runs if r.info.run_id == row["run_id"])
        assert row["final_return"] == pytest.approx(run.data.metrics["final_return"])
        assert row["updates_per_s"] > 0 and row["wall_s"] > 0
        assert row["cpus"] == [int(c) for c in run.data.tags["pack_cpus"].split(",")]
    assert summary["aggregate_updates_per_s"] == pytest.approx(sum(r["updates_per_s"] for r in summary["runs"]))
    assert summary["devices"] and len(summary["commits"]) == 1
    table = (out / "report" / "table.md").read_text()
    assert "cheetah" in table.lower()
    for seed in (0, 1):
        assert any(line.split()[:2] == [str(seed), "FINISHED"] for line in done.stdout.splitlines())


@pytest.mark.slow(minutes=1.2)  # subprocess runs of the smoke config
def test_deadline_ends_runs_killed_with_a_checkpoint_and_no_report(tmp_path):
    out = tmp_path / "late"
    # One seed at a time: the first runs far longer than the deadline; the second never starts.
    # The first must be in its training loop when the deadline comes (to checkpoint): it took
    # 15-20 s to get there at load 3.5 on 2 cores, and 60 s leaves a busier machine room.
    done = tool("pack_seeds.py", "--gin", SMOKE, "--bind", AS_DMC100K, "--bind", "trainers.dmc.num_env_steps = 100000",
                "--seeds", "3,4", "--jobs", "1", "--out", str(out), "--deadline-s", "60", "--grace-s", "60")
    assert done.returncode == 1, done.stdout + done.stderr
    [run] = runs_of(out)
    assert run.info.status == "KILLED" and run.data.tags["seed"] == "3"
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    assert "checkpoints/latest" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["all_finished"] is False and summary["report"] is None and summary["deadline_s"] == 60
    assert [(r["seed"], r["status"], r["returncode"]) for r in summary["runs"]] == [(3, "KILLED", 130),
                                                                                   (4, "NOT_STARTED", None)]
    assert not (out / "report").exists() and not (out / "logs" / "seed4.log").exists()
    assert "no report" in done.stdout


@pytest.mark.slow(minutes=1.2)  # subprocess runs of the smoke config
def test_packing_curve_writes_one_row_per_k(tmp_path):
    # One core each: two torch threads on a busy two-core machine are slower than one.
    done = tool("packing_curve.py", "--gin", SMOKE, "--bind", "trainers.dmc.num_env_steps = 160",
                "--k", "1,2", "--cpus-per-run", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    with (tmp_path / "packing_curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["k"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["k", "cpus_per_run", "runs", "runs_with_rate", "aggregate_updates_per_s",
                             "per_run_updates_per_s", "speedup_vs_k1", "wall_s", "statuses"]
    assert [r["runs_with_rate"] for r in rows] == ["1", "2"]
    assert [r["statuses"] for r in rows] == ["FINISHED", "FINISHED FINISHED"]
    assert all(float(r["aggregate_updates_per_s"]) > 0 for r in rows)
    assert rows[0]["speedup_vs_k1"] == "1.0"
    assert float(rows[1]["speedup_vs_k1"]) == pytest.approx(
        float(rows[1]["aggregate_updates_per_s"]) / float(rows[0]["aggregate_updates_per_s"]), rel=1e-2)
    assert len(runs_of(tmp_path / "k2")) == 2


def test_cpu_slots_share_the_cores_out():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from pack_seeds import cpu_slots
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert cpu_slots(list(range(16)), 4, None) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert cpu_slots(list(range(16)), 3, None) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    assert cpu_slots([2, 3], 4, None) == [[2], [3], [2], [3]]       # fewer cores than runs: shared
    assert cpu_slots([0, 1], 2, 8) == [[0, 1], [0, 1]]             # never more than there are
    assert cpu_slots(list(range(8)), 2, 2) == [[0, 1], [2, 3]]


def test_bad_config_starts_nothing(tmp_path):
    done = tool("pack_seeds.py", "--gin", "gin/smoke/no_such.gin", "--seeds", "0,1", "--out", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("seeds", ["0,0", "a,b", ""])
def test_bad_seeds_are_a_usage_error(tmp_path, seeds):
    done = tool("pack_seeds.py", "--gin", SMOKE, "--seeds", seeds, "--out", str(tmp_path))
    assert done.returncode == 2 and "--seeds" in done.stderr
