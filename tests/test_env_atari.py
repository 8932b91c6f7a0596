"""AtariEnv against the official protocol (docs/faithfulness.md#atari-environment-protocol), on the real ALE."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from ale_py import Action, ALEInterface, roms

from mlr_registry.atari_scores import ATARI_100K_GAMES, HUMAN_SCORES, RANDOM_SCORES, human_normalized
from mlr_registry.envs.atari import AtariEnv
from mlr_registry.errors import ConfigError
from mlr_registry.registry import lookup

FIRE = 1  # breakout's minimal action set is [NOOP, FIRE, RIGHT, LEFT]


class CountingALE:
    """Delegates to a real ALE; records every act and can replace the raw rewards."""

    def __init__(self, ale: ALEInterface, reward: int | None = None) -> None:
        self.ale, self.reward, self.acts = ale, reward, []

    def act(self, action: Action) -> int:
        self.acts.append(action)
        raw = self.ale.act(action)
        return raw if self.reward is None else self.reward

    def __getattr__(self, name: str):
        return getattr(self.ale, name)


class FixedRNG:
    def __init__(self, value: int) -> None:
        self.value, self.calls = value, []

    def integers(self, low: int, high: int) -> int:
        self.calls.append((low, high))
        return self.value


def reference_ale(env: AtariEnv) -> ALEInterface:
    """A second ALE on the same ROM, set to the env's current emulator state."""
    ale = ALEInterface()
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(roms.get_rom_path(env.game))
    ale.restoreState(env._ale.cloneState())
    return ale


def test_registered_and_spaces() -> None:
    assert lookup("env", "atari").target is AtariEnv
    env = AtariEnv("pong")
    obs, info = env.reset()
    assert obs.shape == (4, 84, 84) == env.observation_shape and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert env.game == "pong" and info["game_over"] is False and info["lives"] == 0


@pytest.mark.parametrize(("game", "n"), [("pong", 6), ("breakout", 4)])
def test_minimal_action_set(game: str, n: int) -> None:
    env = AtariEnv(game)
    assert env.num_actions == n == env.action_space.n
    assert env._ale.getFloat("repeat_action_probability") == 0.0  # no sticky actions


