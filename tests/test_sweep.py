"""Sweeps: the grid's trials and their identities, the retry of a failed trial from its run,
and a smoke sweep of 2 games x 2 seeds on a local Ray instance that the report aggregates."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gin
import pytest

from mlr_registry import registry
from mlr_registry.errors import ConfigError
from mlr_registry.sweep import grid
from mlr_registry.sweep.trial import TrialSpec, find_run, run_trial

REPO = Path(__file__).resolve().parent.parent
SMOKE = str(REPO / "gin" / "smoke" / "atari_mlr.gin")
# The budget of tests/test_gin_configs.py: a trial is mostly interpreter start-up.
TINY = ["trainers.atari100k.num_env_steps = 48", "trainers.atari100k.learning_starts = 40",
        "trainers.atari100k.eval_episodes = 1", "trainers.atari100k.eval_max_steps = 5",
        "trainers.atari100k.batch_size = 2", "encoders.nature_cnn.channels = (2, 4, 4)"]


@pytest.fixture(autouse=True)
def _registry():
    registry.load_all()
    import mlr_registry.training.experiment  # noqa: F401 - registers `experiment`
    yield
    gin.clear_config()


# ---- the grid -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, values", [
    ("[alien,pong]", ["'alien'", "'pong'"]),
    ("alien, 'pong'", ["'alien'", "'pong'"]),
    ("[1e-4, 3]", ["0.0001", "3"]),
    ("[(2, 4, 4), (4, 8, 8)]", ["(2, 4, 4)", "(4, 8, 8)"]),
    ("[@maskers.tube(), True]", ["@maskers.tube()", "True"]),
])
def test_grid_values_become_gin_literals(text, values):
    assert [grid.to_gin_literal(v) for v in grid.split_values(text)] == values


def test_short_names_resolve_to_the_full_gin_parameter():
    axis = grid.parse_grid("atari.game=[alien,pong]")
    assert (axis.selector, axis.param, axis.values) == ("envs.atari.game", "game", ("'alien'", "'pong'"))
    # trainers.dmc and envs.dmc both match `dmc`; only envs.dmc has a task parameter.
    tasks = grid.parse_grid("dmc.task=[cheetah-run]")
    assert tasks.selector == "envs.dmc.task"
    assert len(tasks.overlays) == 1 and tasks.overlays[0][0].endswith("gin/dmc/cheetah_run.gin")


@pytest.mark.parametrize("text, message", [
    ("dmc.seed=[1]", "write one of envs.dmc.seed, trainers.dmc.seed"),
    ("atari.gamez=[pong]", "has no parameter 'gamez'"),
    ("game=[pong]", "is not a gin parameter"),
    ("atari.game", "expected PARAMETER=[V1,V2,...]"),
])
def test_bad_grid_names_the_problem(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        grid.parse_grid(text)


def test_paper_sets():
    games = grid.games_axis("atari26")
    assert len(games.values) == 26 and "'up_n_down'" in games.values
    tasks = grid.tasks_axis("dmc6")
    assert len(tasks.values) == 6
    assert all(len(o) == 1 and Path(o[0]).is_file() for o in tasks.overlays)
    assert grid.games_axis("alien,pong").values == ("'alien'", "'pong'")


def test_trials_are_the_product_with_stable_identities():
    axes = [grid.games_axis("alien,pong"), grid.seeds_axis(2, [SMOKE], TINY)]
    trials = grid.expand([SMOKE], TINY, axes)
    assert [t.label for t in trials] == ["game=alien seed=0", "game=alien seed=1", "game=pong seed=0",
                                         "game=pong seed=1"]
    assert len({t.trial_id for t in trials}) == 4
    assert trials[3].bindings[-2:] == ("envs.atari.game = 'pong'", "trainers.atari100k.seed = 1")
    assert {t.experiment for t in trials} == {"smoke"}
    assert [t.trial_id for t in grid.expand([SMOKE], TINY, axes)] == [t.trial_id for t in trials]
    changed = grid.expand([SMOKE], [*TINY, "agents.rainbow.hidden_size = 16"], axes)
    assert not {t.trial_id for t in changed} & {t.trial_id for t in trials}


def test_a_rerun_counts_the_trials_that_finished_before():
    """A re-run skips the finished trials; the summary (and the parent run's trials_finished)
    used to count only this invocation's, so re-running a finished sweep reset it 4 -> 0."""
    from types import SimpleNamespace

    from mlr_registry.sweep.cli import _summary
    from mlr_registry.sweep.trial import TrialResult

    trials = [grid.Trial((SMOKE,), (), f"seed={i}", f"id{i}", "smoke") for i in range(4)]
    before = {t.trial_id: SimpleNamespace(info=SimpleNamespace(run_id=f"old{i}")) for i, t in enumerate(trials[:3])}
    results = [TrialResult(trials[3], "FINISHED", "new3", 1, 0, 5.0)]
    text, counts = _summary(results, before, trials)
    assert counts == {"finished": 4, "finished_now": 1, "skipped": 3, "failed": 0, "killed": 0, "not_run": 0}
    assert text.splitlines()[-1] == "4 trials: 4 finished (1 now, 3 before: skipped), 0 failed, 0 killed, 0 not run"
    every = {t.trial_id: SimpleNamespace(info=SimpleNamespace(run_id="old")) for t in trials}
    assert _summary([], every, trials)[1]["finished"] == 4
    failed = [TrialResult(trials[3], "FAILED", "new3", 2, 1, 5.0)]
    assert _summary(failed, before, trials)[1] == {"finished": 3, "finished_now": 0, "skipped": 3, "failed": 1,
                                                  "killed": 0, "not_run": 0}


@pytest.mark.parametrize("text, message", [
    ("atari.gamez=[pong]", "has no parameter 'gamez'; did you mean 'game'?"),
    ("trainers.atari100k.num_env_step=[100]", "did you mean 'num_env_steps'?"),
    ("maskers.cubee.mask_ratio=[0.5]", "unknown masker 'cubee'; closest: cube"),
])
def test_a_grid_typo_gets_the_run_cli_suggestion(text, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        grid.parse_grid(text)


def test_task_overlay_follows_the_first_file():
    base = str(REPO / "gin" / "dmc_mlr.gin")
    budget = str(REPO / "gin" / "dmc500k.gin")
    (trial,) = grid.expand([base, budget], [], [grid.tasks_axis("walker-walk")])
    assert trial.gin_files[0] == base and trial.gin_files[2] == budget
    assert trial.gin_files[1].endswith("gin/dmc/walker_walk.gin")
    assert gin.query_parameter("envs.dmc.action_repeat") == 2
    with pytest.raises(ConfigError, match="swept twice"):
        grid.expand([base], [], [grid.tasks_axis("walker-walk"), grid.parse_grid("envs.dmc.task=[cheetah-run]")])


def test_an_ablation_keeps_its_values_on_every_task():
    """An ablation of a value the task files also set (τ, block size) holds on every task: it
    comes after the base, and each trial's task overlay goes between them, so walker-walk gets
    τ = 0.01, not its own 0.1, and the trial is not the plain MLR one. Its other per-task values
    stay the task's."""
    ablation = str(REPO / "gin" / "ablations" / "target_tau_001.gin")
    plain = str(REPO / "gin" / "dmc_mlr.gin")
    (trial,) = grid.expand([plain, ablation], [], [grid.tasks_axis("walker-walk")])
    assert trial.gin_files[0] == plain and trial.gin_files[2] == ablation
    assert trial.gin_files[1].endswith("gin/dmc/walker_walk.gin")
    assert trial.bindings == ("envs.dmc.task = 'walker-walk'",)
    assert gin.query_parameter("losses.mlr.target_tau") == 0.01
    assert gin.query_parameter("envs.dmc.action_repeat") == 2 and gin.query_parameter("agents.sac.critic_lr") == 0.001
    (baseline,) = grid.expand([plain], [], [grid.tasks_axis("walker-walk")])
    assert gin.query_parameter("losses.mlr.target_tau") == 0.1
    assert baseline.bindings == ("envs.dmc.task = 'walker-walk'",)
    assert baseline.trial_id != trial.trial_id
    grid.expand([plain, str(REPO / "gin/ablations/block_size_4.gin")], [], [grid.tasks_axis("walker-walk")])
    assert gin.query_parameter("%BLOCK_SIZE") == 4  # walker-walk's own is 8


def test_a_first_file_that_includes_its_base_keeps_its_values_on_every_task(tmp_path):
    """A user's file that includes gin/dmc_mlr.gin and sets τ, given first: the sweep re-binds
    what it sets after each task overlay (a macro such as BLOCK_SIZE too)."""
    own = tmp_path / "my_tau.gin"
    own.write_text(f"include '{REPO / 'gin' / 'dmc_mlr.gin'}'\nlosses.mlr.target_tau = 0.01\nBLOCK_SIZE = 2\n")
    (trial,) = grid.expand([str(own)], [], [grid.tasks_axis("walker-walk")])
    assert trial.bindings[:2] == ("BLOCK_SIZE = 2", "losses.mlr.target_tau = 0.01")
    assert gin.query_parameter("losses.mlr.target_tau") == 0.01 and gin.query_parameter("%BLOCK_SIZE") == 2
    assert gin.query_parameter("envs.dmc.action_repeat") == 2
    # a later file that includes a task file (here cheetah-run's, through gin/dmc_mlr.gin) would
    # undo the overlay: refused, naming the fix
    plain = str(REPO / "gin" / "dmc_mlr.gin")
    with pytest.raises(ConfigError, match="includes the task file gin/dmc/cheetah_run.gin.*as the first --gin file"):
        grid.expand([plain, str(own)], [], [grid.tasks_axis("walker-walk")])


@pytest.mark.parametrize("files, message", [
    (["gin/ablations/mask_ratio_025_dmc.gin"], "mask_ratio_025_dmc.gin is gone: .* write --gin gin/dmc_mlr.gin "
     "--gin gin/ablations/mask_ratio_025.gin"),
    (["gin/ablations/mask_ratio_025.gin"], "is a diff on a base config and includes none: give the base first: "
     "--gin gin/atari_mlr.gin --gin gin/ablations/mask_ratio_025.gin"),
])
def test_a_sweep_refuses_an_ablation_out_of_place_in_one_line(files, message):
    with pytest.raises(ConfigError, match=message):
        grid.expand([str(REPO / f) for f in files], [], [grid.tasks_axis("walker-walk")])


# ---- one trial: retry from the run's checkpoint ----------------------------------------------

# Stands in for `python -m mlr_registry.run` without importing anything heavy: it records its
# arguments and OMP_NUM_THREADS in calls.txt and exits as FAKE_MODE says. The MLflow runs it
# would have made are made by the tests (_failed_run).
FAKE_RUN = '''
import os, sys
from pathlib import Path
args = sys.argv[1:]
here = Path(os.environ["FAKE_DIR"])
with open(here / "calls.txt", "a") as f:
    f.write(" ".join(args) + "|OMP=" + os.environ.get("OMP_NUM_THREADS", "") + "\\n")
calls = len((here / "calls.txt").read_text().splitlines())
mode, resuming = os.environ["FAKE_MODE"], "--resume" in args
if mode == "usage" or (mode == "no_checkpoint" and resuming):
    print("error: bad input"); sys.exit(2)
if mode == "always_crash" or (mode == "crash_then_resume" and not resuming):
    print("crashed on purpose"); sys.exit(1)
if mode == "no_run" and calls == 1:
    print("died before creating its run"); sys.exit(1)
print("finished"); sys.exit(0)
'''
URI_OF = "sqlite:///{}"


def _spec(tmp_path: Path, monkeypatch, mode: str, resume_run: str | None = None) -> TrialSpec:
    script = tmp_path / "fake_run.py"
    script.write_text(textwrap.dedent(FAKE_RUN))
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))
    monkeypatch.setenv("FAKE_MODE", mode)
    trial = grid.Trial((SMOKE,), ("envs.atari.game = 'pong'",), "game=pong", "abc123", "smoke")
    return TrialSpec(trial, URI_OF.format(tmp_path / "mlruns.db"), (("sweep_trial", "abc123"),), str(tmp_path),
                     str(tmp_path / "logs"), num_cpus=2, command=(sys.executable, str(script)), resume_run=resume_run)


