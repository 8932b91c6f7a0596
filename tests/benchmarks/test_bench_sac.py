"""Speed of one SAC update at the DMC reference size, without auxiliary losses (MLR_SPEC Part 2
§1.3): batch 512 of 9×100×100 uint8 transitions cropped to 84, 64 filters, 50-d features,
hidden 1024, an even step (critic + actor + α + target EMAs). Heavy on a CPU (several seconds
per update), hence two pedantic rounds."""

from __future__ import annotations

import torch

from mlr_registry.agents.sac import SAC


def test_bench_sac_update_full_size(benchmark):
    torch.manual_seed(0)
    b, num_actions = 512, 6
    device = "cuda" if torch.cuda.is_available() else "cpu"
    agent = SAC((9, 100, 100), num_actions, device=device)
    transitions = {"obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, device=device),
                   "next_obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, device=device),
                   "action": torch.rand(b, num_actions, device=device) * 2 - 1,
                   "reward": torch.rand(b, device=device), "not_done": torch.ones(b, device=device)}
    metrics = benchmark.pedantic(agent.update, args=(transitions, None, 0), rounds=2, iterations=1)
    assert {"critic_loss", "actor_loss", "alpha_loss", "alpha"} <= set(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
