"""One evaluation's envs in the calling process (the trainer's, or an evaluation worker's):
built and reset one per seed, stepped once each per lockstep step, closed together."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

EnvFactory = Callable[..., Any]  # make_env(seed=...) -> a gymnasium-API env; picklable for workers


def _step_envs(envs: Sequence[Any], actions: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Step each env once: (observations, raw rewards (k,), done (k,))."""
    observations, rewards, done = [], np.zeros(len(envs)), np.zeros(len(envs), dtype=bool)
    for j, (env, action) in enumerate(zip(envs, actions, strict=True)):
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        rewards[j], done[j] = float(info.get("raw_reward", reward)), bool(terminated or truncated)
    return observations, rewards, done


def _open_envs(make_env: EnvFactory, seeds: Sequence[int]) -> tuple[list[Any], list[np.ndarray]]:
    envs: list[Any] = []
    try:
        for seed in seeds:
            envs.append(make_env(seed=int(seed)))
        return envs, [env.reset(seed=int(seed))[0] for env, seed in zip(envs, seeds, strict=True)]
    except BaseException:
        _close_envs(envs)
        raise


def _close_envs(envs: Sequence[Any]) -> None:
    for env in envs:
        env.close()


class _InlineEnvs:
    """All envs in this process."""

    def __init__(self, make_env: EnvFactory, seeds: Sequence[int]):
        self.envs, first = _open_envs(make_env, seeds)
        self.obs = np.stack(first)

    def step(self, index: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        observations, rewards, done = _step_envs([self.envs[i] for i in index], actions)
        self.obs[index] = np.stack(observations)
        return rewards, done

    def close(self) -> None:
        _close_envs(self.envs)
