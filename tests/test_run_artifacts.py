"""Training runs log a learning-curve PNG and, when enabled, an MP4 of one greedy episode."""

from __future__ import annotations

from pathlib import Path

import gin
import imageio.v2 as imageio
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
