"""Learning tests for DMC: the Baseline (pixel SAC) and MLR (SAC + the MLR loss) learn
cartpole-swingup from 40x40 pixels in a few CPU minutes, through the real trainer.

Setting (gin/learning/dmc_baseline.gin; dmc_mlr.gin adds MLR): 500-env-step episodes (63 agent
steps at action repeat 8), 16k env steps = 1900 updates, 5 deterministic evaluation episodes at
0, 4k, 8k, 12k and 16k env steps. The pole starts hanging down; what SAC learns first is to pump
it into full swings, worth ~70-140 per episode. Reference scores, same protocol:
- uniform random actions: 43 +- 30 per episode (40 episodes), so a 5-episode mean is 43 +- 13;
- the untrained agent (step-0 evaluation): 2-10.
The deterministic policy sometimes falls back to weak swings (~35-50) at one evaluation and
recovers at the next, so one final evaluation above random would be flaky. The tests assert the
BEST evaluation >= 70 (2 standard errors above the best of three random 5-episode means, ~55),
a final evaluation >= 30 (no collapse back to the untrained 2-10: below the weak swings' band)
and >= the step-0 evaluation + 20.
Measured (evaluations at 0/4k/8k/12k/16k): Baseline seed 0: 9.6, 18.5, 87.9, 45.5, 93.0, and
on another 2-core Xeon (whose one-thread kernels round differently) 9.6, 30.3, 103.7, 36.6, 36.1;
MLR seed 1: 2.2, 55.9, 33.2, 48.9, 79.9; MLR seed 2: 8.1, 48.6, 73.5, 120.0, 117.7. Final
scores with evaluations at 0 and 16k only: Baseline seeds 0/1/2: 71/121/138. 3.2-3.9 min wall
per test at 1 torch thread on an otherwise idle core; Baseline 2.6 min at 2 threads."""

from __future__ import annotations

import pytest
from conftest import RecordingTracker, train_in_process

RANDOM_SCORE = 43.0
BEST_THRESHOLD = 70.0
FINAL_THRESHOLD = 30.0


def _check_learned(rec: RecordingTracker, name: str, num_evals: int) -> None:
    evals = rec.history["eval/return_mean"]  # step 0, every 4k env steps, then the final one
    assert len(evals) == num_evals, evals
    start, final = evals[0], rec.history["final_return"][-1]
    assert final == evals[-1]
    assert max(evals) >= BEST_THRESHOLD, f"{name} never beat {BEST_THRESHOLD} (random {RANDOM_SCORE}): {evals}"
    assert final >= FINAL_THRESHOLD, f"{name} ended at {final} (random {RANDOM_SCORE}): {evals}"
    assert final >= start + 20, f"{name} went from {start} to {final} only: {evals}"


@pytest.mark.slow(minutes=3.0)
def test_baseline_learns_cartpole_swingup():
    rec = train_in_process("gin/learning/dmc_baseline.gin")
    _check_learned(rec, "Baseline", num_evals=5)  # 0, 4k, 8k, 12k, final 16k
    critic = rec.history["train/critic_loss"]
    assert all(v == v for v in critic), f"critic loss became NaN: {critic}"


@pytest.mark.slow(minutes=3.7)
def test_mlr_learns_cartpole_swingup_and_reduces_its_loss():
    rec = train_in_process("gin/learning/dmc_mlr.gin")
    _check_learned(rec, "MLR", num_evals=5)  # 0, 4k, 8k, 12k, final 16k
    # 2 - 2cos per (b, t), in [0, 4]. Over 1900 updates it does not fall monotonically (seed 0:
    # 0.19 -> 0.16 -> 0.29 as the RL-driven encoder's features diversify), so the check is that
    # the MLR path ran and its predictions agree with the targets (cos > 0.5) throughout.
    mlr = rec.history["train/mlr_loss"]
    assert len(mlr) == 8 and all(0.0 <= v < 1.0 for v in mlr), f"MLR loss out of range: {mlr}"
    assert max(rec.history["train/aux_lr"]) > 0.0
