"""Learning tests: the Baseline and MLR agents (the paper's Rainbow and MLR loss at small widths)
and BBF solve Catch, a built-in pixel game, within a few CPU minutes. Random play scores -0.59 on the
5x5 board (21% of balls caught); the threshold 0.3 means at least 65% caught."""

from __future__ import annotations

import pytest
from conftest import train_in_process

RANDOM_SCORE = -0.59
THRESHOLD = 0.3


@pytest.mark.slow(minutes=0.8)
def test_baseline_learns_catch():
    rec = train_in_process("gin/learning/catch_baseline.gin")
    final = rec.history["final_return"][-1]
    assert final >= THRESHOLD, f"Baseline scored {final} on Catch (random {RANDOM_SCORE})"
    losses = rec.history["train/rl_loss"]
    assert losses[-1] < losses[0]


@pytest.mark.slow(minutes=2.7)
def test_mlr_learns_catch_and_reduces_its_loss():
    rec = train_in_process("gin/learning/catch_mlr.gin")
    final = rec.history["final_return"][-1]
    assert final >= THRESHOLD, f"MLR scored {final} on Catch (random {RANDOM_SCORE})"
    mlr = rec.history["train/mlr_loss"]
    assert mlr[-1] < mlr[0], f"MLR loss did not decrease: {mlr}"


@pytest.mark.slow(minutes=1.4)
def test_bbf_learns_catch_through_its_resets():
    rec = train_in_process("gin/learning/catch_bbf.gin")
    final = rec.history["final_return"][-1]
    assert final >= THRESHOLD, f"BBF scored {final} on Catch (random {RANDOM_SCORE})"
    assert rec.history["train/resets"][-1] == 2  # at steps 1000 and 2000, and it recovered
    assert rec.history["train/spr_loss"][-1] < rec.history["train/spr_loss"][0]
