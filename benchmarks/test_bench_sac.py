"""Speed of one SAC update without auxiliary losses, on an even step (critic + actor + α +
target EMAs) on 9×100×100 uint8 transitions cropped to 84.

"full" is the DMC reference size (batch 512, 64 filters, 50-d features,
hidden 1024), 30-50 s per update on a 2-core CPU, so it runs only when benchmarks are enabled
(``tox -e bench``), two pedantic rounds. "small" keeps the path exercised by the default test run.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from mlr_registry.agents.sac import SAC
from mlr_registry.encoders.pixel_encoder import PixelEncoder

SIZES = {  # name: (batch, num_filters, hidden_dim)
    "small": (16, 8, 64),
    "full": (512, 64, 1024),
}


@pytest.mark.parametrize("size", list(SIZES))
def test_bench_sac_update(benchmark, size):
    if size == "full" and benchmark.disabled:
        pytest.skip("full-size SAC update (30-50 s on a CPU) runs only with --benchmark-enable (tox -e bench)")
    b, filters, hidden = SIZES[size]
    torch.manual_seed(0)
    num_actions = 6
    device = "cuda" if torch.cuda.is_available() else "cpu"
    agent = SAC((9, 100, 100), num_actions, device=device, hidden_dim=hidden,
                encoder=functools.partial(PixelEncoder, num_filters=filters))
    transitions = {"obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, device=device),
                   "next_obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, device=device),
                   "action": torch.rand(b, num_actions, device=device) * 2 - 1,
                   "reward": torch.rand(b, device=device), "not_done": torch.ones(b, device=device)}
    metrics = benchmark.pedantic(agent.update, args=(transitions, None, 0), rounds=2, iterations=1)
    assert {"critic_loss", "actor_loss", "alpha_loss", "alpha"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())


def test_bench_sac_mlr_update(benchmark):
    """The full-size DMC MLR update: SAC batch 512 plus 128 sequences of 16 frames through the
    online and target encoders, transformer width 50. Only with --benchmark-enable."""
    if benchmark.disabled:
        pytest.skip("full-size SAC + MLR update runs only with --benchmark-enable (tox -e bench)")
    from mlr_registry.batch import Batch
    from mlr_registry.decoders.transformer import TransformerDecoder
    from mlr_registry.losses.mlr import MLRLoss
    from mlr_registry.maskers.cube import CubeMasker

    torch.manual_seed(0)
    num_actions, device = 6, ("cuda" if torch.cuda.is_available() else "cpu")
    loss = MLRLoss(masker=CubeMasker(patch_size=10, block_size=8),
                   decoder=functools.partial(TransformerDecoder, init="trunc_normal"),
                   target_tau=0.05, projector="mlp", predictor="mlp", unnormalized_masked_input=False,
                   init="trunc_normal", reinit_encoder_linear=True, lr_warmup=6000)
    agent = SAC((9, 100, 100), num_actions, device=device, aux_losses=[loss])
    b = 512
    transitions = {"obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, device=device),
                   "next_obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, device=device),
                   "action": torch.rand(b, num_actions, device=device) * 2 - 1,
                   "reward": torch.rand(b, device=device), "not_done": torch.ones(b, device=device)}
    sequences = Batch(obs=torch.randint(0, 256, (128, 16, 9, 100, 100), dtype=torch.uint8, device=device),
                      action=torch.rand(128, 16, num_actions, device=device) * 2 - 1,
                      reward=torch.zeros(128, 16, device=device),
                      done=torch.zeros(128, 16, dtype=torch.bool, device=device))
    metrics = benchmark.pedantic(agent.update, args=(transitions, sequences, 0), rounds=1, iterations=1)
    assert {"critic_loss", "mlr_loss"} <= set(metrics)
