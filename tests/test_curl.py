"""CURL's contrastive loss (losses.curl) on the SAC agent: logits, labels, loss values, gradients,
the EMA key encoder, errors, and an end-to-end SAC update."""

from __future__ import annotations

import functools
import inspect
import math
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import loss_context, run_loss, step_targets
from torch import nn

from mlr_registry.agents.sac import SAC
from mlr_registry.batch import Batch
from mlr_registry.encoders.pixel_encoder import PixelEncoder
from mlr_registry.errors import ConfigError
from mlr_registry.losses.curl import CURLLoss, bilinear_logits
from mlr_registry.registry import load_all, lookup

A = 2
SIZE, CROP = 40, 32  # small renders and crops keep the conv encoder cheap on a CPU
SMALL_ENCODER = functools.partial(PixelEncoder, num_filters=4, feature_dim=8)


def make_agent(losses, seed: int = 0, **kwargs) -> SAC:
    torch.manual_seed(seed)
    params = {"encoder": SMALL_ENCODER, "hidden_dim": 16, "image_size": CROP, "aux_losses": losses, **kwargs}
    return SAC((9, SIZE, SIZE), A, **params)


def make_sequences(b: int = 6, t: int = 1, seed: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randint(0, 256, (b, t, 9, SIZE, SIZE), dtype=torch.uint8, generator=g),
                 action=torch.rand(b, t, A, generator=g) * 2 - 1, reward=torch.zeros(b, t),
                 done=torch.zeros(b, t, dtype=torch.bool))


def make_transitions(b: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return types.SimpleNamespace(
        obs=torch.randint(0, 256, (b, 9, SIZE, SIZE), dtype=torch.uint8, generator=g),
        next_obs=torch.randint(0, 256, (b, 9, SIZE, SIZE), dtype=torch.uint8, generator=g),
        action=torch.rand(b, A, generator=g) * 2 - 1, reward=torch.rand(b, generator=g), not_done=torch.ones(b))


class FakeHost(nn.Module):
    """A fake agent whose encoder and crop are chosen by the test (its LossContext: conftest's
    ``loss_context``)."""

    discrete_actions = False
    projector = None
    num_actions = A

    def __init__(self, encoder: nn.Module, dim: int, crop=None):
        super().__init__()
        self.encoder = encoder
        self._dim = dim
        if crop is not None:
            self.crop = crop

    @property
    def latent_dim(self) -> int:
        return self._dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self._dim,)

    def augment(self, x):
        return x


class ConstantEncoder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.value = nn.Parameter(torch.randn(dim))

    def forward(self, x):
        return self.value.expand(x.shape[0], -1)


class PixelProbe(nn.Module):
    """Features = the first ``dim`` pixels of channel 0, times a learnable scale."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.scale * x[:, 0].flatten(1)[:, :self.dim]


def test_registered_with_curl_defaults():
    load_all()
    component = lookup("loss", "curl")
    assert component.target is CURLLoss and component.selector == "losses.curl"
    params = component.parameters()
    assert params == {"weight": 1.0, "target_tau": 0.05, "augmentation": "crop", "lr_warmup": 0}


def test_bilinear_logits_shape_formula_and_row_max():
    torch.manual_seed(0)
    q, k, W = torch.randn(5, 3), torch.randn(5, 3), torch.randn(3, 3)
    logits = bilinear_logits(q, k, W)
    assert logits.shape == (5, 5)
    raw = torch.einsum("id,de,je->ij", q, W, k)  # q_i W k_j
    torch.testing.assert_close(logits, raw - raw.max(dim=1, keepdim=True).values)
    torch.testing.assert_close(logits.max(dim=1).values, torch.zeros(5))


def test_constant_embeddings_give_log_b():
    loss = CURLLoss(augmentation="augment")
    host = FakeHost(ConstantEncoder(8), 8)
    loss.setup(loss_context(host))
    value, metrics = run_loss(loss, make_sequences(b=6), host)
    assert value.item() == pytest.approx(math.log(6), rel=1e-6)
    assert float(metrics["curl_loss"]) == pytest.approx(math.log(6), rel=1e-6)


def test_labels_are_the_diagonal():
    """Distinct frames, identical views (identity crop), W = 50·I: the positive of row i is key i,
    so the loss vanishes and accuracy is 1; reversing the keys' order makes it large."""
    b, d = 6, 16
    host = FakeHost(PixelProbe(d), d, crop=lambda obs: obs)
    loss = CURLLoss()
    loss.setup(loss_context(host))
    with torch.no_grad():
        loss.W.copy_(50.0 * torch.eye(d))
    obs = torch.zeros(b, 1, 9, 4, 4, dtype=torch.uint8)
    obs.view(b, -1)[:, :d] = (255 * torch.eye(b, d)).to(torch.uint8)  # frame i lights pixel i
    batch = Batch(obs=obs, action=torch.zeros(b, 1, A), reward=torch.zeros(b, 1),
                  done=torch.zeros(b, 1, dtype=torch.bool))
    value, metrics = run_loss(loss, batch, host)
    assert value.item() < 1e-6 and metrics["curl_accuracy"] == 1.0
    q = host.encoder(obs[:, 0].float() / 255)
    flipped = F.cross_entropy(bilinear_logits(q, q.flip(0), loss.W), torch.arange(b))
    assert flipped.item() > 10.0


