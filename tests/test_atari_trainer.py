"""The Atari-100k loop (docs/faithfulness.md#atari-training-loop-and-budget): ε = 1 while step <= learning_starts
then 0, updates_per_step updates per env step from learning_starts on, priorities written back,
PER's beta annealed after each step's updates, and the paper's budget of 196,000 updates."""

from __future__ import annotations

from pathlib import Path

import gin
import numpy as np
import pytest
from conftest import RecordingTracker

from mlr_registry import config, registry
from mlr_registry.training.atari100k import linear_epsilon
from mlr_registry.training.experiment import experiment

REPO = Path(__file__).resolve().parent.parent


def test_epsilon_schedule_of_the_reference():
    # rlpyt: eps_itr_min = 2000, eps_itr_max = 2001 -> 1 up to step 2000, 0 from 2001
    assert [linear_epsilon(t, 2000, 1, 1.0, 0.0) for t in (0, 1999, 2000, 2001, 50_000)] == [1, 1, 1, 0, 0]
    assert linear_epsilon(1500, 1000, 1000, 1.0, 0.1) == pytest.approx(0.55)


def test_paper_budget_is_196k_updates():
    registry.load_all()
    config.parse([REPO / "gin/atari_mlr.gin"])
    try:
        steps = gin.query_parameter("trainers.atari100k.num_env_steps")
        starts = gin.query_parameter("trainers.atari100k.learning_starts")
        per_step = gin.query_parameter("trainers.atari100k.updates_per_step")
    finally:
        gin.clear_config()
    assert per_step * (steps - starts) == 196_000


def test_loop_acts_updates_and_writes_priorities():
    registry.load_all()
    config.parse([REPO / "gin/learning/catch_baseline.gin"],
                 ["trainers.atari100k.num_env_steps = 60", "trainers.atari100k.learning_starts = 40",
                  "trainers.atari100k.updates_per_step = 2", "trainers.atari100k.eval_episodes = 3",
                  "encoders.nature_cnn.channels = (2, 4, 4)",
                  "replays.prioritized_sequence.beta_anneal_start = 40",
                  "replays.prioritized_sequence.beta_anneal_end = 60"])
    trainer = experiment().trainer()
    epsilons: list[float] = []
    act = trainer.agent.act
    betas: list[float] = []
    sample = trainer.replay.sample
    trainer.replay.sample = lambda b: betas.append(trainer.replay.beta) or sample(b)

    def spy_act(obs, epsilon, greedy):
        if not greedy:
            epsilons.append(epsilon)
        return act(obs, epsilon=epsilon, greedy=greedy)

    trainer.agent.act = spy_act
    try:  # the trainer builds eval envs from gin factories: keep the config until it is done
        final = trainer.train(RecordingTracker())
    finally:
        gin.clear_config()
    assert epsilons == [1.0] * 41 + [0.0] * 19  # steps 0..40 random, then noisy-net exploration
    assert trainer.update_count == 2 * (60 - 40) == trainer.agent.update_count
    # step t's updates sample with beta(t - 1): rlpyt anneals it after the step's updates
    expected = [0.4 + 0.6 * min(max((t - 1 - 40) / 20, 0), 1) for t in range(40, 60) for _ in range(2)]
    assert betas == pytest.approx(expected) and betas[-1] < 1.0
    assert -1.0 <= final["final_return"] <= 1.0
    # sampled starts got KL^alpha priorities; the others keep the default 1 (or 0: not sampleable)
    leaves = trainer.replay.priorities
    assert bool(((leaves != 0) & (leaves != 1)).any())


def test_evaluation_envs_are_seeded_as_the_reference():
    """Seeds (docs/faithfulness.md#atari-seeds): evaluation env 0 gets the run seed, env i > 0 gets seed·100 + i."""
    registry.load_all()
    config.parse([REPO / "gin/learning/catch_baseline.gin"],
                 ["trainers.atari100k.seed = 3", "trainers.atari100k.eval_episodes = 4",
                  "encoders.nature_cnn.channels = (2, 4, 4)"])
    try:
        trainer = experiment().trainer()
    finally:
        gin.clear_config()
    assert trainer.eval_seeds() == [3, 301, 302, 303]
    trainer.eval_episodes = 0  # no evaluation asked for: no episode played
    assert trainer.eval_seeds() == [] and trainer.evaluate().size == 0


def test_every_evaluation_env_seeds_its_emulator_from_the_run_seed(monkeypatch):
    """As the reference's env: seed·100 + i seeds only eval env i's noop RNG; the ALE seed of
    every env (training env included) derives from the run seed."""
    from conftest import tiny_trainer

    from mlr_registry.training import atari100k

    built = []

    def record(make_env, seeds, policy, **kwargs):
        built.extend(make_env(seed=s) for s in seeds)
        return np.zeros(len(seeds))

    monkeypatch.setattr(atari100k, "play_episodes", record)
    with tiny_trainer("gin/atari_baseline.gin", bindings=("trainers.atari100k.seed = 3",
                                                          "trainers.atari100k.eval_episodes = 3")) as trainer:
        trainer.evaluate()
        train_ale_seed = trainer.env._ale.getInt("random_seed")
    assert [env.np_random_seed for env in built] == [3, 301, 302]
    assert [env._ale.getInt("random_seed") for env in built] == [train_ale_seed] * 3
    assert all(env.ale_seed == 3 and not env.terminal_on_life_loss for env in built)


@pytest.mark.parametrize("binding, message", [
    ("agents.rainbow.n_step = 3", "the agent's n_step (3) differs from the replay's (10)"),
    ("replays.prioritized_sequence.discount = 0.9", "the agent's discount (0.99) differs from the replay's (0.9)"),
])
def test_agent_and_replay_must_agree_on_the_n_step_return(binding, message):
    """The replay computes the returns the agent bootstraps: a mismatch would train silently on
    10-step returns bootstrapped with γ³, so building the trainer refuses it."""
    from conftest import tiny_trainer

    from mlr_registry.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with tiny_trainer("gin/smoke/atari_baseline.gin", bindings=(binding,)):
            pass


@pytest.mark.parametrize("binding, message", [
    ("trainers.atari100k.eval_episodes = 1.5", "atari100k.eval_episodes = 1.5 is a float; expected an integer"),
    ("trainers.atari100k.batch_size = 'big'", "atari100k.batch_size = 'big' is a str; expected an integer"),
    ("trainers.atari100k.seed = -3", r"seed = -3 is out of range; expected an integer in \[0, 4.29497e\+09\]"),
])
def test_a_count_of_the_wrong_type_stops_the_run_before_it_starts(binding, message):
    """A count given as 1.5 or 'big' used to train the whole run and fail at its first use (the
    final evaluation, hours later) or dump a TypeError: it is refused when the trainer is built."""
    from conftest import tiny_trainer

    from mlr_registry.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        with tiny_trainer("gin/smoke/atari_baseline.gin", bindings=(binding,)):
            pass
