"""CatchEnv: shapes, rules, and that it separates a good policy from a random one."""

from __future__ import annotations

import numpy as np
import pytest

from mlr_registry.envs.catch import LEFT, RIGHT, STAY, CatchEnv
from mlr_registry.errors import ConfigError
from mlr_registry.registry import lookup


def board(frame: np.ndarray, cell: int = 12) -> np.ndarray:
    """(h w) image -> (rows cols) board, checking every cell is a uniform block."""
    rows = frame.shape[0] // cell
    blocks = frame.reshape(rows, cell, rows, cell)
    assert (blocks == blocks[:, :1, :, :1]).all()
    return blocks[:, 0, :, 0]


def optimal(env: CatchEnv) -> int:
    return STAY if env._paddle == env._ball_col else (LEFT if env._ball_col < env._paddle else RIGHT)


def run_episode(env: CatchEnv, policy) -> tuple[float, int]:
    env.reset()
    total, steps, done = 0.0, 0, False
    while not done:
        _, reward, done, truncated, info = env.step(policy(env))
        assert not truncated and info["raw_reward"] == reward and info["game_over"] == done
        total, steps = total + reward, steps + 1
    return total, steps


def test_interface_shapes_and_render() -> None:
    assert lookup("env", "catch").target is CatchEnv
    env = CatchEnv()
    obs, info = env.reset()
    assert obs.shape == (4, 84, 84) == env.observation_shape and obs.dtype == np.uint8
    assert env.num_actions == 3 == env.action_space.n and env.game == "catch"
    assert info == {"raw_reward": 0.0, "game_over": False, "life_loss": False}
    assert not obs[:-1].any()  # stack zeroed at reset
    b = board(obs[-1])
    assert b[0].sum() == 255 and b[0, env._ball_col] == 255 and b[6, 3] == 255 and b.sum() == 2 * 255
    obs, _, _, _, info = env.step(RIGHT)
    b = board(obs[-1])
    assert b[1, env._ball_col] == 255 and b[6, 4] == 255 and not b[0].any() and not info["life_loss"]
    np.testing.assert_array_equal(obs[-2], CatchEnv().reset()[0][-1])  # oldest -> newest


def test_episode_length_and_reward_rules() -> None:
    for grid in (2, 5, 7):
        env = CatchEnv(grid=grid, image_size=grid * 4)
        assert run_episode(env, optimal) == (1.0, grid - 1)
    env = CatchEnv()
    env.reset()
    env._ball_col = 0
    rewards = [env.step(RIGHT)[1] for _ in range(6)]  # paddle runs to the right wall
    assert rewards == [0.0] * 5 + [-1.0] and env._paddle == 6
    with pytest.raises(RuntimeError):
        env.step(STAY)


def test_optimal_policy_always_catches_random_does_not() -> None:
    env = CatchEnv(seed=0)
    assert all(run_episode(env, optimal)[0] == 1.0 for _ in range(100))
    rng = np.random.default_rng(0)
    random_mean = np.mean([run_episode(env, lambda _: int(rng.integers(3)))[0] for _ in range(500)])
    assert random_mean < -0.3


def test_seeded_ball_columns() -> None:
    a, b = CatchEnv(seed=4), CatchEnv(seed=4)
    cols_a = [(a.reset(), a._ball_col)[1] for _ in range(20)]
    cols_b = [(b.reset(), b._ball_col)[1] for _ in range(20)]
    assert cols_a == cols_b and len(set(cols_a)) > 3
    a.reset(seed=9)
    b.reset(seed=9)
    assert a._ball_col == b._ball_col


@pytest.mark.parametrize(("kwargs", "match"), [({"grid": 1}, "grid"), ({"image_size": 80}, "multiple"),
                                               ({"frame_stack": 0}, "frame_stack")])
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CatchEnv(**kwargs)