def test_views_are_independent_crops_of_the_agent():
    loss = CURLLoss()
    agent = make_agent([loss])
    obs = make_sequences(b=8).obs[:, 0]
    anchor, positive = loss.views(obs, agent)
    assert anchor.shape == positive.shape == (8, 9, CROP, CROP)
    assert anchor.dtype == torch.float32 and 0.0 <= anchor.min() and anchor.max() <= 1.0
    assert not torch.equal(anchor, positive)  # 8 independent offset pairs all equal: ~ (1/64)^8
    augmented = CURLLoss(augmentation="augment")
    agent2 = make_agent([augmented])
    a, p = augmented.views(obs, agent2)
    assert a.shape == (8, 9, CROP, CROP) and not torch.equal(a, p)


def test_gradients_reach_the_encoder_and_W_not_the_key_encoder():
    loss = CURLLoss()
    agent = make_agent([loss])
    value, _ = run_loss(loss, make_sequences(), agent)
    value.backward()
    assert loss.W.grad is not None and loss.W.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.critic.encoder.parameters())
    assert all(not p.requires_grad and p.grad is None for p in loss.key_encoder.parameters())
    assert loss.W.shape == (8, 8) and 0.0 <= loss.W.min() and loss.W.max() < 1.0  # torch.rand init


def test_key_encoder_ema_with_tau():
    loss = CURLLoss(target_tau=0.25)
    agent = make_agent([loss])
    before = [p.clone() for p in loss.key_encoder.parameters()]
    with torch.no_grad():
        for p in agent.critic.encoder.parameters():
            p.add_(4.0)
    step_targets(loss)
    for b0, pk in zip(before, loss.key_encoder.parameters(), strict=True):
        torch.testing.assert_close(pk, b0 + 1.0)


def test_sac_updates_keep_the_key_encoder_equal_to_the_critic_target_encoder():
    """Same start, same tau (0.05), same steps: the loss's key encoder is CURL's
    critic_target.encoder; W and the encoder learn; metrics are reported."""
    loss = CURLLoss()
    agent = make_agent([loss])
    w0 = loss.W.detach().clone()
    for step in range(3):
        metrics = agent.update(make_transitions(seed=step), make_sequences(seed=10 + step), step=step)
    assert {"curl_loss", "curl_accuracy", "aux_loss", "critic_loss"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert (loss.W - w0).abs().max() > 0
    for pk, pt in zip(loss.key_encoder.parameters(), agent.critic_target.encoder.parameters(), strict=True):
        torch.testing.assert_close(pk, pt, rtol=0, atol=0)
    assert not torch.equal(next(loss.key_encoder.parameters()), next(agent.critic.encoder.parameters()))


@pytest.mark.skipif("aux_encoder_extra_adam" not in inspect.signature(SAC).parameters,
                    reason="needs the sac.py switch aux_encoder_extra_adam")
def test_curl_optimizer_settings_constant_lr_and_double_encoder_step():
    loss = CURLLoss()  # lr_warmup = 0 by default: a constant lr
    agent = make_agent([loss], aux_lr=1e-3, aux_lr_scale=1.0, aux_encoder_extra_adam=True)
    lrs = []
    for step in range(3):
        lrs.append(agent.update(make_transitions(seed=step), make_sequences(seed=step), step=step)["aux_lr"])
    assert lrs == [1e-3] * 3
    enc_ids = {id(p) for p in agent.critic.encoder.parameters()}
    assert {id(p) for g in agent.aux_encoder_optimizer.param_groups for p in g["params"]} == enc_ids
    # the second Adam stepped the encoder once per update (the aux Adam too: two steps each)
    assert agent.aux_encoder_optimizer.state[next(agent.critic.encoder.parameters())]["step"] == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"weight": -1.0}, "losses.curl.weight"), ({"target_tau": 0.0}, "losses.curl.target_tau"),
    ({"target_tau": 1.5}, "losses.curl.target_tau"), ({"augmentation": "flip"}, "losses.curl.augmentation"),
])
def test_bad_parameters_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CURLLoss(**kwargs)


def test_agent_without_crop_and_single_sample_batch_are_config_errors():
    with pytest.raises(ConfigError, match="augmentation = 'augment'"):
        CURLLoss().setup(loss_context(FakeHost(ConstantEncoder(4), 4)))
    loss = CURLLoss(augmentation="augment")
    host = FakeHost(ConstantEncoder(4), 4)
    loss.setup(loss_context(host))
    with pytest.raises(ConfigError, match="at least 2"):
        run_loss(loss, make_sequences(b=1), host)
