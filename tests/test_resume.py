"""Never lose a run: checkpoints, ``--resume RUN_ID``, and exact continuation.

The end-to-end tests drive the real CLI in subprocesses on the smoke configs shrunk further
(as tests/test_gin_configs.py does): a run killed with SIGKILL after its mid-run checkpoint and
resumed logs exactly the metrics (every key and step, losses included) of the same run left
alone. ``OMP_NUM_THREADS=1`` pins torch's CPU thread count so both processes reduce in the same
order (the result is deterministic per thread count; one thread also keeps the 2-core machine
usable). The unit tests check the file format: atomic pointer, checksums, no pickled code.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import mlflow_runs

from mlr_registry.errors import CheckpointError
from mlr_registry.training import checkpoint as checkpoint_module
from mlr_registry.training.checkpoint import (
    ARRAYS,
    LATEST,
    META,
    TENSORS,
    Checkpointer,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parent.parent
ATARI = ["--gin", str(REPO / "gin/smoke/atari_mlr.gin"),
         "--bind", "trainers.atari100k.num_env_steps = 48", "--bind", "trainers.atari100k.learning_starts = 30",
         "--bind", "trainers.atari100k.eval_episodes = 1", "--bind", "trainers.atari100k.eval_max_steps = 5",
         "--bind", "trainers.atari100k.batch_size = 2", "--bind", "trainers.atari100k.log_every = 8",
         "--bind", "encoders.nature_cnn.channels = (2, 4, 4)",
         "--bind", "trainers.atari100k.checkpoint_every = 24"]
DMC = ["--gin", str(REPO / "gin/smoke/dmc_mlr.gin"),
       "--bind", "trainers.dmc.num_env_steps = 80", "--bind", "trainers.dmc.init_steps = 8",
       "--bind", "trainers.dmc.eval_every = 40", "--bind", "envs.dmc.episode_length = 40",
       "--bind", "trainers.dmc.log_every = 20", "--bind", "trainers.dmc.batch_size = 8",
       "--bind", "trainers.dmc.checkpoint_every = 40"]


# BBF: a reset (step 36) and a restart of its annealing after the checkpoint at step 24.
BBF = ["--gin", str(REPO / "gin/smoke/atari_bbf.gin"), *ATARI[2:], "--bind", "agents.bbf.reset_every = 36",
       "--bind", "agents.bbf.no_resets_after = 100", "--bind", "agents.bbf.anneal_period = 20"]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlr_registry.run", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)


def _popen(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mlr_registry.run", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def _wait_for(predicate, proc: subprocess.Popen, log: Path, what: str, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"{what} never happened (rc {proc.poll()}):\n{log.read_text()[-3000:]}")


def _latest_pointer(cwd: Path) -> Path | None:
    found = list(cwd.glob("mlartifacts/*/artifacts/checkpoints/latest"))
    return found[0] if found else None


def _history(client, run) -> dict[tuple[str, int], list[float]]:
    """Every logged (metric, step) -> values, throughput (wall-clock) left out."""
    out: dict[tuple[str, int], list[float]] = {}
    for key in run.data.metrics:
        if not key.startswith("throughput/"):
            for m in client.get_metric_history(run.info.run_id, key):
                out.setdefault((key, m.step), []).append(m.value)
    return out


def _only_run(cwd: Path):
    client, runs = mlflow_runs(cwd / "mlruns.db", "smoke")
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.parametrize("name, args, loss", [
    ("atari", ATARI, "train/mlr_loss"), ("dmc", DMC, "train/critic_loss"), ("bbf", BBF, "train/spr_loss"),
    # the fast config's loop: the env steps beside the updates; checkpoints fall between steps
    ("atari_overlapped", [*ATARI, "--bind", "execution.overlap_env_step = True"], "train/mlr_loss")])
def test_kill_9_and_resume_equals_uninterrupted(tmp_path, name, args, loss):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    log = killed / "stderr.txt"
    uninterrupted = _popen(args, whole, whole / "stderr.txt")  # the two runs overlap
    proc = _popen(args, killed, log)
    pointer = _wait_for(lambda: _latest_pointer(killed), proc, log, "the mid-run checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert uninterrupted.wait(timeout=300) == 0, (whole / "stderr.txt").read_text()[-3000:]
    run_id = pointer.parts[-4]
    client, run = _only_run(killed)
    assert run.info.status == "RUNNING" and "final_return" not in run.data.metrics  # really cut short
    step = json.loads((pointer.parent / pointer.read_text().strip() / META).read_text())["step"]
    assert 0 < step < int(args[args.index("--bind") + 1].split("=")[1])

    resumed = _cli(["--resume", run_id], killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming MLflow run {run_id} from step {step}" in resumed.stderr
    client, run = _only_run(killed)
    whole_client, whole_run = _only_run(whole)
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_step"] == str(step)
    expected, got = _history(whole_client, whole_run), _history(client, run)
    assert got == expected  # every metric at every step, bit for bit, each logged once
    assert any(k == loss and s > step for k, s in got)  # losses after the resume are compared too
    assert run.data.metrics["final_return"] == whole_run.data.metrics["final_return"]


@pytest.fixture(scope="module")
def terminated(tmp_path_factory):
    """An Atari run stopped by SIGTERM mid-loop, with checkpoint_every = 0: its only checkpoint
    is the one SIGTERM wrote."""
    cwd = tmp_path_factory.mktemp("terminated")
    log = cwd / "stderr.txt"
    args = [*ATARI, "--bind", "trainers.atari100k.checkpoint_every = 0",
            "--bind", "trainers.atari100k.progress = True"]
    proc = _popen(args, cwd, log)
    _wait_for(lambda: "%|" in log.read_text(), proc, log, "the training loop's start")  # tqdm's bar
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 130, log.read_text()[-3000:]
    return cwd, log.read_text()


def _snapshot(cwd: Path):
    client, run = _only_run(cwd)
    return run.info.status, _history(client, run), dict(run.data.tags)


def test_sigterm_checkpoints_then_ends_killed(terminated):
    cwd, stderr = terminated
    assert "checkpoint written at step" in stderr
    pointer = _latest_pointer(cwd)
    assert pointer is not None
    step = json.loads((pointer.parent / pointer.read_text().strip() / META).read_text())["step"]
    assert 0 < step < 48
    client, run = _only_run(cwd)
    assert run.info.status == "KILLED"


def _main(args: list[str], cwd: Path, capsys) -> tuple[int, str]:
    """The CLI in this process (no interpreter start-up): exit code and last stderr line."""
    from mlr_registry import run

    code = run.main([*args, "--tracking-uri", f"sqlite:///{cwd / 'mlruns.db'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def test_corrupt_checkpoint_is_exit_2_naming_the_file_and_leaves_the_run(terminated, capsys):
    cwd, _ = terminated
    before = _snapshot(cwd)
    ckpt = latest_checkpoint(_latest_pointer(cwd).parent)
    data = (ckpt / TENSORS).read_bytes()
    try:
        (ckpt / TENSORS).write_bytes(data[: len(data) // 2])  # truncated
        code, error = _main(["--resume", _only_run(cwd)[1].info.run_id], cwd, capsys)
        assert code == 2
        assert error.startswith("error: ") and str(ckpt / TENSORS) in error and "truncated" in error
        assert _snapshot(cwd) == before
    finally:
        (ckpt / TENSORS).write_bytes(data)


def test_checkpoint_folders_without_a_latest_pointer_are_named(terminated, capsys):
    """A checkpoint interrupted between writing its folder and its pointer: the error names the
    folders and the fix, rather than blaming checkpoint_every = 0."""
    cwd, _ = terminated
    pointer = _latest_pointer(cwd)
    text = pointer.read_text()
    pointer.unlink()
    try:
        code, error = _main(["--resume", _only_run(cwd)[1].info.run_id], cwd, capsys)
        assert code == 2 and f"checkpoint folders ({text.strip()}) but no" in error and "latest" in error
    finally:
        pointer.write_text(text)


def test_mismatched_config_is_a_clear_error(terminated, capsys):
    cwd, _ = terminated
    before = _snapshot(cwd)
    code, error = _main(["--resume", _only_run(cwd)[1].info.run_id, "--bind", "envs.atari.game = 'pong'"],
                        cwd, capsys)
    assert code == 2
    assert "different config" in error and "atari.game" in error and "'breakout'" in error and "'pong'" in error
    assert _snapshot(cwd) == before


def test_resume_unknown_run_is_exit_2(terminated, capsys):
    cwd, _ = terminated
    code, error = _main(["--resume", "0123456789abcdef"], cwd, capsys)
    assert code == 2 and "no MLflow run '0123456789abcdef'" in error


def test_resume_after_sigterm_finishes(terminated, capsys):
    cwd, _ = terminated
    client, before = _only_run(cwd)
    run_id = before.info.run_id
    # as a run started before runs recorded their environment: the resume records the machine's
    client.delete_tag(run_id, "device_name")
    packages = cwd / "mlartifacts" / run_id / "artifacts" / "environment" / "packages.txt"
    packages.unlink()
    proc = _cli(["--resume", run_id], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, run = _only_run(cwd)
    assert run.info.status == "FINISHED" and "final_return" in run.data.metrics
    assert run.data.tags["device_name"] == before.data.tags["device_name"] and "torch==" in packages.read_text()
    assert run.info.run_name == before.info.run_name  # kept, not renamed
    assert run.info.run_name.startswith("mlr · smoke num_env_steps=48 ") and "progress" not in run.info.run_name
    steps = [m.step for m in client.get_metric_history(run_id, "train/rl_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 48  # continued at the right steps, no duplicates
    code, error = _main(["--resume", run_id], cwd, capsys)
    assert code == 2 and "is FINISHED" in error


# --------------------------------------------------------------------------- the file format

STATE = {"w": torch.arange(6.0).reshape(2, 3), "a": np.arange(4, dtype=np.uint8), "n": 3, "big": 2**100,
         "nested": {"t": (1, "x", None), "l": [np.float32(2.5), {"b": np.ones((2, 2))}]}}
CONFIG = {"atari.game": "'breakout'", "atari100k.progress": "False"}


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def test_round_trip_and_latest_pointer(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    first = save_checkpoint(tmp_path, 10, STATE, CONFIG, "atari100k", keep=1)
    second = save_checkpoint(tmp_path, 20, STATE, CONFIG, "atari100k", keep=1)
    assert latest_checkpoint(tmp_path) == second and not first.exists()  # older ones pruned
    assert sorted(p.name for p in second.iterdir()) == sorted([TENSORS, ARRAYS, META])
    state, meta = load_checkpoint(second, {**CONFIG, "atari100k.progress": "True",  # run-control may differ
                                           "atari100k.threads": "2"})
    assert meta["step"] == 20 and _equal(state, {**STATE, "nested": {"t": (1, "x", None),
                                                                     "l": [2.5, {"b": np.ones((2, 2))}]}})
    assert (tmp_path / LATEST).read_text().strip() == second.name


def test_a_killed_write_leaves_the_previous_checkpoint_latest(tmp_path):
    good = save_checkpoint(tmp_path, 10, STATE, CONFIG, "atari100k")
    (tmp_path / ".tmp-step_000000020-999999").mkdir()  # what a process killed mid-write leaves
    (tmp_path / ".tmp-step_000000020-999999" / TENSORS).write_bytes(b"half")
    assert latest_checkpoint(tmp_path) == good
    load_checkpoint(good, CONFIG)
    save_checkpoint(tmp_path, 30, STATE, CONFIG, "atari100k")
    assert not list(tmp_path.glob(".tmp-*"))  # cleaned up by the next save


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / TENSORS).write_bytes((d / TENSORS).read_bytes()[:-10]), "is truncated or corrupt"),
    (lambda d: (d / ARRAYS).write_bytes(b"x" * (d / ARRAYS).stat().st_size), "SHA-256 differs"),
    (lambda d: (d / META).write_text((d / META).read_text()[:40]), "meta.json is corrupt or truncated"),
    (lambda d: (d / ARRAYS).unlink(), "arrays.npz is missing"),
])
def test_damaged_checkpoint_names_the_file(tmp_path, damage, message):
    path = save_checkpoint(tmp_path, 10, STATE, CONFIG, "atari100k")
    damage(path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path, CONFIG)
    assert str(path) in str(info.value)


def test_loading_never_runs_pickled_code(tmp_path):
    path = save_checkpoint(tmp_path, 10, STATE, CONFIG, "atari100k")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (path / TENSORS).write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    meta = json.loads((path / META).read_text())  # a forger can fix the checksums too
    from mlr_registry.training.checkpoint import _sha256

    meta["files"][TENSORS] = {"bytes": (path / TENSORS).stat().st_size, "sha256": _sha256(path / TENSORS)}
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="tensors.pt cannot be loaded"):
        load_checkpoint(path, CONFIG)
    assert not (tmp_path / "pwned").exists()


def test_mismatched_config_lists_the_differences(tmp_path):
    path = save_checkpoint(tmp_path, 10, STATE, CONFIG, "atari100k")
    with pytest.raises(CheckpointError, match=r"different config: atari.game: checkpoint 'breakout', now 'pong'"):
        load_checkpoint(path, {**CONFIG, "atari.game": "'pong'"})


def test_bad_latest_pointer(tmp_path):
    (tmp_path / LATEST).write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="latest is corrupt"):
        latest_checkpoint(tmp_path)
    (tmp_path / LATEST).write_text("step_000000005\n")
    with pytest.raises(CheckpointError, match="does not exist"):
        latest_checkpoint(tmp_path)


def test_deferred_interrupt_checkpoints_at_the_step_boundary(tmp_path):
    # raise_signal delivers to this thread and runs the Python handler before it returns. os.kill
    # targets the process: with other threads alive the kernel may hand the signal to one of them,
    # and on a busy machine the loop had finished before the handler ran ("DID NOT RAISE").
    saved = []
    ckpt = Checkpointer(tmp_path, CONFIG, before_save=lambda: saved.append("flushed"), log=lambda msg: None)
    with ckpt.interrupts_deferred(), pytest.raises(KeyboardInterrupt):
        for step in range(1, 100):
            if step == 3:
                signal.raise_signal(signal.SIGINT)  # arrives mid-step: deferred
                saved.append(f"step {step} finished")
            ckpt.step_end(step, lambda: STATE, "atari100k", due=step % 50 == 0)
    assert saved == ["step 3 finished", "flushed"]
    assert json.loads((latest_checkpoint(tmp_path) / META).read_text())["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_an_interrupt_delivered_twice_at_once_still_checkpoints(tmp_path, monkeypatch):
    """``timeout`` signals its child and then the child's process group: the same SIGINT twice,
    microseconds apart (on an H100 that cancelled the checkpoint and, for DMC, left the run
    RUNNING). A second signal later than DUPLICATE_SIGNAL_S still stops at once."""
    ckpt = Checkpointer(tmp_path, CONFIG, log=lambda msg: None)
    with ckpt.interrupts_deferred(), pytest.raises(KeyboardInterrupt):
        for step in range(1, 100):
            if step == 3:
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)  # the copy: deferred with the first
            ckpt.step_end(step, lambda: STATE, "atari100k", due=False)
    assert json.loads((latest_checkpoint(tmp_path) / META).read_text())["step"] == 3
    monkeypatch.setattr(checkpoint_module, "DUPLICATE_SIGNAL_S", 0.0)
    later = Checkpointer(tmp_path / "later", CONFIG, log=lambda msg: None)
    with later.interrupts_deferred(), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # a person's second Ctrl-C: stop now
        pytest.fail("the second signal should have stopped the loop")
    assert later.last_saved_step is None


def test_resume_of_a_run_without_its_config_is_exit_2(tmp_path, monkeypatch, capsys):
    """A run that never logged config/config.gin (started by other code) cannot be rebuilt."""
    from mlr_registry.tracking.mlflow_run import TrackedRun

    monkeypatch.chdir(tmp_path)
    run = TrackedRun(f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="x")
    run.start({}, {})
    run.end("KILLED")
    code, error = _main(["--resume", run.run_id], tmp_path, capsys)
    assert code == 2 and f"run {run.run_id} has no config/config.gin artifact" in error


def test_a_running_run_whose_process_is_alive_is_not_resumed(tmp_path, monkeypatch, capsys):
    """Two processes writing one run mixed its metrics and deleted each other's checkpoints: a
    RUNNING run whose recorded process on this host still runs mlr_registry is refused; one
    whose process is gone (killed with -9) resumes, as the other tests show."""
    import socket

    from mlr_registry.tracking.mlflow_run import TrackedRun

    monkeypatch.chdir(tmp_path)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "mlr_registry"])
    try:
        run = TrackedRun(f"sqlite:///{tmp_path / 'mlruns.db'}", experiment="x")
        run.start({"host": socket.gethostname(), "pid": str(alive.pid)}, {})
        code, error = _main(["--resume", run.run_id], tmp_path, capsys)
        assert code == 2 and f"its process (pid {alive.pid} on this host) is still alive" in error
    finally:
        alive.kill()
        alive.wait()
    code, error = _main(["--resume", run.run_id], tmp_path, capsys)  # now gone: on to the next check
    assert code == 2 and "has no config/config.gin artifact" in error
