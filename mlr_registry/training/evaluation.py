"""Evaluation episodes in lockstep: one env per episode, the policy acts on every running env
in one batch, and the envs step either in this process or in worker processes.

Workers exist for speed, not semantics: with the same seeds and the same policy, both give the
same scores bit for bit (the policy sees the same batches in the same order). They matter
because evaluation is a large share of a fast run. Atari-100k's final evaluation plays 100
games of up to 27,000 agent steps each, several times the training run's 100k env steps, and
ALE and MuJoCo step under the GIL, so threads do not run them in parallel. DMC evaluates 10
episodes every 5,000 env steps, rendering every step.

Why not gymnasium's ``AsyncVectorEnv``: it runs one process per env and steps every env on
every call (a finished env auto-resets and keeps playing until the longest episode ends),
while an evaluation plays exactly one episode per env. Here W processes (W = cores) each own
every W-th env and step only the running ones: W messages per lockstep step.

The envs live in this process (``eval_envs.py``) or in an :class:`EnvWorkers` pool of worker
processes (``env_workers.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from mlr_registry.errors import ConfigError
from mlr_registry.training.env_workers import EnvWorkers
from mlr_registry.training.eval_envs import EnvFactory, _InlineEnvs

Policy = Callable[[np.ndarray], np.ndarray]  # (k, *obs_shape) -> (k, *action_shape)


def resolve_workers(name: str, workers: int, episodes: int) -> int:
    """Worker processes for ``episodes`` episodes: 0 = none (step in this process), -1 = one per
    core this process may run on, N = N; never more than there are episodes."""
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < -1:
        raise ConfigError(f"{name} = {workers!r} must be an integer >= -1 "
                          "(0 = step the envs in this process, -1 = one worker per core, N = N workers)")
    if workers == 0:
        return 0
    if os.name != "posix":
        raise ConfigError(f"{name} = {workers}: evaluation workers need a POSIX system; set it to 0")
    count = int(workers)
    if workers == -1:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(count, episodes))


def play_episodes(make_env: EnvFactory, seeds: Sequence[int], policy: Policy,
                  workers: EnvWorkers | None = None, max_steps: int | None = None) -> np.ndarray:
    """Play one episode per seed in lockstep and return the raw scores, shape (n,).

    ``make_env(seed=seed)`` builds an env, which is then reset with ``reset(seed=seed)``. Each
    lockstep step acts once on the running envs' observations (stacked, in seed order) and
    steps each of them once; an env stops at ``terminated or truncated``. The score sums
    ``info["raw_reward"]`` where the env reports it (Atari's unclipped reward), else the
    reward. ``max_steps`` caps the lockstep steps (smoke configs). With ``workers`` the envs
    live in that pool's processes (``make_env`` must then pickle: a class or a partial).
    """
    if len(seeds) == 0:
        return np.zeros(0)
    envs = workers.open(make_env, seeds) if workers is not None else _InlineEnvs(make_env, seeds)
    try:
        scores = np.zeros(len(seeds))
        running = np.ones(len(seeds), dtype=bool)
        steps = 0
        while running.any() and (max_steps is None or steps < max_steps):
            index = np.flatnonzero(running)
            actions = np.asarray(policy(envs.obs[index]))
            rewards, done = envs.step(index, actions)
            scores[index] += rewards
            running[index[done]] = False
            steps += 1
        return scores
    finally:
        envs.close()
