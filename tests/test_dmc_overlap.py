"""Overlapping the DMC env step with the update (``trainers.dmc.overlap_env_step``) changes
nothing but wall time: every logged metric is identical, step for step."""

from __future__ import annotations

import pytest
from conftest import train_in_process

from mlr_registry import registry
from mlr_registry.dry_run import tiny_bindings

# The env thread's EGL context must be freed on that thread, not left to the garbage collector.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def test_overlapped_env_step_gives_identical_metrics():
    registry.load_all()
    files = ("gin/dmc_mlr.gin",)
    base = (*tiny_bindings(files, []), "trainers.dmc.eval_every = 80")
    runs = [train_in_process(*files, bindings=(*base, f"trainers.dmc.overlap_env_step = {flag}"))
            for flag in (False, True)]
    reference, overlapped = ({k: v for k, v in run.history.items() if not k.startswith("throughput/")}
                             for run in runs)
    assert "train/mlr_loss" in reference and len(reference["eval/return_mean"]) == 3  # 0, 80, final 160
    assert overlapped == reference
