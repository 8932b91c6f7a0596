"""Env throughput: AtariEnv.step against the bare emulator at frame skip 4 (same game).

The gap is the cost of the protocol (two screen grabs, max-pool, resize, stack shift, copy);
``catch`` shows the floor of a numpy-rendered env. Each round is ``STEPS`` agent steps, so
steps/s = STEPS / mean time.
"""

from __future__ import annotations

import numpy as np
from ale_py import ALEInterface, roms

from mlr_registry.envs.atari import AtariEnv
from mlr_registry.envs.catch import CatchEnv

STEPS = 200
GAME = "pong"


def _actions(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(n, size=STEPS)


def test_atari_env_step(benchmark) -> None:
    env = AtariEnv(GAME, terminal_on_life_loss=False)
    env.reset()
    actions = _actions(env.num_actions)

    def run() -> None:
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info["steps_per_round"] = STEPS


def test_raw_ale_act_frame_skip_4(benchmark) -> None:
    ale = ALEInterface()
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(roms.get_rom_path(GAME))
    action_set = ale.getMinimalActionSet()
    actions = [action_set[a] for a in _actions(len(action_set))]

    def run() -> None:
        for a in actions:
            for _ in range(4):
                ale.act(a)
            if ale.game_over():
                ale.reset_game()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info["steps_per_round"] = STEPS


def test_catch_env_step(benchmark) -> None:
    env = CatchEnv()
    env.reset()
    actions = _actions(env.num_actions)

    def run() -> None:
        for a in actions:
            _, _, terminated, _, _ = env.step(a)
            if terminated:
                env.reset()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    benchmark.extra_info["steps_per_round"] = STEPS
