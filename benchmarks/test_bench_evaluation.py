"""Evaluation throughput: lockstep episodes stepped in the trainer's process (``workers = 0``)
against worker processes (one per core), with a numpy policy so only the envs are timed.

Atari: 16 pong games (eval mode) for 200 lockstep steps per round; DMC: 4 cheetah-run episodes
(AR 4, 100x100 renders) for 25 steps per round. env steps/s = envs x steps / mean time. The
pool is started before timing (a worker takes a second or more to start, once per run).
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mlr_registry.envs.atari import AtariEnv  # noqa: E402
from mlr_registry.envs.dmc import DMCEnv  # noqa: E402
from mlr_registry.training.evaluation import EnvWorkers, play_episodes, resolve_workers  # noqa: E402

CASES = {  # name: (env factory, episodes, lockstep steps per round, policy)
    "atari": (functools.partial(AtariEnv, game="pong", terminal_on_life_loss=False), 16, 200,
              lambda rng, obs: rng.integers(0, 6, len(obs))),
    "dmc": (functools.partial(DMCEnv, "cheetah-run"), 4, 25,
            lambda rng, obs: rng.uniform(-1, 1, (len(obs), 6)).astype(np.float32)),
}


@pytest.mark.parametrize("workers", [0, -1], ids=["in_process", "one_per_core"])
@pytest.mark.parametrize("case", list(CASES))
def test_bench_evaluation(benchmark, case, workers) -> None:
    make_env, episodes, steps, policy = CASES[case]
    count = resolve_workers("workers", workers, episodes)
    pool = EnvWorkers(count, gin_config="") if count else None
    rng = np.random.default_rng(0)
    try:
        if pool is not None:
            play_episodes(make_env, [0], functools.partial(policy, rng), workers=pool, max_steps=1)  # start
        benchmark.pedantic(lambda: play_episodes(make_env, list(range(episodes)), functools.partial(policy, rng),
                                                 workers=pool, max_steps=steps), rounds=3, warmup_rounds=0)
    finally:
        if pool is not None:
            pool.close()
    benchmark.extra_info.update(env_steps_per_round=episodes * steps, workers=count)
