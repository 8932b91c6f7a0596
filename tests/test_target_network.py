"""Target-network updates: one multi-tensor op, the same numbers as per-tensor lerp_ / copy_."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    online = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5))
    online(torch.randn(2, 3, 8, 8))  # materialize the lazy layer, move BatchNorm's running stats
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()(torch.randn(2, 3, 8, 8) * 3)
    return online, target


def test_ema_update_equals_per_tensor_lerp_and_leaves_buffers():
    from mlr_registry.target_network import ema_update

    online, target = _pair()
    expected = [pt.detach().clone().lerp_(po, 0.05) for po, pt in zip(online.parameters(), target.parameters(),
                                                                         strict=True)]
    buffers = [b.clone() for b in target.buffers()]
    ema_update(online, target, 0.05)
    assert all(torch.equal(p, e) for p, e in zip(target.parameters(), expected, strict=True))
    assert all(torch.equal(b, e) for b, e in zip(target.buffers(), buffers, strict=True))
    assert not torch.equal(target[0].weight, online[0].weight)


def test_hard_update_copies_parameters_and_buffers_exactly():
    from mlr_registry.target_network import hard_update

    online, target = _pair()
    hard_update(online, target)
    for key, value in online.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["ema_update", "hard_update"])
def test_a_target_that_is_not_a_copy_is_refused(name):
    import mlr_registry.target_network as tn

    online, target = nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    args = (online, target, 0.1) if name == "ema_update" else (online, target)
    with pytest.raises(ValueError, match=f"{name}: the online module has 2 .*a target must be a copy"):
        getattr(tn, name)(*args)


def test_modules_without_tensors_are_a_no_op():
    # an ablation's projector can be nn.Identity(): nothing to update, no error
    from mlr_registry.target_network import ema_update, hard_update

    ema_update(nn.Identity(), nn.Identity(), 0.01)
    hard_update(nn.Identity(), nn.Identity())


@pytest.mark.parametrize("name", ["ema_update", "hard_update"])
def test_a_target_of_other_shapes_is_refused_not_broadcast(name):
    import mlr_registry.target_network as tn

    online, target = nn.Linear(1, 5), nn.Linear(3, 5)
    args = (online, target, 0.5) if name == "ema_update" else (online, target)
    with pytest.raises(ValueError, match=rf"{name}: parameters 0 is \(5, 1\) online but \(5, 3\) in the target"):
        getattr(tn, name)(*args)


def test_target_update_copies_at_tau_one_and_averages_below():
    from mlr_registry.target_network import target_update

    online, target = _pair()
    averaged = [pt.detach().clone().lerp_(po, 0.25)
                for po, pt in zip(online.parameters(), target.parameters(), strict=True)]
    buffers = [b.clone() for b in target.buffers()]
    target_update(online, target, 0.25)  # parameters averaged, buffers kept
    assert all(torch.equal(p, e) for p, e in zip(target.parameters(), averaged, strict=True))
    assert all(torch.equal(b, e) for b, e in zip(target.buffers(), buffers, strict=True))
    target_update(online, target, 1.0)  # parameters and buffers copied
    for key, value in online.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_declared_target_network_updates_as_its_rule_says():
    from mlr_registry.target_network import TargetNetwork, ema_update, hard_update

    for tau, exact_at_one, rule in ((1.0, True, hard_update), (1.0, False, lambda o, t: ema_update(o, t, 1.0)),
                                    (0.05, True, lambda o, t: ema_update(o, t, 0.05))):
        online, target = _pair()
        expected = copy.deepcopy(target)
        rule(online, expected)
        TargetNetwork(online, target, tau, exact_at_one).update()
        for a, b in zip(expected.state_dict().values(), target.state_dict().values(), strict=True):
            assert torch.equal(a, b)
