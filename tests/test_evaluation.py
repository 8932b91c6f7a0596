"""Lockstep evaluation (training/evaluation.py): worker processes give the same scores as the
in-process envs, bit for bit, on a toy env and on the Atari and DMC trainers' real evaluations;
worker failures surface as errors naming the worker and leave no processes behind."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import gin
import numpy as np
import pytest
import torch
from conftest import RecordingTracker

from mlr_registry import config, registry
from mlr_registry.errors import ConfigError
from mlr_registry.training.dmc import EVAL_SEED_OFFSET
from mlr_registry.training.evaluation import EnvWorkers, play_episodes, resolve_workers
from mlr_registry.training.experiment import experiment

REPO = Path(__file__).resolve().parent.parent


class CountdownEnv:
    """Episode length = seed % 7 + 1 steps; reward = action (+ seed/1000 as the raw reward);
    the observation shows the steps left, so the policy's actions depend on the env's state."""

    def __init__(self, seed: int, fail_on_seed: int | None = None, die_on_seed: int | None = None):
        self.seed, self.left = seed, 0
        self.fail_on_seed, self.die_on_seed = fail_on_seed, die_on_seed

    def _obs(self) -> np.ndarray:
        return np.full((2, 3), self.left, dtype=np.uint8)

    def reset(self, seed: int):
        self.left = seed % 7 + 1
        return self._obs(), {}

    def step(self, action):
        if self.seed == self.fail_on_seed:
            raise ValueError(f"env with seed {self.seed} broke")
        if self.seed == self.die_on_seed:
            os._exit(3)
        self.left -= 1
        return self._obs(), float(action), self.left == 0, False, {"raw_reward": float(action) + self.seed / 1000}

    def close(self) -> None:
        pass


def doubling_policy(obs: np.ndarray) -> np.ndarray:
    return obs[:, 0, 0].astype(np.int64) * 2  # (k,)


def expected_score(seed: int) -> float:
    length = seed % 7 + 1
    return sum(2 * left + seed / 1000 for left in range(length, 0, -1))


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still exist (closed workers are waited for, so they are gone)."""
    living = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            living.append(pid)
        except ProcessLookupError:
            pass
    return living


@pytest.fixture(scope="module")
def pool():
    """Two workers, started once for the module (a worker takes about a second to start)."""
    with EnvWorkers(2, gin_config="") as workers:
        yield workers


def test_scores_are_the_same_in_process_and_in_workers(pool):
    seeds = [5, 0, 13, 2, 9, 20, 6]
    expected = [expected_score(s) for s in seeds]
    assert play_episodes(CountdownEnv, seeds, doubling_policy).tolist() == expected
    assert play_episodes(CountdownEnv, seeds, doubling_policy, workers=pool).tolist() == expected
    pids = pool.pids
    assert play_episodes(CountdownEnv, seeds[:1], doubling_policy, workers=pool).tolist() == expected[:1]
    assert pool.pids == pids and len(alive(pids)) == 2  # the pool outlives an evaluation


def test_policy_sees_only_running_envs_and_max_steps_caps_them(pool):
    batches: list[list[int]] = []

    def policy(obs):
        batches.append(obs[:, 0, 0].tolist())
        return np.ones(len(obs), dtype=np.int64)

    scores = play_episodes(CountdownEnv, [0, 2, 1], policy, workers=pool, max_steps=2)
    assert batches == [[1, 3, 2], [2, 1]]  # the seed-0 env ended after one step
    assert scores.tolist() == [1.0, 2 + 2 * 0.002, 2 + 2 * 0.001]


def test_a_failing_env_names_the_worker_and_its_error():
    broken = functools.partial(CountdownEnv, fail_on_seed=4)
    with EnvWorkers(2, gin_config="") as workers:
        started = []
        with pytest.raises(RuntimeError, match=r"(?s)evaluation worker 1 failed.*env with seed 4 broke"):
            play_episodes(broken, [3, 4, 5], lambda obs: started.extend(workers.pids) or doubling_policy(obs),
                          workers=workers)
        assert len(started) >= 2 and alive(started) == [] and workers.pids == []  # an error closes the pool
        assert play_episodes(CountdownEnv, [3], doubling_policy, workers=workers).tolist() == [expected_score(3)]
        restarted = workers.pids
    assert len(restarted) == 2 and alive(restarted) == []


def test_a_dead_worker_is_an_error_with_its_exit_code():
    dying = functools.partial(CountdownEnv, die_on_seed=5)
    with EnvWorkers(2, gin_config="") as workers:
        with pytest.raises(RuntimeError, match=r"evaluation worker 0 died \(exit code 3\).*eval_workers = 0"):
            play_episodes(dying, [5, 6], doubling_policy, workers=workers)
        assert workers.pids == []


