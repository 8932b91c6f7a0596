"""Stepping the Atari env while the step's updates run (``execution.overlap_env_step``),
and queueing a step's updates before its action is read back (``pipeline_updates``), change
nothing but wall time: every logged metric is identical, step for step."""

from __future__ import annotations

import gin
import pytest
from conftest import REPO, train_in_process

from mlr_registry import config, registry
from mlr_registry.dry_run import tiny_bindings
from mlr_registry.errors import ConfigError
from mlr_registry.training.experiment import experiment

# 120 steps: a 40-slot replay wraps twice; updates start at step 40, so the newest windows are
# sampled from the first update on. Breakout (the emulator on the env thread) loses lives every
# few dozen steps and is cut after 30; Catch's games last 4 steps, each ending in a reward of +1
# or -1, so nearly every sampled window crosses a done. Beta anneals over the run (each
# update's importance weights depend on the step the replay was told).
LONGER = ("trainers.atari100k.num_env_steps = 120", "trainers.atari100k.log_every = 40",
          "trainers.atari100k.eval_every = 60", "trainers.atari100k.eval_max_steps = 20",
          "replays.prioritized_sequence.capacity = 40", "trainers.atari100k.learning_starts = 40",
          "replays.prioritized_sequence.beta_anneal_start = 40", "replays.prioritized_sequence.beta_anneal_end = 120")
GAMES = {"breakout": ("envs.atari.max_episode_steps = 30",),
         "catch": ("trainers.atari100k.env = @envs.catch", "envs.catch.grid = 5", "envs.catch.image_size = 60",
                   "encoders.nature_cnn.image_size = 60")}


@pytest.mark.parametrize("game", GAMES)
def test_overlapped_env_step_gives_identical_metrics(game):
    registry.load_all()
    files = ("gin/atari_mlr.gin",)
    base = (*tiny_bindings(files, []), *LONGER, *GAMES[game])
    gin.clear_config()
    switches = ("", "execution.overlap_env_step = True", "execution.pipeline_updates = True")
    runs = [train_in_process(*files, bindings=(*base, *filter(None, [switch]))) for switch in switches]
    reference, overlapped, pipelined = ({k: v for k, v in run.history.items() if not k.startswith("throughput/")}
                                        for run in runs)
    assert len(reference["train/mlr_loss"]) == 2 and len(reference["eval/return_mean"]) == 2  # 60, final 120
    assert len(reference["train/episode_return"]) >= 3
    assert overlapped == reference
    assert pipelined == reference


@pytest.mark.parametrize("switch", ["overlap_env_step", "pipeline_updates"])
def test_overlap_needs_a_replay_that_can_wait_for_the_reward(switch):
    registry.load_all()

    @gin.configurable(f"replays.whole_steps_only_{switch}")  # gin refuses a second registration
    class WholeStepsOnly:
        def __init__(self, observation_shape, device, seed):
            pass

        def add(self, obs, action, reward, done):
            pass

    files = ("gin/atari_baseline.gin",)
    bindings = (*tiny_bindings(files, []), f"trainers.atari100k.replay = @replays.whole_steps_only_{switch}",
                f"execution.{switch} = True")
    config.parse([REPO / f for f in files], bindings)
    try:
        with pytest.raises(ConfigError, match=f"{switch} = True needs a replay.*WholeStepsOnly.*set {switch} = False"):
            experiment().trainer()
    finally:
        gin.clear_config()
