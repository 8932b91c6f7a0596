"""Update metrics that stay on the device (LazyMetrics) and the trainers' window that averages
them without a transfer per update (MetricWindow)."""

from __future__ import annotations

import math

import pytest
import torch

from mlr_registry.agents.metrics import LazyMetrics, to_floats
from mlr_registry.training.metric_window import MetricWindow


def test_to_floats_merges_tensors_and_numbers_in_order():
    out = to_floats({"a": torch.tensor(1.5), "lr": 0.25}, {"b": torch.tensor([2.0]), "a": torch.tensor(3.0)})
    assert out == {"a": 3.0, "lr": 0.25, "b": 2.0} and list(out) == ["a", "lr", "b"]
    assert all(type(v) is float for v in out.values())


def test_lazy_metrics_read_like_a_dict_of_floats():
    m = LazyMetrics({"mlr_loss": torch.tensor(0.5, requires_grad=True) * 2}, {"rl_loss": torch.tensor(2.0),
                                                                          "aux_lr": 1e-4})
    assert list(m) == ["mlr_loss", "rl_loss", "aux_lr"] and len(m) == 3
    pending = m.pending()  # before any read: the tensors, detached
    assert pending is not None and not pending["mlr_loss"].requires_grad and pending["aux_lr"] == 1e-4
    assert m["mlr_loss"] == 1.0 and type(m["rl_loss"]) is float
    assert m.pending() is None  # read once: converted and cached
    assert m == {"mlr_loss": 1.0, "rl_loss": 2.0, "aux_lr": 1e-4} and dict(m)["aux_lr"] == 1e-4
    with pytest.raises(KeyError):
        m["missing"]


def _sac_like(step: int) -> dict:
    """Metric sets that differ between updates (SAC: the actor's every 2nd step), plus a number."""
    values = {"critic_loss": torch.tensor(1.0 / (step + 3), dtype=torch.float32), "aux_lr": 1e-3 * step}
    if step % 2 == 0:
        values["actor_loss"] = torch.tensor(-0.1 * step + 1 / 7)
    return values


def test_window_sums_pending_metrics_on_the_device_and_equals_the_float_path():
    lazy, eager = MetricWindow(), MetricWindow()
    added = [LazyMetrics(_sac_like(step)) for step in range(7)]
    for step, metrics in enumerate(added):
        lazy.add(metrics)
        eager.add(to_floats(_sac_like(step)))
    assert all(m.pending() is not None for m in added)  # the window read none of them
    out_lazy, out_eager = lazy.flush(70, 7), eager.flush(70, 7)
    for key in ("train/critic_loss", "train/actor_loss", "train/aux_lr"):
        assert out_lazy[key] == out_eager[key], key  # bit for bit: the same float64 sums in the same order
    assert out_lazy["train/actor_loss"] == pytest.approx(sum(-0.1 * s + 1 / 7 for s in (0, 2, 4, 6)) / 4, rel=1e-6)
    assert not lazy and math.isfinite(out_lazy["throughput/updates_per_s"])


def test_window_state_collects_device_sums_so_a_resumed_window_continues_them():
    window = MetricWindow()
    for step in range(3):
        window.add(LazyMetrics(_sac_like(step)))
    state = window.state_dict()
    assert state["counts"] == {"aux_lr": 3, "critic_loss": 3, "actor_loss": 2}
    assert all(type(v) is float for v in state["sums"].values())  # plain numbers in the checkpoint
    resumed = MetricWindow()
    resumed.load_state_dict(state)
    for step in range(3, 5):
        window.add(LazyMetrics(_sac_like(step)))
        resumed.add(LazyMetrics(_sac_like(step)))
    a, b = window.flush(50, 5), resumed.flush(50, 5)
    assert {k: v for k, v in a.items() if k.startswith("train/")} == {k: v for k, v in b.items()
                                                                    if k.startswith("train/")}
