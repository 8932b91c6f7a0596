"""DMC data path: DMCEnv.step (render + physics) and TransitionReplay sampling.

``DMCEnv.step`` (cheetah-run, AR 4, 100x100) against dm_control stepped by hand (4 physics
steps + one render): the gap is the wrapper (frame stack, copies). Each round is ``STEPS``
agent steps, so agent steps/s = STEPS / mean time. Replay: a buffer filled with 5k steps of
9x100x100 observations (20 cheetah-length episodes of 250) sampled as the agent does: SAC
batches of 512 transitions and MLR batches of 128 sequences of 16, on the GPU when there is
one, drawn the reference's way (``nonzero``: a host sync) and at a fixed size
(``fixed_size_sequences``, the fast config's), each timed until its batch is on the device.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from dm_control import suite  # noqa: E402

from mlr_registry.envs.dmc import DMCEnv  # noqa: E402
from mlr_registry.replay.transition_replay import TransitionReplay  # noqa: E402

STEPS = 20
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FILL_STEPS, EPISODE = 5_000, 250


def _actions(dim: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (STEPS, dim))


def test_dmc_env_step(benchmark) -> None:
    env = DMCEnv("cheetah-run")
    env.reset()
    actions = _actions(env.action_dim)

    def run() -> None:
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["steps_per_round"] = STEPS


def test_raw_dm_control_step_and_render(benchmark) -> None:
    env = suite.load("cheetah", "run", task_kwargs={"random": 0})
    env.reset()
    actions = _actions(6)

    def run() -> None:
        for a in actions:
            for _ in range(4):
                time_step = env.step(a)
            env.physics.render(height=100, width=100, camera_id=0)
            if time_step.last():
                env.reset()

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["steps_per_round"] = STEPS


@pytest.fixture(scope="module")
def filled_replay() -> TransitionReplay:
    replay = TransitionReplay((9, 100, 100), action_dim=6, capacity=100_000, device=DEVICE)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (64, 3, 100, 100), dtype=np.uint8)  # reused: content is irrelevant
    actions = rng.uniform(-1, 1, (FILL_STEPS, 6)).astype(np.float32)
    for step in range(FILL_STEPS):
        t = step % EPISODE
        if t == 0:
            obs = np.concatenate([frames[step % 64]] * 3)
        next_obs = np.concatenate([obs[3:], frames[(step + 1) % 64]])
        replay.add(obs, actions[step], 0.0, next_obs, done=False, episode_end=t == EPISODE - 1)
        obs = next_obs
    return replay


def test_sample_transitions_512(benchmark, filled_replay: TransitionReplay) -> None:
    batch = benchmark(_synced(filled_replay.sample_transitions), 512)
    assert batch.obs.shape == (512, 9, 100, 100)


def _synced(fn):
    def run(*args):
        out = fn(*args)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out
    return run


@pytest.mark.parametrize("fixed_size", [False, True], ids=["reference_draw", "fixed_size"])
def test_sample_sequences_128x16(benchmark, filled_replay: TransitionReplay, fixed_size: bool) -> None:
    filled_replay.fixed_size_sequences = fixed_size
    try:
        batch = benchmark(_synced(filled_replay.sample_sequences), 128)
    finally:
        filled_replay.fixed_size_sequences = False
    assert batch.obs.shape[1:] == (16, 9, 100, 100) and batch.obs.dtype == torch.uint8
    # 234 of 250 starts per episode are valid, so 256 draws give 128 (the fixed size always does)
    assert batch.batch_size == 128
