"""Pinned updates: one full-size Atari MLR update and one DMC SAC+MLR update, built from the
shipped gin files, must reproduce ``tests/fixtures/*.json`` (``scripts/regression_fixtures.py``
makes and compares them; its ``RTOL`` comment derives the tolerance). A failure means the
numbers an update produces changed: if that is deliberate, re-pin with
``python scripts/regression_fixtures.py --write`` and say why in the commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import regression_fixtures as fixtures  # noqa: E402

# Compared at the thread count they were pinned at (fixtures.PIN_THREADS says why), in a fresh
# interpreter without the thread settings torch's kernels read at import.
THREADS = fixtures.PIN_THREADS
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@pytest.mark.parametrize("name", list(fixtures.FIXTURE_BUILDERS))
def test_update_reproduces_its_pinned_fixture(name):
    """Run in a fresh interpreter at ``THREADS`` torch threads, so that neither the test process
    (one thread per xdist worker) nor the caller's environment choose the kernels."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(fixtures.REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(fixtures.REPO / "scripts" / "regression_fixtures.py"), name,
                           "--threads", str(THREADS)], cwd=fixtures.REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0 and done.stdout.strip() == f"{name}: matches", done.stdout + done.stderr


def test_atari_fixture_batch_exercises_the_done_n_quirk():
    """The pinned Atari batch holds starts whose first done lies 1..9 steps ahead, so switching
    the done_n quirk off changes its RL targets (and with them the fixture)."""
    _, faithful = fixtures.atari_replay_batch()
    _, clean = fixtures.atari_replay_batch(("replays.prioritized_sequence.one_step_done_n = False",))
    assert torch.equal(faithful.indices, clean.indices) and torch.equal(faithful.obs, clean.obs)
    assert int((clean.done_n[:, 0] & ~faithful.done_n[:, 0]).sum()) >= 3


def test_differences_flag_a_moved_value_and_pass_float_noise():
    pinned = json.loads(fixtures.fixture_path("atari_mlr_update").read_text())
    noisy = json.loads(json.dumps(pinned))
    noisy["metrics"]["rl_loss"] *= 1 + 1e-6
    noisy["params"]["head"]["sum"] += 1e-6 * pinned["params"]["head"]["step_l1"]
    assert fixtures.differences(pinned, noisy) == []
    moved = json.loads(json.dumps(pinned))
    moved["metrics"]["rl_loss"] *= 1 + 1e-3
    moved["params"]["encoder"]["step_sum"] += 0.01 * pinned["params"]["encoder"]["step_l1"]
    assert [line.split(":")[0] for line in fixtures.differences(pinned, moved)] == [
        "metrics.rl_loss", "params.encoder.step_sum"]
