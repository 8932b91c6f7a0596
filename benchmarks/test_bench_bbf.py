"""BBF speed at its published size: one update (SPR included) and one acting step.

Full size: 84×84 frames, the Impala encoder at width scale 4 (15,488-d latents), the 2048-wide
head, batch 32, t = 6 + 10 = 16 steps, 18 actions (39.8M trainable parameters). Runs on CUDA
when available, else CPU. The update takes seconds on a CPU, so it runs only with
--benchmark-enable (tox -e bench); acting runs once under plain pytest.
"""

from __future__ import annotations

import pytest
import torch

from mlr_registry.agents.bbf import BBF
from mlr_registry.batch import Batch
from mlr_registry.losses.spr import SPRLoss

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, T, A = 32, 16, 18


def _agent() -> BBF:
    torch.manual_seed(0)
    spr = SPRLoss(target="agent", share_latent=True, norm="none", init="xavier", renormalize_eps=1e-5,
                  normalize_eps=1e-12)
    return BBF((4, 84, 84), A, aux_losses=[spr], device=DEVICE)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def test_bench_bbf_update(benchmark):
    if benchmark.disabled:
        pytest.skip("full-size BBF update (seconds on a CPU) runs only with --benchmark-enable (tox -e bench)")
    g = torch.Generator().manual_seed(0)
    batch = Batch(obs=torch.randint(0, 256, (B, T, 4, 84, 84), dtype=torch.uint8, generator=g),
                  action=torch.randint(0, A, (B, T), generator=g), reward=torch.zeros(B, T),
                  done=torch.zeros(B, T, dtype=torch.bool), weights=torch.ones(B), indices=torch.arange(B)).to(DEVICE)
    agent = _agent()
    agent.update(batch)  # warm-up: AdamW state, kernels

    def step():
        metrics = agent.update(batch)
        _sync()
        return metrics

    metrics = benchmark.pedantic(step, rounds=3, iterations=1)
    assert set(metrics) >= {"rl_loss", "spr_loss", "grad_norm"} and metrics.priorities.shape == (B,)


def test_bench_bbf_act(benchmark):
    agent = _agent()
    obs = torch.randint(0, 256, (4, 84, 84), dtype=torch.uint8, device=DEVICE)

    def act():
        action = agent.act(obs, epsilon=0.0)
        _sync()
        return action

    action = benchmark.pedantic(act, rounds=3, iterations=5)
    assert action.shape == (1,) and 0 <= int(action) < A
