"""BBF's Impala encoder (mlr_registry/encoders/impala_cnn.py): sizes, JAX's "same" pooling, the
residual wiring, the init and the renormalized output, and Rainbow learning through it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlr_registry import registry
from mlr_registry.agents.rainbow import Rainbow
from mlr_registry.batch import Batch
from mlr_registry.encoders.impala_cnn import ImpalaCNN, same_max_pool


def test_bbf_sizes_and_parameter_count():
    """BBF at 84x84: widths (16, 32, 32) x 4, two blocks per stage: a 128x11x11 map."""
    enc = ImpalaCNN(in_channels=4)
    assert enc.output_shape == (128, 11, 11) and enc.output_dim == 15_488
    conv = lambda c_in, c_out: 9 * c_in * c_out + c_out  # noqa: E731 - 3x3 kernel + bias
    expected = sum(conv(c_in, c) + 2 * 2 * conv(c, c) for c_in, c in ((4, 64), (64, 128), (128, 128)))
    assert sum(p.numel() for p in enc.parameters()) == expected == 1_552_192
    out = enc(torch.rand(3, 4, 84, 84))
    assert out.shape == (3, 15_488)
    assert torch.allclose(out.amin(1), torch.zeros(3)) and torch.allclose(out.amax(1), torch.ones(3), atol=1e-4)


def _jax_same_pool_by_hand(x: torch.Tensor, k: int = 3, s: int = 2) -> torch.Tensor:
    """Every output cell the max over its window, cells outside the input skipped (−∞ padding),
    windows placed as JAX's SAME places them: the smaller half of the padding before."""
    n = x.shape[-1]
    out_n = math.ceil(n / s)
    before = max((out_n - 1) * s + k - n, 0) // 2
    out = torch.empty(*x.shape[:-2], out_n, out_n)
    for i in range(out_n):
        for j in range(out_n):
            r0, c0 = i * s - before, j * s - before
            window = x[..., max(r0, 0):r0 + k, max(c0, 0):c0 + k]
            out[..., i, j] = window.amax(dim=(-2, -1))
    return out


@pytest.mark.parametrize("n", [84, 42, 21, 11, 8])
def test_max_pool_pads_as_jax_same(n):
    x = torch.randn(2, 3, n, n) - 5  # all negative: a zero padding would show
    torch.testing.assert_close(same_max_pool(x), _jax_same_pool_by_hand(x), rtol=0, atol=0)
    assert same_max_pool(x).shape[-1] == math.ceil(n / 2)


def test_stages_and_residual_blocks_are_wired_as_impala():
    torch.manual_seed(0)
    enc = ImpalaCNN(in_channels=2, channels=(3, 4, 4), width_scale=1, num_blocks=1, image_size=20, renormalize=False)
    x = torch.rand(2, 2, 20, 20)
    h = x
    for stage in enc.stages:
        h = same_max_pool(stage.conv(h))
        block = stage.blocks[0]
        h = h + block.conv2(F.relu(block.conv1(F.relu(h))))
    torch.testing.assert_close(enc(x), F.relu(h).flatten(1))
    assert enc.output_shape == (4, 3, 3)  # 20 -> 10 -> 5 -> 3


def test_convs_start_xavier_uniform_with_zero_bias():
    enc = ImpalaCNN(in_channels=4)
    for conv in (m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)):
        fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def test_is_registered_and_rainbow_trains_through_it():
    registry.load_all()
    assert "impala_cnn" in [c.name for c in registry.components("encoder")]
    torch.manual_seed(0)
    agent = Rainbow((4, 84, 84), 3, encoder=lambda in_channels: ImpalaCNN(in_channels, channels=(2, 4, 4),
                                                                          width_scale=1),
                    hidden_size=16, n_step=3)
    assert agent.latent_dim == 4 * 11 * 11
    g = torch.Generator().manual_seed(1)
    b, t = 4, 5
    batch = Batch(obs=torch.randint(0, 256, (b, t, 4, 84, 84), dtype=torch.uint8, generator=g),
                  action=torch.randint(0, 3, (b, t), generator=g), reward=torch.zeros(b, t),
                  done=torch.zeros(b, t, dtype=torch.bool), returns=torch.rand(b, t, generator=g),
                  done_n=torch.zeros(b, t, dtype=torch.bool), weights=torch.ones(b), indices=torch.arange(b))
    before = [p.detach().clone() for p in agent.encoder.parameters()]
    metrics = agent.update(batch)
    assert math.isfinite(metrics["rl_loss"]) and metrics.priorities.shape == (b,)
    assert any(not torch.equal(p, q) for p, q in zip(before, agent.encoder.parameters(), strict=True))