def test_frame_max_pool_and_reward_sum_match_hand_made_frames() -> None:
    env = AtariEnv("pong", clip_rewards=False)
    env.reset()
    ref = reference_ale(env)
    rng = np.random.default_rng(0)
    s1, s2 = np.empty((210, 160), np.uint8), np.empty((210, 160), np.uint8)
    max_differs = False
    for _ in range(40):
        a = int(rng.integers(env.num_actions))
        obs, reward, *_ = env.step(a)
        act = ref.getMinimalActionSet()[a]
        raw = sum(ref.act(act) for _ in range(3))
        ref.getScreenGrayscale(s1)
        raw += ref.act(act)
        ref.getScreenGrayscale(s2)
        expected = cv2.resize(np.maximum(s1, s2), (84, 84), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(obs[-1], expected)
        assert reward == raw
        max_differs |= not np.array_equal(expected, cv2.resize(s2, (84, 84)))
    assert max_differs  # the max over the last two screens mattered at least once


def test_reset_frame_is_bilinear_resize_of_full_screen() -> None:
    env = AtariEnv("breakout")
    obs, _ = env.reset()
    screen = env._ale.getScreenGrayscale()
    assert screen.shape == (210, 160)
    np.testing.assert_array_equal(obs[-1], cv2.resize(screen, (84, 84), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(obs[-1], cv2.resize(screen, (84, 84), interpolation=cv2.INTER_AREA))
    assert not obs[:-1].any()  # stack zeroed on reset


def test_stack_is_oldest_to_newest_and_zeroed_on_hard_reset() -> None:
    env = AtariEnv("pong", terminal_on_life_loss=False)
    obs, _ = env.reset()
    newest = [obs[-1]]
    for t in range(6):
        obs, *_ = env.step(t % env.num_actions)
        newest.append(obs[-1])
        np.testing.assert_array_equal(obs, np.stack(([np.zeros((84, 84), np.uint8)] * 4 + newest)[-4:]))
    obs, _ = env.reset()
    assert not obs[:-1].any() and obs[-1].any()


def test_reward_is_sign_clipped_and_raw_kept() -> None:
    for clip, raw_per_frame, expected in ((True, 3, 1.0), (True, -2, -1.0), (False, 3, 12.0), (True, 0, 0.0)):
        env = AtariEnv("pong", clip_rewards=clip)
        env.reset()
        env._ale = CountingALE(env._ale, reward=raw_per_frame)
        _, reward, _, _, info = env.step(0)
        assert reward == expected and info["raw_reward"] == 4 * raw_per_frame


@pytest.mark.parametrize("n", [1, 17, 30])
def test_hard_reset_runs_one_noop_then_rng_drawn_single_frame_noops(n: int) -> None:
    env = AtariEnv("pong")
    env.np_random = FixedRNG(n)
    counting = CountingALE(env._ale)
    env._ale = counting
    _, info = env.reset()
    assert env.np_random.calls == [(1, 31)]  # integers(1, 31): 1..30 noops
    assert counting.acts == [Action.NOOP] * (1 + n) and info["noops"] == n


def test_noop_counts_cover_one_to_thirty() -> None:
    env = AtariEnv("pong")
    counts = [env.reset()[1]["noops"] for _ in range(300)]
    assert min(counts) == 1 and max(counts) == 30


def _play_until_life_loss(env: AtariEnv) -> tuple[int, np.ndarray, dict]:
    for t in range(1, 500):
        obs, _, terminated, truncated, info = env.step(FIRE)
        if info["life_loss"]:
            return t, obs, {"terminated": terminated, "truncated": truncated, **info}
    raise AssertionError("no life lost in 500 steps")


def test_life_loss_is_terminal_without_resetting_the_game() -> None:
    env = AtariEnv("breakout", seed=3)
    env.reset()
    t, obs, info = _play_until_life_loss(env)
    assert info["terminated"] and not info["truncated"] and not info["game_over"]
    assert info["lives"] == 4 and info["episode_steps"] == t
    assert not obs[:-1].any() and obs[-1].any()  # zeroed stack except the newest frame
    frame_number = env._ale.getEpisodeFrameNumber()
    soft, reset_info = env.reset()
    np.testing.assert_array_equal(soft, obs)
    assert reset_info["soft_reset"] and env._ale.getEpisodeFrameNumber() == frame_number
    assert env._ale.lives() == 4
    _, _, terminated, _, info = env.step(FIRE)
    assert not terminated and info["episode_steps"] == t + 1  # life losses don't reset the horizon


def test_eval_mode_ignores_life_loss_except_info() -> None:
    train = AtariEnv("breakout", seed=3)
    evaluation = AtariEnv("breakout", seed=3, terminal_on_life_loss=False)
    train.reset()
    evaluation.reset()
    t_train, _, _ = _play_until_life_loss(train)
    t_eval, obs, info = _play_until_life_loss(evaluation)
    assert t_eval == t_train and not info["terminated"] and not info["game_over"]
    assert obs[:-1].any()  # stack kept


def test_game_over_then_hard_reset() -> None:
    env = AtariEnv("breakout", seed=1)
    env.reset()
    losses = 0
    for _ in range(2000):
        _, _, terminated, truncated, info = env.step(FIRE)
        if info["game_over"]:
            break
        if terminated:
            losses += 1
            assert env.reset()[1]["soft_reset"]
    assert info["game_over"] and terminated and not truncated and losses == 4
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    _, info = env.reset()
    assert not info["soft_reset"] and info["lives"] == 5 and info["episode_steps"] == 0


@pytest.mark.parametrize("horizon_extra_step", [True, False])
def test_horizon_truncates_and_ends_the_game(horizon_extra_step: bool) -> None:
    # faithful (default): the official check runs before its counter moves, so the 11th step
    # of a 10-step horizon still runs and is the one cut; the clean switch cuts the 10th
    kwargs = {} if horizon_extra_step else {"horizon_extra_step": False}
    env = AtariEnv("pong", max_episode_steps=10, terminal_on_life_loss=False, **kwargs)
    assert env.horizon_extra_step == horizon_extra_step
    last = 11 if horizon_extra_step else 10
    env.reset()
    for t in range(1, last + 1):
        _, _, terminated, truncated, info = env.step(0)
        assert truncated == (t == last) == info["game_over"] and not terminated
    _, info = env.reset()
    assert not info["soft_reset"] and info["episode_steps"] == 0


def test_unknown_game_suggests_nearest_rom_id() -> None:
    with pytest.raises(ConfigError, match="battle_zone"):
        AtariEnv("battlezone")
    with pytest.raises(ConfigError, match="ms_pacman"):
        AtariEnv("MsPacman")


@pytest.mark.parametrize(("param", "value"), [("frame_skip", 0), ("frame_stack", 0), ("image_size", 0),
                                              ("noop_max", -1), ("max_episode_steps", 0), ("seed", -1)])
def test_out_of_range_parameters(param: str, value: int) -> None:
    with pytest.raises(ConfigError, match=param):
        AtariEnv("pong", **{param: value})


def test_invalid_action_and_step_before_reset() -> None:
    env = AtariEnv("pong")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset()
    with pytest.raises(ValueError, match="out of range"):
        env.step(6)


def test_ale_seed_decouples_the_emulator_seed_from_the_noop_seed() -> None:
    run, evaluation = AtariEnv("pong", seed=3), AtariEnv("pong", seed=301, ale_seed=3)
    assert evaluation._ale.getInt("random_seed") == run._ale.getInt("random_seed")
    assert AtariEnv("pong", seed=301)._ale.getInt("random_seed") != run._ale.getInt("random_seed")
    evaluation.reset(seed=302)  # a seeded reset keeps the emulator's seed, reseeds the noops
    assert evaluation._ale.getInt("random_seed") == run._ale.getInt("random_seed")
    assert evaluation.np_random_seed == 302
    with pytest.raises(ConfigError, match="ale_seed"):
        AtariEnv("pong", ale_seed=-1)


def test_same_seed_same_trajectory_and_seeded_reset() -> None:
    def rollout(env: AtariEnv, **reset_kwargs) -> list[np.ndarray]:
        obs, info = env.reset(**reset_kwargs)
        out = [obs, np.array(info["noops"])]
        for t in range(30):
            obs, reward, *_ = env.step((t * 7) % env.num_actions)
            out += [obs, np.array(reward)]
        return out

    a, b = rollout(AtariEnv("breakout", seed=5)), rollout(AtariEnv("breakout", seed=5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    env = AtariEnv("breakout", seed=0)
    c, d = rollout(env, seed=5), rollout(env, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(c, d, strict=True))
    noops = {AtariEnv("pong", seed=s).reset()[1]["noops"] for s in range(8)}
    assert len(noops) > 1  # the seed matters


def test_game_tables_and_human_normalized() -> None:
    assert len(ATARI_100K_GAMES) == 26 == len(set(ATARI_100K_GAMES))
    assert set(ATARI_100K_GAMES) <= set(roms.get_all_rom_ids())
    assert set(HUMAN_SCORES) == set(RANDOM_SCORES) == set(ATARI_100K_GAMES)
    assert human_normalized("pong", 14.6) == pytest.approx(1.0)
    assert human_normalized("pong", -20.7) == pytest.approx(0.0)
    assert human_normalized("breakout", 16.8) == pytest.approx((16.8 - 1.7) / (30.5 - 1.7))
    with pytest.raises(ConfigError, match="up_n_down"):
        human_normalized("upndown", 0.0)