def test_an_interrupt_in_the_policy_leaves_the_pool_usable():
    calls = []

    def interrupted(obs):
        calls.append(len(obs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return doubling_policy(obs)

    with EnvWorkers(3, gin_config="") as workers:
        with pytest.raises(KeyboardInterrupt):
            play_episodes(CountdownEnv, [6, 6, 6], interrupted, workers=workers)
        pids = workers.pids
        # the episode's envs were closed and every reply read: the next evaluation is exact
        assert play_episodes(CountdownEnv, [6, 1], doubling_policy, workers=workers).tolist() == [
            expected_score(6), expected_score(1)]
        assert workers.pids == pids and len(alive(pids)) == 3
    assert alive(pids) == []


def test_resolve_workers():
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers("x.eval_workers", 0, 10) == 0
    assert resolve_workers("x.eval_workers", 4, 3) == 3
    assert resolve_workers("x.eval_workers", -1, 100) == min(cores, 100)
    assert resolve_workers("x.eval_workers", -1, 1) == 1
    for bad in (-2, 1.5, True, "4"):
        with pytest.raises(ConfigError, match=r"x\.eval_workers = .* must be an integer >= -1"):
            resolve_workers("x.eval_workers", bad, 10)


def _atari_eval_scores(workers: int) -> np.ndarray:
    registry.load_all()
    config.parse([REPO / "gin/atari_mlr.gin", REPO / "gin/smoke/tiny_atari.gin"],
                 ["trainers.atari100k.eval_episodes = 3", "trainers.atari100k.eval_max_steps = 150",
                  "trainers.atari100k.eval_epsilon = 0.5",  # exercise the agent's random draws too
                  f"trainers.atari100k.eval_workers = {workers}"])
    trainer = experiment().trainer()
    try:
        assert trainer.eval_workers == min(workers, 3)
        return trainer.evaluate()
    finally:
        trainer.close()
        gin.clear_config()


def test_training_stops_its_workers_even_when_interrupted():
    registry.load_all()
    config.parse([REPO / "gin/atari_mlr.gin", REPO / "gin/smoke/tiny_atari.gin"],
                 ["trainers.atari100k.num_env_steps = 50", "trainers.atari100k.learning_starts = 40",
                  "trainers.atari100k.eval_every = 20", "trainers.atari100k.eval_workers = 2",
                  "trainers.atari100k.eval_max_steps = 30"])  # random breakout games last longer
    trainer = experiment().trainer()
    act, evaluations = trainer.agent.act, []

    def act_until_the_second_evaluation(obs, epsilon, greedy):
        if greedy and len(obs) == 2:
            evaluations.append(alive(trainer._eval_pool.pids))
            if len(evaluations) > 70:  # 30 calls at steps 20 and 40, then inside the final evaluation
                raise KeyboardInterrupt
        return act(obs, epsilon=epsilon, greedy=greedy)

    trainer.agent.act = act_until_the_second_evaluation
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train(RecordingTracker())
    finally:
        gin.clear_config()
    assert len(evaluations[0]) == 2  # the workers ran the evaluation at step 20 ...
    assert evaluations[-1] == evaluations[0]  # ... and, the same pool, the final one
    assert alive(evaluations[0]) == [] and trainer._eval_pool.pids == []


def test_atari_evaluation_in_workers_matches_the_reference_loop():
    inline = _atari_eval_scores(0)
    assert _atari_eval_scores(2).tolist() == inline.tolist()
    assert inline.shape == (3,)


def test_dmc_evaluation_in_workers_seeds_one_env_per_episode():
    registry.load_all()
    config.parse([REPO / "gin/dmc_mlr.gin", REPO / "gin/smoke/tiny_dmc.gin"],
                 ["trainers.dmc.eval_episodes = 2", "trainers.dmc.eval_workers = 2",
                  "envs.dmc.episode_length = 40"])
    trainer = experiment().trainer()
    try:
        trainer.env.reset(seed=0)  # the trainer's process renders first, as in a run
        trainer.env.step(np.zeros(trainer.env.action_dim, dtype=np.float32))
        in_workers = trainer.evaluate(env_step=5000)
        later = trainer.evaluate(env_step=10_000)
        seeds = np.random.SeedSequence([trainer.seed, EVAL_SEED_OFFSET, 5000]).generate_state(2)

        def policy(obs):
            return trainer.agent.act(torch.as_tensor(obs), greedy=True).float().numpy()

        in_process = play_episodes(trainer.env_factory, [int(s) for s in seeds], policy)
    finally:
        trainer.close()
        gin.clear_config()
    assert in_workers.tolist() == in_process.tolist()
    assert in_workers.tolist() != later.tolist()  # each evaluation draws new initial states
    assert trainer._eval_env is None  # the reference's single evaluation env is not used