def _failed_run(tmp_path: Path, during_attempt: bool) -> str:
    """A FAILED run tagged as trial abc123: as the crashed attempt that follows leaves it (its
    start time then lies ahead), or as an earlier sweep left it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=URI_OF.format(tmp_path / "mlruns.db"))
    start_ms = int(time.time() * 1000) + (60_000 if during_attempt else -60_000)
    run = client.create_run(client.create_experiment("smoke", artifact_location=(tmp_path / "art").as_uri()),
                            start_time=start_ms, tags={"sweep_trial": "abc123"})
    client.set_terminated(run.info.run_id, "FAILED")
    return run.info.run_id


def _calls(tmp_path: Path) -> list[str]:
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    (tmp_path / "calls.txt").unlink()
    return calls


def test_a_failed_trial_is_resumed_once_from_its_run(tmp_path, monkeypatch):
    run_id = _failed_run(tmp_path, during_attempt=True)
    result = run_trial(_spec(tmp_path, monkeypatch, "crash_then_resume"))
    first, second = _calls(tmp_path)
    assert "--tag sweep_trial=abc123" in first and "--bind envs.atari.game = 'pong'" in first
    assert first.endswith("|OMP=2")
    assert second == f"--resume {run_id} --tracking-uri {URI_OF.format(tmp_path / 'mlruns.db')}|OMP=2"
    assert (result.status, result.attempts, result.returncode, result.run_id) == ("FINISHED", 2, 0, run_id)
    assert [Path(p).name for p in result.logs] == ["game=pong.abc123.attempt1.log", "game=pong.abc123.attempt2.log"]
    assert "crashed on purpose" in Path(result.logs[0]).read_text()
    # One retry only: a trial that keeps failing is reported after its second attempt.
    import dataclasses

    result = run_trial(dataclasses.replace(_spec(tmp_path, monkeypatch, "always_crash"), retries=1))
    assert (result.status, result.attempts) == ("FAILED", 2) and len(_calls(tmp_path)) == 2


def test_input_errors_are_not_retried_and_runless_failures_start_afresh(tmp_path, monkeypatch):
    result = run_trial(_spec(tmp_path, monkeypatch, "usage"))
    assert (result.status, result.attempts, result.run_id) == ("CONFIG_ERROR", 1, None)
    assert "error: bad input" in result.tail and len(_calls(tmp_path)) == 1
    _failed_run(tmp_path, during_attempt=False)  # an earlier sweep's run must not be resumed
    result = run_trial(_spec(tmp_path, monkeypatch, "no_run"))
    first, second = _calls(tmp_path)
    assert first == second and "--resume" not in second
    assert (result.status, result.attempts) == ("FINISHED", 2)


def test_a_run_left_by_an_earlier_sweep_is_resumed_or_else_started_afresh(tmp_path, monkeypatch):
    run_id = _failed_run(tmp_path, during_attempt=False)
    result = run_trial(_spec(tmp_path, monkeypatch, "crash_then_resume", resume_run=run_id))
    assert _calls(tmp_path) == [f"--resume {run_id} --tracking-uri {URI_OF.format(tmp_path / 'mlruns.db')}|OMP=2"]
    assert (result.status, result.attempts, result.run_id) == ("FINISHED", 1, run_id)
    result = run_trial(_spec(tmp_path, monkeypatch, "no_checkpoint", resume_run=run_id))
    first, second = _calls(tmp_path)
    assert first.startswith(f"--resume {run_id}") and second.startswith("--gin")  # cannot resume: afresh
    assert (result.status, result.attempts) == ("FINISHED", 2)
    # The fresh start's run is its own, never the earlier one (the fake made none, nor printed one).
    assert result.run_id is None


# The real run CLI, killed (SIGKILL, like the OOM killer: the run stays RUNNING) as soon as its
# first checkpoint exists; `--resume` runs the real CLI untouched.
KILL_AFTER_CHECKPOINT = '''
import subprocess, sys, time
from pathlib import Path
cmd = [sys.executable, "-m", "mlr_registry.run", *sys.argv[1:]]
if "--resume" in cmd:
    sys.exit(subprocess.call(cmd))
proc = subprocess.Popen(cmd)
while proc.poll() is None:
    if any(Path.cwd().rglob("checkpoints/latest")):
        proc.kill()
        proc.wait()
        print("killed after the first checkpoint")
        sys.exit(1)
    time.sleep(0.1)
sys.exit(proc.returncode)
'''


def test_a_killed_run_is_retried_from_its_checkpoint_by_the_real_cli(tmp_path, monkeypatch):
    script = tmp_path / "kill_after_checkpoint.py"
    script.write_text(textwrap.dedent(KILL_AFTER_CHECKPOINT))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    budget = [*TINY[1:], "trainers.atari100k.num_env_steps = 120", "trainers.atari100k.checkpoint_every = 20"]
    (trial,) = grid.expand([SMOKE], budget, [grid.games_axis("pong")])
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    from mlr_registry.tracking.mlflow_run import TrackedRun

    monkeypatch.chdir(tmp_path)  # the store's default artifact root, ./mlruns, is relative to it
    TrackedRun(uri, experiment=trial.experiment)._experiment_id()  # as the sweep driver does
    spec = TrialSpec(trial, uri, (("sweep_trial", trial.trial_id),), str(tmp_path), str(tmp_path / "logs"),
                     command=(sys.executable, str(script)))
    result = run_trial(spec)
    assert (result.status, result.attempts) == ("FINISHED", 2), result.tail
    first, second = (Path(p).read_text() for p in result.logs)
    assert "killed after the first checkpoint" in first
    assert f"--resume {result.run_id}" in second.splitlines()[0]
    assert f"resuming MLflow run {result.run_id} from step" in second
    run = find_run(uri, trial.experiment, trial.trial_id)
    assert run.info.run_id == result.run_id and run.info.status == "FINISHED"
    assert "final_return" in run.data.metrics and int(run.data.tags["resumed_from_step"]) >= 20


# ---- a smoke sweep on local Ray ---------------------------------------------------------------

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _sweep_args(tmp_path: Path) -> list[str]:
    args = ["--gin", SMOKE, "--grid", "atari.game=[alien,pong]", "--seeds", "2", "--num-cpus", "2",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--name", "smoke-sweep"]
    for binding in TINY:
        args += ["--bind", binding]
    return args


def _sweep(tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlr_registry.sweep", *_sweep_args(tmp_path)], cwd=tmp_path,
                          env=_env(), capture_output=True, text=True, timeout=600)


def test_smoke_sweep_on_local_ray_is_aggregated_by_the_report(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    start = time.monotonic()
    done = _sweep(tmp_path)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 trials: 4 finished (4 now, 0 before: skipped)" in done.stdout, done.stdout

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_finished"] == 4
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    assert sorted((r.data.tags["env"], r.data.tags["seed"]) for r in children) == [
        ("alien", "0"), ("alien", "1"), ("pong", "0"), ("pong", "1")]
    assert {r.data.tags["sweep"] for r in children} == {"smoke-sweep"}
    assert len({r.data.tags["sweep_trial"] for r in children}) == 4
    # named after what they run (the sweep's own bindings are in its parent's name, not theirs)
    assert parent.info.run_name == "sweep:smoke-sweep"
    assert sorted(r.info.run_name for r in children) == [
        f"mlr · smoke · {game} · seed {seed}" for game in ("alien", "pong") for seed in (0, 1)]
    assert all(client.list_artifacts(r.info.run_id, "logs") for r in children)

    # The report command the sweep prints aggregates exactly these runs: 2 games x 2 seeds.
    from mlr_registry.report import cli as report_cli

    (command,) = [line.strip() for line in done.stdout.splitlines() if "mlr_registry.report" in line]
    assert "--tag sweep=smoke-sweep" in command
    out = tmp_path / "report"
    assert report_cli.main([*shlex.split(command)[3:], "--no-plots", "--no-mlflow", "--out", str(out)]) == 0
    with (out / "per_game.csv").open() as f:
        rows = {r["task"]: r for r in csv.DictReader(f) if r["n_seeds"] != "0"}
    assert sorted(rows) == ["alien", "pong"] and {r["n_seeds"] for r in rows.values()} == {"2"}

    # Run again (in-process: nothing starts Ray): every trial finished before, so all are skipped
    # and the parent run is reopened, not duplicated.
    from mlr_registry.sweep import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(_sweep_args(tmp_path)) == 0
    printed = capsys.readouterr()
    assert "4 trials: 4 finished (0 now, 4 before: skipped)" in printed.out and "(reopened)" in printed.err
    assert len(client.search_runs([exp.experiment_id])) == len(runs)
    # The reopened parent's summary still counts the 4 finished trials (it used to log 0).
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["trials_finished"] == 4 and parent.data.metrics["trials_skipped"] == 4
    print(f"smoke sweep wall time: {elapsed:.1f} s")


@pytest.fixture
def ray_cluster(tmp_path):
    """A real Ray cluster started by `ray start --head --block` (2 CPUs, 1 declared GPU) in a
    folder of its own; stopped by SIGINT to its process group (not `ray stop`, which would stop
    every Ray instance on the machine, other tests' included). Yields its address."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    head = tmp_path / "head"
    head.mkdir()
    log = head / "ray.log"
    proc = subprocess.Popen(["ray", "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--num-gpus", "1", "--include-dashboard", "false", "--disable-usage-stats"],
                            cwd=head, env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield f"127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sweep_on_a_running_ray_cluster_with_gpu_shares(tmp_path, ray_cluster):
    from mlflow.tracking import MlflowClient

    from mlr_registry.sweep import cli

    args = ["--gin", SMOKE, "--seeds", "2", "--address", ray_cluster, "--gpus-per-trial", "0.5",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--name", "cluster-sweep"]
    for binding in TINY:
        args += ["--bind", binding]
    done = subprocess.run([sys.executable, "-m", "mlr_registry.sweep", *args], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 trials: 2 finished (2 now, 0 before: skipped)" in done.stdout, done.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    children = [r for r in runs if r.data.tags.get("sweep_role") != "parent"]
    assert sorted(r.data.tags["seed"] for r in children) == ["0", "1"]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert not (tmp_path / "head" / "mlruns.db").exists()  # the trials used the driver's paths

    # Without --address the sweep starts its own instance, even beside a running cluster (a
    # plain ray.init() would join the cluster and refuse num_cpus there).
    ray = cli._init_ray(cli.parse_args(["--gin", SMOKE, "--num-cpus", "1"]))
    try:
        assert ray.cluster_resources().get("CPU") == 1 and "GPU" not in ray.cluster_resources()
    finally:
        ray.shutdown()


def test_dry_run_lists_the_trials_and_creates_no_tracking_store(tmp_path):
    from conftest import REPO

    db = tmp_path / "absent.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "mlr_registry.sweep", "--gin", str(REPO / "gin/smoke/atari_mlr.gin"),
                          "--seeds", "2", "--dry-run", "--tracking-uri", f"sqlite:///{db}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("run ")]
    assert len(lines) == 2 and "trainers.atari100k.seed = 1" in lines[1]
    assert "2 trials, 0 finished before" in out.stderr
    assert not db.exists()  # nothing ran before, so nothing was opened (or created)


@pytest.mark.parametrize("error, status", [(RuntimeError("the Ray cluster went away"), "FAILED"),
                                           (KeyboardInterrupt(), "KILLED")])
def test_the_parent_run_ends_even_when_the_sweep_breaks(tmp_path, monkeypatch, error, status):
    """Whatever stops the sweep after its parent run started (Ray failing, Ctrl-C), the parent
    ends FAILED or KILLED instead of staying RUNNING in MLflow."""
    from mlflow.tracking import MlflowClient

    from mlr_registry.sweep import cli

    def broken(*args, **kwargs):
        raise error

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_init_ray", lambda args: None)
    monkeypatch.setattr(cli, "run_on_ray", broken)
    with pytest.raises(type(error)):
        cli.main(_sweep_args(tmp_path))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert parent.data.tags["sweep_role"] == "parent" and parent.info.status == status


def test_a_grid_sweep_prints_one_report_command_per_variant():
    """Each value of a grid over a non-env parameter is its own configuration, so the sweep
    prints one report per value (by its sweep_variant tag) instead of one that would clash."""
    from types import SimpleNamespace

    from mlr_registry.sweep import cli

    trial = grid.Trial(("gin/atari_mlr.gin",), (), "mask_ratio=0.25 game=pong seed=3", "x", "atari100k")
    assert trial.variant == "mask_ratio=0.25"
    assert grid.Trial((), (), "game=pong seed=1", "y", "atari100k").variant == "default"

    def run(variant):
        tags = {"benchmark": "atari100k", cli.SWEEP_TAG: "s", cli.VARIANT_TAG: variant}
        return SimpleNamespace(info=SimpleNamespace(experiment_id="1"), data=SimpleNamespace(tags=tags))

    client = SimpleNamespace(get_experiment=lambda _: SimpleNamespace(name="atari100k"))
    uri = "sqlite:///x.db"
    runs = [run("mask_ratio=0.25"), run("mask_ratio=0.75"), run("mask_ratio=0.25")]
    two = cli.report_commands(client, runs, uri, "s")
    assert [c.split("--tag sweep=s ")[1].split(" --tracking-uri")[0] for c in two] == [
        "--tag sweep_variant=mask_ratio=0.25", "--tag sweep_variant=mask_ratio=0.75"]
    (one,) = cli.report_commands(client, [run("default"), run("default")], uri, "s")
    assert "sweep_variant" not in one and "--tag sweep=s" in one



@pytest.mark.parametrize("args, message", [
    (["--games", "pongg"], "unknown Atari game 'pongg'; did you mean 'pong'?"),
    (["--grid", "atari.game=[pong,brekout]"], "unknown Atari game 'brekout'"),
    (["--tasks", "cheetah_run"], "unknown DMC task 'cheetah_run'; did you mean 'cheetah-run'?"),
    (["--tasks", "cheetah-run"], "gin/smoke/atari_mlr.gin trains on envs.atari: use --games with this config"),
])
def test_the_sweep_checks_its_games_and_tasks_before_any_trial(args, message, capsys, tmp_path):
    """An unknown id used to fail inside every trial (exit 1), and --tasks on an Atari config
    ran Atari trials labelled task=cheetah-run: both now stop the sweep at once, exit 2."""
    from mlr_registry.sweep import cli

    monkey_db = tmp_path / "absent.db"
    code = cli.main(["--gin", SMOKE, *args, "--dry-run", "--tracking-uri", f"sqlite:///{monkey_db}"])
    assert code == 2 and message in capsys.readouterr().err
    assert not monkey_db.exists()
