"""What the CLI needs from a trainer (the ``trainer`` registry kind).

A trainer owns the loop, evaluation, progress display and metric logging; it is the only
component that talks to tracking. Tags follow DESIGN.md's run conventions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """The slice of :class:`mlr_registry.tracking.mlflow_run.TrackedRun` a trainer uses."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...


@runtime_checkable
class Trainer(Protocol):
    def run_tags(self) -> dict[str, str]:
        """benchmark, env, agent, objective and seed tags of this run."""
        ...

    def train(self, tracker: Tracker) -> dict[str, float]:
        """Run to completion, logging to ``tracker``; returns the final metrics. Resumable
        trainers also accept ``checkpointer=`` (:mod:`mlr_registry.training.checkpoint`) and
        have ``state_dict()`` / ``load_state_dict(state)``; the CLI checks for them, and runs a
        trainer without them (a plugin's, say) without checkpoints."""
        ...
