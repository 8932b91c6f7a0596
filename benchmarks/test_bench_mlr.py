"""Speed of MLR's hot path: the cube masker at Atari full size, and one MLR loss forward +
backward at a small width (d = 256 instead of 3136) so that it stays quick on a CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.losses.auxiliary import LossContext
from mlr_registry.losses.mlr import MLRLoss
from mlr_registry.maskers.cube import CubeMasker


class _SmallAtariAgent(nn.Module):
    """Nature-CNN-shaped encoder on 4×84×84 ending in 16×4×4 = 256 features, a 64-d projector,
    identity augmentation."""

    num_actions = 18
    discrete_actions = True

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 16, 3, stride=2), nn.ReLU(), nn.Flatten())  # 84 → 20 → 9 → 4
        self.projector = nn.Linear(256, 64)

    latent_dim = 256
    latent_shape = (16, 4, 4)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_bench_cube_masker_atari(benchmark):
    obs = torch.zeros(32, 16, 4, 84, 84, dtype=torch.uint8)
    masker = CubeMasker(seed=0)
    mask = benchmark(masker, obs)
    assert mask.shape == (32, 16, 1, 84, 84)


@pytest.mark.parametrize("b", [8])
def test_bench_mlr_loss_forward_backward_small(benchmark, b):
    torch.manual_seed(0)
    agent = _SmallAtariAgent()
    loss = MLRLoss(masker=CubeMasker(seed=0))
    context = LossContext(encoder=agent.encoder, augment=agent.augment, latent_dim=agent.latent_dim,
                          latent_shape=agent.latent_shape, observation_shape=(4, 84, 84),
                          num_actions=agent.num_actions, discrete_actions=True, device=torch.device("cpu"),
                          projector=agent.projector)
    loss.setup(context)
    batch = Batch(obs=torch.randint(0, 256, (b, 26, 4, 84, 84), dtype=torch.uint8),
                  action=torch.randint(0, 18, (b, 26)), reward=torch.zeros(b, 26),
                  done=torch.zeros(b, 26, dtype=torch.bool), weights=torch.ones(b))

    def step() -> float:
        agent.zero_grad(set_to_none=True)
        loss.zero_grad(set_to_none=True)
        out = loss(batch, context).total()
        out.backward()
        for target in loss.target_networks():
            target.update()
        return out.item()

    value = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    assert 0.0 <= value <= 4.0
