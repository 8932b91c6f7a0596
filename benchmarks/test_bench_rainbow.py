"""Rainbow speed at the paper's size: the "Baseline" update (no aux loss) and one acting step.

Full size: 84×84 frames, NatureCNN (32, 64, 64), batch 32, t = 16 + 10 = 26 steps, 6 actions.
Runs on CUDA when available, else CPU. Under plain pytest (--benchmark-disable) each runs once.
"""

from __future__ import annotations

import torch

from mlr_registry.agents.rainbow import Rainbow
from mlr_registry.batch import Batch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, T, A = 32, 26, 6


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        obs=torch.randint(0, 256, (B, T, 4, 84, 84), dtype=torch.uint8, generator=g),
        action=torch.randint(0, A, (B, T), generator=g),
        reward=torch.zeros(B, T),
        done=torch.zeros(B, T, dtype=torch.bool),
        returns=torch.randn(B, 16, generator=g),
        done_n=torch.zeros(B, 16, dtype=torch.bool),
        weights=torch.ones(B),
        indices=torch.arange(B),
    ).to(DEVICE)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def test_bench_rainbow_baseline_update(benchmark):
    torch.manual_seed(0)
    agent = Rainbow((4, 84, 84), A, device=DEVICE)
    batch = _batch()
    agent.update(batch)  # warm-up: Adam state, kernels

    def step():
        metrics = agent.update(batch)
        _sync()
        return metrics

    metrics = benchmark.pedantic(step, rounds=3, iterations=1)
    assert set(metrics) >= {"rl_loss", "grad_norm"}
    assert metrics.priorities.shape == (B,)


def test_bench_rainbow_act(benchmark):
    torch.manual_seed(0)
    agent = Rainbow((4, 84, 84), A, device=DEVICE)
    obs = torch.randint(0, 256, (4, 84, 84), dtype=torch.uint8, device=DEVICE)

    def act():
        action = agent.act(obs, epsilon=0.0, greedy=False)
        _sync()
        return action

    action = benchmark.pedantic(act, rounds=3, iterations=5)
    assert action.shape == (1,) and 0 <= int(action) < A


def test_bench_rainbow_mlr_update(benchmark):
    """The full-size MLR update: Rainbow + the MLR loss (157M-parameter transformer over 1,024
    tokens of 3,136 dims). Seconds per update on a CPU, so only with --benchmark-enable."""
    if benchmark.disabled:
        import pytest

        pytest.skip("full-size MLR update (seconds on a CPU) runs only with --benchmark-enable (tox -e bench)")
    from mlr_registry.losses.mlr import MLRLoss

    torch.manual_seed(0)
    agent = Rainbow((4, 84, 84), A, device=DEVICE, aux_losses=[MLRLoss()])
    batch = _batch()
    agent.update(batch)

    def step():
        metrics = agent.update(batch)
        _sync()
        return metrics

    metrics = benchmark.pedantic(step, rounds=3, iterations=1)
    assert {"rl_loss", "mlr_loss"} <= set(metrics)
