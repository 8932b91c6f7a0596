"""NatureCNN: shapes, layer structure and per-sample min-max renormalization (docs/faithfulness.md#atari-agent)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlr_registry.encoders.nature_cnn import NatureCNN
from mlr_registry.errors import ConfigError


def test_default_shapes_match_the_reference():
    enc = NatureCNN(in_channels=4)
    assert enc.output_dim == 3136
    assert enc.output_shape == (64, 7, 7)
    out = enc(torch.rand(3, 4, 84, 84))
    assert out.shape == (3, 3136)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (4, 32, (8, 8), (4, 4), (0, 0)), (32, 64, (4, 4), (2, 2), (0, 0)), (64, 64, (3, 3), (1, 1), (0, 0))]
    norms = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.Dropout)
    assert not any(isinstance(m, norms) for m in enc.modules())


def test_tiny_channels_and_other_image_sizes():
    enc = NatureCNN(in_channels=9, channels=(8, 16, 16), image_size=100)
    # 100 -> (100-8)//4+1 = 24 -> (24-4)//2+1 = 11 -> 11-3+1 = 9
    assert enc.output_shape == (16, 9, 9) and enc.output_dim == 16 * 81
    assert enc(torch.rand(2, 9, 100, 100)).shape == (2, 16 * 81)


def test_renormalize_is_per_sample_min_max():
    torch.manual_seed(0)
    enc = NatureCNN(in_channels=4, channels=(8, 16, 16))
    x = torch.rand(5, 4, 84, 84)
    x[1] *= 7.0  # a differently scaled sample must not affect the others
    out = enc(x)
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    torch.testing.assert_close(out.min(dim=1).values, torch.zeros(5))
    torch.testing.assert_close(out.max(dim=1).values, torch.ones(5))
    raw = enc.convs(x).flatten(1)
    lo, hi = raw.min(1, keepdim=True).values, raw.max(1, keepdim=True).values
    expected = (raw - lo) / (hi - lo)
    torch.testing.assert_close(out, expected)
    # flattening order is C·H·W, as the reference's view(...)
    torch.testing.assert_close(enc.convs(x)[0, 2, 3, 4], raw[0, 2 * 49 + 3 * 7 + 4])
    torch.testing.assert_close(enc(x[2:3]), out[2:3])


def test_renormalize_off_and_eps():
    enc = NatureCNN(in_channels=4, channels=(8, 16, 16), renormalize=False)
    x = torch.rand(2, 4, 84, 84)
    torch.testing.assert_close(enc(x), enc.convs(x).flatten(1))
    # Faithful default: a constant feature map gives NaN, as the reference; an eps avoids it.
    const = NatureCNN(in_channels=4, channels=(8, 16, 16))
    with torch.no_grad():
        for m in const.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.fill_(0.5)
    assert torch.isnan(const(x)).all()
    const.renormalize_eps = 1e-6
    assert torch.equal(const(x), torch.zeros(2, 16 * 49))


@pytest.mark.parametrize("kwargs, word", [
    (dict(in_channels=0), "in_channels"),
    (dict(in_channels=4, channels=(32, 64), kernels=(8, 4, 3)), "same length"),
    (dict(in_channels=4, strides=(4, 0, 1)), "strides"),
    (dict(in_channels=4, image_size=20), "image_size"),
    (dict(in_channels=4, renormalize_eps=-1.0), "renormalize_eps"),
])
def test_bad_parameters_are_config_errors(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        NatureCNN(**kwargs)
