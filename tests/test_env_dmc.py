"""DMCEnv: dmc2gym + FrameStack(3) semantics against dm_control stepped by hand."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from dm_control import suite  # noqa: E402
from gymnasium import spaces  # noqa: E402

from mlr_registry.envs.dmc import ACTION_REPEAT, DMC6_TASKS, DMCEnv  # noqa: E402
from mlr_registry.errors import ConfigError  # noqa: E402

SIZE = 24  # rendering costs ~20 ms per frame whatever the size; small keeps comparisons cheap


def render(env, size: int = SIZE) -> np.ndarray:
    return env.physics.render(height=size, width=size, camera_id=0).transpose(2, 0, 1)


def test_observation_shape_dtype_and_frame_order() -> None:
    env = DMCEnv("cartpole-swingup", image_size=SIZE, episode_length=80)
    raw = suite.load("cartpole", "swingup", task_kwargs={"random": 0})
    obs, info = env.reset()
    raw.reset()
    assert obs.shape == env.observation_shape == (9, SIZE, SIZE) and obs.dtype == np.uint8
    assert env.observation_space.shape == obs.shape and env.observation_space.contains(obs)
    first = render(raw)  # channels-first RGB of camera 0
    assert np.array_equal(obs[6:], first) and obs[6:].std() > 0
    assert np.array_equal(obs[:3], first) and np.array_equal(obs[3:6], first)  # reset repeats it
    assert info["raw_reward"] == 0.0 and not info["game_over"]
    frames = [first]
    for _ in range(2):
        obs, *_ = env.step(np.array([0.7]))
        for _ in range(8):
            raw.step(np.array([0.7]))
        frames.append(render(raw))
        assert np.array_equal(obs[6:], frames[-1])  # newest last
    assert np.array_equal(obs[:3], frames[0]) and np.array_equal(obs[3:6], frames[1])  # oldest first


def test_action_repeat_sums_rewards_like_dm_control_by_hand() -> None:
    env = DMCEnv("reacher-easy", image_size=SIZE, seed=3)
    raw = suite.load("reacher", "easy", task_kwargs={"random": 3})
    assert env.action_repeat == 4 and env.action_dim == 2
    env.reset()
    raw.reset()
    rng = np.random.default_rng(0)
    for _ in range(3):
        action = rng.uniform(-1, 1, 2)
        obs, reward, terminated, truncated, info = env.step(action)
        expected = sum(raw.step(action).reward for _ in range(4))
        assert reward == pytest.approx(expected, abs=1e-12) and info["raw_reward"] == reward
        assert np.array_equal(obs[6:], render(raw))
        assert not terminated and not truncated
    assert info["env_steps"] == 12 and info["episode_steps"] == 3
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros(3))


def test_out_of_range_actions_are_clipped_to_the_bounds() -> None:
    env = DMCEnv("cartpole-swingup", image_size=SIZE)
    twin = DMCEnv("cartpole-swingup", image_size=SIZE)
    env.reset()
    twin.reset()
    a, *_ = env.step(np.array([3.0]))
    b, *_ = twin.step(np.array([1.0]))
    assert np.array_equal(a, b)
    assert np.array_equal(env._env.physics.get_state(), twin._env.physics.get_state())


def test_episode_is_1000_env_steps_ending_in_truncation() -> None:
    env = DMCEnv("cartpole-swingup", image_size=8)  # AR 8: 125 agent steps
    assert env.action_repeat == ACTION_REPEAT["cartpole"] == 8 and env.max_episode_steps == 125
    env.reset()
    steps, ends = 0, []
    while True:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        ends.append((terminated, truncated))
        if terminated or truncated:
            break
    assert steps == 125 and info["env_steps"] == 1000 and info["game_over"]
    assert ends[-1] == (False, True) and not any(any(e) for e in ends[:-1])  # DMC never terminates
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(1))


@pytest.mark.parametrize("task, repeat, length, steps", [
    ("walker-walk", None, 20, 10),  # AR 2
    ("finger-spin", 3, 10, 4),  # ceil(10 / 3) agent steps, as dmc2gym's TimeLimit
])
def test_short_episode_length_in_agent_steps(task: str, repeat: int | None, length: int, steps: int) -> None:
    env = DMCEnv(task, action_repeat=repeat, image_size=8, episode_length=length)
    assert env.max_episode_steps == steps
    env.reset()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(np.zeros(env.action_dim))
        assert not terminated and truncated == (i == steps - 1)


def test_defaults_and_spaces() -> None:
    env = DMCEnv()
    assert env.game == "cheetah-run" and env.action_repeat == 4 and env.image_size == 100
    assert env.observation_shape == (9, 100, 100) and env.max_episode_steps == 250
    assert env.num_actions == env.action_dim == 6
    assert isinstance(env.action_space, spaces.Box) and env.action_space.shape == (6,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert {t: DMCEnv(t).action_repeat for t in ("walker-walk", "finger-spin", "ball_in_cup-catch",
                                                  "acrobot-swingup")} == {
        "walker-walk": 2, "finger-spin": 2, "ball_in_cup-catch": 4, "acrobot-swingup": 4}
    all_ids = {f"{d}-{t}" for d, t in suite.ALL_TASKS}
    assert len(DMC6_TASKS) == 6 and set(DMC6_TASKS) <= all_ids


@pytest.mark.parametrize("task, nearest", [
    ("cheetah-runn", "cheetah-run"), ("ballincup-catch", "ball_in_cup-catch"), ("cheetah/run", "cheetah-run"),
    ("walker_walk", "walker-walk"),
])
def test_unknown_task_names_the_nearest(task: str, nearest: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{nearest}'"):
        DMCEnv(task)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 0}, "image_size"), ({"action_repeat": 0}, "action_repeat"),
    ({"frame_stack": 0}, "frame_stack"), ({"episode_length": 0}, "episode_length"),
    ({"camera_id": 5}, "camera_id"), ({"seed": -1}, "seed"), ({"action_repeat": 2.5}, "action_repeat"),
])
def test_bad_parameters_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DMCEnv("cartpole-swingup", **kwargs)


def rollout(env: DMCEnv, seed: int | None = None, steps: int = 3) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for i in range(steps):
        out.append(env.step(np.full(env.action_dim, 0.3 * (-1) ** i))[0])
    return out


def test_seeding_is_deterministic_and_reset_seed_reseeds() -> None:
    a = rollout(DMCEnv("reacher-easy", image_size=SIZE, seed=1))
    b = rollout(DMCEnv("reacher-easy", image_size=SIZE, seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    other = DMCEnv("reacher-easy", image_size=SIZE, seed=2)
    c = rollout(other)
    assert not np.array_equal(a[0], c[0])  # the target and arm start elsewhere
    assert all(np.array_equal(x, y) for x, y in zip(a, rollout(other, seed=1), strict=True))
