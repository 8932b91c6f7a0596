"""Run artifacts the trainers write: a learning-curve plot and an evaluation video.

Trainers record curves through :class:`CurveTracker` (a pass-through wrapper of the tracker) and
log the files at the end of training; nothing here touches models.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

CURVE_KEYS = ("eval/return_mean", "train/episode_return")


class CurveTracker:
    """Forwards everything to ``tracker`` and keeps (step, value) series of ``keys``."""

    def __init__(self, tracker, keys: Sequence[str] = CURVE_KEYS):
        self.tracker = tracker
        self.curves: dict[str, list[tuple[int, float]]] = {k: [] for k in keys}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            if key in self.curves:
                self.curves[key].append((int(step), float(value)))
        self.tracker.log_metrics(metrics, step)

    def state_dict(self) -> dict[str, list[tuple[int, float]]]:
        """The series so far (a checkpoint keeps them so a resumed run plots the whole curve)."""
        return {k: list(v) for k, v in self.curves.items()}

    def load_state_dict(self, state: Mapping[str, list[tuple[int, float]]]) -> None:
        for key, points in state.items():
            self.curves[key] = [(int(s), float(v)) for s, v in points]

    def __getattr__(self, name):  # log_artifact, log_text, set_tags, flush, ...
        return getattr(self.tracker, name)


def plot_learning_curves(curves: Mapping[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """One panel per non-empty series; training episode returns are also smoothed (window 10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: v for k, v in curves.items() if v}
    fig, axes = plt.subplots(1, max(len(series), 1), figsize=(5.5 * max(len(series), 1), 3.8), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items(), strict=False):
        steps, values = map(np.asarray, zip(*points, strict=True))
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, alpha=0.5 if len(steps) >= 30 else 1)
        if len(values) >= 30:
            smooth = np.convolve(values, np.ones(10) / 10, mode="valid")
            ax.plot(steps[9:], smooth, color="black", label="mean of 10")
            ax.legend()
        ax.set_xlabel("env step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_video(frames: Sequence[np.ndarray], path: Path, fps: int = 30, scale: int = 3) -> Path:
    """MP4 of ``frames`` ((h w) gray or (h w 3) RGB uint8), each pixel upscaled ``scale``×."""
    import imageio.v2 as imageio

    big = [np.repeat(np.repeat(f, scale, axis=0), scale, axis=1) for f in frames]
    imageio.mimwrite(path, big, fps=fps, macro_block_size=1)
    return path


def log_run_artifacts(tracker, curves: Mapping[str, list[tuple[int, float]]], title: str,
                      frames: Sequence[np.ndarray] | None, fps: int) -> None:
    """Write the learning-curve PNG (and the video when frames are given) and log them."""
    with tempfile.TemporaryDirectory(prefix="mlr_registry_") as tmp:
        tracker.log_artifact(plot_learning_curves(curves, Path(tmp) / "learning_curve.png", title), "plots")
        if frames:
            tracker.log_artifact(write_video(frames, Path(tmp) / "eval_policy.mp4", fps=fps), "videos")
