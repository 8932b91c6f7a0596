"""The DMC pixel encoder (docs/faithfulness.md#dmc-sac-agent)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlr_registry.encoders.pixel_encoder import PixelEncoder, orthogonal_init
from mlr_registry.errors import ConfigError


def test_full_size_shapes_follow_the_reference():
    enc = PixelEncoder(in_channels=9)
    assert [c.stride for c in enc.convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in enc.convs] == (
        [(9, 64, (3, 3), (0, 0))] + [(64, 64, (3, 3), (0, 0))] * 3)
    assert enc.conv_output_shape == (64, 35, 35)  # 84 -> 41 -> 39 -> 37 -> 35
    assert enc.fc.in_features == 64 * 35 * 35 == 78400
    assert enc.fc.out_features == 50 and enc.ln.normalized_shape == (50,)
    assert enc.output_dim == 50 and enc.output_shape == (50,)


def test_forward_is_layernorm_without_tanh():
    torch.manual_seed(0)
    enc = PixelEncoder(in_channels=9, num_filters=8, feature_dim=8)
    with torch.no_grad():
        enc.ln.weight.fill_(3.0)  # a tanh would bound the output by 1
    x = torch.rand(4, 9, 84, 84)
    out = enc(x)
    assert out.shape == (4, 8)
    assert out.abs().max() > 1.5
    pre = enc.fc(enc.forward_conv(x))
    expected = 3.0 * (pre - pre.mean(-1, keepdim=True)) / torch.sqrt(pre.var(-1, unbiased=False, keepdim=True)
                                                                   + 1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_conv_sizes_for_other_inputs_and_input_scale():
    enc = PixelEncoder(in_channels=3, image_size=64, num_layers=2, num_filters=4, feature_dim=5)
    assert enc.conv_output_shape == (4, 29, 29)  # 64 -> 31 -> 29
    assert enc(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    scaled = PixelEncoder(in_channels=3, image_size=64, num_layers=2, num_filters=4, feature_dim=5,
                          input_scale=1 / 255)
    scaled.load_state_dict(enc.state_dict())
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(scaled(x * 255), enc(x), rtol=1e-4, atol=1e-4)


def test_detach_conv_stops_gradients_at_the_convs_only():
    enc = PixelEncoder(in_channels=9, num_filters=8, feature_dim=8)
    enc(torch.rand(2, 9, 84, 84), detach_conv=True).pow(2).sum().backward()
    assert all(c.weight.grad is None and c.bias.grad is None for c in enc.convs)
    assert enc.fc.weight.grad is not None and enc.fc.weight.grad.abs().sum() > 0
    assert enc.ln.weight.grad is not None
    enc.zero_grad()
    enc(torch.rand(2, 9, 84, 84)).pow(2).sum().backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in enc.convs)


def test_copy_conv_weights_ties_the_same_parameters():
    a = PixelEncoder(in_channels=9, num_filters=8, feature_dim=8)
    b = PixelEncoder(in_channels=9, num_filters=8, feature_dim=8)
    b.copy_conv_weights_from(a)
    for ca, cb in zip(a.convs, b.convs, strict=True):
        assert ca.weight is cb.weight and ca.bias is cb.bias
    assert b.fc.weight is not a.fc.weight and b.ln.weight is not a.ln.weight
    with torch.no_grad():
        a.convs[0].weight.add_(1.0)
    assert torch.equal(b.convs[0].weight, a.convs[0].weight)
    with pytest.raises(ConfigError, match="cannot tie"):
        PixelEncoder(in_channels=9, num_layers=2, num_filters=8).copy_conv_weights_from(a)


def test_delta_orthogonal_conv_and_orthogonal_linear_init():
    torch.manual_seed(0)
    enc = PixelEncoder(in_channels=9, num_filters=16, feature_dim=8, image_size=20)
    gain2 = 2.0  # relu gain sqrt(2), squared
    for conv in enc.convs:
        w = conv.weight.detach()
        off_center = w.clone()
        off_center[:, :, 1, 1] = 0
        assert torch.count_nonzero(off_center) == 0
        assert torch.count_nonzero(conv.bias) == 0
        center = w[:, :, 1, 1]  # (out in)
        gram = center.T @ center if center.shape[0] >= center.shape[1] else center @ center.T
        torch.testing.assert_close(gram, gain2 * torch.eye(gram.shape[0]), rtol=1e-4, atol=1e-4)
    fc = enc.fc.weight.detach()  # (8, 16*4*4): orthonormal rows
    torch.testing.assert_close(fc @ fc.T, torch.eye(8), rtol=1e-4, atol=1e-4)
    assert torch.count_nonzero(enc.fc.bias) == 0
    assert torch.equal(enc.ln.weight, torch.ones(8)) and torch.equal(enc.ln.bias, torch.zeros(8))


def test_orthogonal_init_rejects_even_kernels():
    with pytest.raises(ConfigError, match="odd conv kernels"):
        orthogonal_init(nn.Conv2d(3, 4, 2))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_layers": 0}, "num_layers"), ({"num_filters": 0}, "num_filters"),
    ({"feature_dim": 0}, "feature_dim"), ({"input_scale": 0.0}, "input_scale"),
    ({"image_size": 8}, "image_size"), ({"in_channels": 0}, "in_channels"),
])
def test_bad_parameters_are_config_errors(kwargs, match):
    params = {"in_channels": 9, **kwargs}
    with pytest.raises(ConfigError, match=match):
        PixelEncoder(**params)
