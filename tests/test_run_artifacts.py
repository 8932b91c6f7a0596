"""Training runs log a learning-curve PNG and, when enabled, an MP4 of one greedy episode."""

from __future__ import annotations

from pathlib import Path

import gin
import imageio.v2 as imageio
import pytest
from conftest import RecordingTracker

from mlr_registry import config, registry
from mlr_registry.training.experiment import experiment

REPO = Path(__file__).resolve().parent.parent


def test_training_logs_learning_curve_and_video(tmp_path):
    registry.load_all()
    config.parse([REPO / "gin/learning/catch_baseline.gin"],
                 ["trainers.atari100k.num_env_steps = 60", "trainers.atari100k.learning_starts = 40",
                  "trainers.atari100k.eval_episodes = 2", "trainers.atari100k.video = True",
                  "trainers.atari100k.log_every = 20"])
    try:
        trainer = experiment().trainer()
        tracker = RecordingTracker(keep=tmp_path)
        trainer.train(tracker)
    finally:
        gin.clear_config()
    assert set(tracker.files) == {"plots/learning_curve.png", "videos/eval_policy.mp4"}
    png = tracker.files["plots/learning_curve.png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frames = imageio.mimread(tracker.files["videos/eval_policy.mp4"])
    # one Catch episode on the 5x5 board: the reset frame plus 4 steps, upscaled 3x from 60x60
    assert len(frames) == 5 and frames[0].shape[:2] == (180, 180)


@pytest.mark.parametrize("task_file, fps", [("gin/dmc/walker_walk.gin", 20),  # 0.025 s x action repeat 2
                                            ("gin/dmc/cheetah_run.gin", 25)])  # 0.01 s x 4
def test_dmc_video_plays_in_real_time_and_its_env_is_closed(task_file, fps):
    """One video frame per agent step, at the task's own control step (dm_control's differ:
    0.01 to 0.025 s), so every task's video plays at real speed; the episode's env (physics and
    EGL context) is closed once the frames are taken."""
    from conftest import tiny_trainer

    bindings = ("trainers.dmc.video_max_steps = 3",)
    with tiny_trainer("gin/smoke/dmc_baseline.gin", task_file, bindings=bindings) as trainer:
        assert trainer.video_fps == fps
        made = []
        factory = trainer.env_factory

        def spy(**kwargs):
            made.append(factory(**kwargs))
            made[-1].close = lambda env=made[-1], close=made[-1].close: (setattr(env, "closed", True), close())
            return made[-1]

        trainer.env_factory = spy
        frames = trainer.record_episode()
    assert len(frames) == 4 and frames[0].shape[-1] == 3  # the reset frame + 3 steps, RGB
    assert len(made) == 1 and getattr(made[0], "closed", False)
