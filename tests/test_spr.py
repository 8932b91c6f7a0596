"""SPR's self-predictive loss (losses.spr) on the Rainbow agent: transition model, masking, loss
value, gradients, targets, errors, and end-to-end updates alone and with MLR."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import run_loss, step_targets
from torch import nn

from mlr_registry.agents.rainbow import Rainbow
from mlr_registry.batch import Batch
from mlr_registry.decoders.transformer import TransformerDecoder
from mlr_registry.encoders.nature_cnn import NatureCNN
from mlr_registry.errors import ConfigError
from mlr_registry.losses.mlr import MLRLoss
from mlr_registry.losses.spr import SPRLoss, TransitionModel, renormalize
from mlr_registry.registry import load_all, lookup

A = 4
C, H, W = 8, 7, 7  # latent map of the tiny encoder below
TINY_ENCODER = functools.partial(NatureCNN, channels=(4, 8, C))


def tiny_agent(losses, **kwargs) -> Rainbow:
    torch.manual_seed(0)
    params = {"encoder": TINY_ENCODER, "hidden_size": 16, "n_step": 3, "aux_losses": losses, **kwargs}
    return Rainbow((4, 84, 84), A, **params)


def make_batch(b: int = 4, t: int = 7, seed: int = 0, weights=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randint(0, 256, (b, t, 4, 84, 84), dtype=torch.uint8, generator=g),
                 action=torch.randint(0, A, (b, t), generator=g), reward=torch.zeros(b, t),
                 done=torch.zeros(b, t, dtype=torch.bool), returns=torch.rand(b, t, generator=g),
                 done_n=torch.zeros(b, t, dtype=torch.bool), weights=weights)


def manual_distances(agent: Rainbow, loss: SPRLoss, batch: Batch) -> torch.Tensor:
    """(b K) per-step SPR distances recomputed from the networks (augmentation off)."""
    b, K = batch.batch_size, loss.jumps
    z = agent.encoder(batch.obs[:, 0].float() / 255).view(b, C, H, W)
    preds = []
    for k in range(K):
        z = loss.transition_model(z, batch.action[:, k])
        preds.append(z.flatten(1))
    pred = loss.predictor(agent.projector(torch.stack(preds, 1).flatten(0, 1)))
    with torch.no_grad():
        frames = batch.obs[:, 1:K + 1].flatten(0, 1).float() / 255
        target = loss.target_projector(loss.target_encoder(frames))
    d = (F.normalize(pred, dim=-1, eps=1e-3) - F.normalize(target, dim=-1, eps=1e-3)).pow(2).sum(-1)
    return d.view(b, K)


def test_registered_with_paper_defaults():
    load_all()
    component = lookup("loss", "spr")
    assert component.target is SPRLoss and component.selector == "losses.spr"
    params = component.parameters()
    assert params["jumps"] == 5 and params["weight"] == 1.0 and params["target_tau"] == 1.0
    assert params["norm"] == "bn" and params["transition_blocks"] == 0 and params["residual"] is False


def test_transition_model_layers_and_output_per_step():
    torch.manual_seed(0)
    model = TransitionModel(64, 6, hidden=64)  # SPR's defaults on the 64x7x7 Atari map
    kinds = [type(m) for m in model.network]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.Conv2d]
    assert model.network[0].in_channels == 64 + 6 and model.network[0].kernel_size == (3, 3)
    assert model.network[0].padding == (1, 1) and model.network[3].out_channels == 64
    latent = torch.rand(5, 64, 7, 7)
    out = model(latent, torch.tensor([0, 1, 2, 3, 5]))
    assert out.shape == (5, 64, 7, 7)
    flat = out.flatten(1)  # renormalized per sample: min 0, max 1
    torch.testing.assert_close(flat.min(1).values, torch.zeros(5))
    torch.testing.assert_close(flat.max(1).values, torch.ones(5))
    # the action enters as one-hot planes: another action changes the prediction
    model.eval()
    a = model(latent[:1], torch.tensor([0]))
    b = model(latent[:1], torch.tensor([1]))
    assert (a - b).abs().max() > 1e-4
    # residual blocks and residual connection
    deep = TransitionModel(8, 3, hidden=16, blocks=2, residual=True, renormalize=False)
    assert deep(torch.rand(2, 8, 5, 5), torch.tensor([0, 2])).shape == (2, 8, 5, 5)
    assert sum(isinstance(m, nn.Conv2d) for m in deep.modules()) == 2 + 2 * 2


def test_renormalize_is_per_sample_min_max():
    x = torch.tensor([[[[1.0, 3.0]]], [[[-2.0, 2.0]]]])
    torch.testing.assert_close(renormalize(x), torch.tensor([[[[0.0, 1.0]]], [[[0.0, 1.0]]]]))


def test_rollout_shape_per_step():
    loss = SPRLoss(jumps=3)
    tiny_agent([loss])
    out = loss.rollout(torch.rand(2, C, H, W), torch.randint(0, A, (2, 3)))
    assert out.shape == (2, 3, C, H, W)


def test_nonterminal_mask_follows_spr_cumsum():
    done = torch.zeros(3, 6, dtype=torch.bool)
    done[1, 2] = True  # a done at step 2 zeroes terms k >= 2
    done[2, 0] = True  # a done at step 0 zeroes everything
    mask = SPRLoss.nonterminal_mask(done)
    assert mask.shape == (3, 5)  # terms k = 1..5
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


def test_loss_value_is_masked_sum_over_steps_weighted_by_importance():
    loss = SPRLoss(weight=2.0)
    agent = tiny_agent([loss], augment=False)
    agent.train()
    batch = make_batch(b=4)
    batch.done[1, 3] = True  # sample 1 keeps k = 1, 2
    batch.weights = torch.tensor([1.0, 0.5, 2.0, 1.0])
    value, metrics = run_loss(loss, batch, agent)
    d = manual_distances(agent, loss, batch).detach()
    mask = torch.ones(4, 5)
    mask[1, 2:] = 0
    expected = 2.0 * ((d * mask).sum(1) * batch.weights).mean()
    torch.testing.assert_close(value.detach(), expected, rtol=1e-5, atol=1e-6)
    assert float(metrics["spr_loss"]) == pytest.approx((d * mask).sum(1).mean().item(), rel=1e-5)
    assert float(metrics["spr_kept_fraction"]) == pytest.approx(17 / 20)
    cos = 1 - 0.5 * (d * mask).sum() / 17
    assert float(metrics["spr_cosine"]) == pytest.approx(cos.item(), rel=1e-5)
    # importance weights off: plain mean over the batch
    loss.use_importance_weights = False
    value, _ = run_loss(loss, batch, agent)
    torch.testing.assert_close(value.detach(), 2.0 * (d * mask).sum(1).mean(), rtol=1e-5, atol=1e-6)


def test_loss_is_zero_when_the_dynamics_reproduce_the_target():
    """Identity dynamics, a static scene, no predictor and hard-copied targets: prediction ==
    target, so every normalized distance is 0 (and is 2 - 2cos > 0 otherwise)."""
    loss = SPRLoss(predictor="none")
    agent = tiny_agent([loss], augment=False)
    loss.rollout = lambda z, a: z[:, None].expand(-1, a.shape[1], -1, -1, -1)  # type: ignore[method-assign]
    batch = make_batch(b=3)
    batch.obs[:] = batch.obs[:, :1]  # the same frame at every step
    value, metrics = run_loss(loss, batch, agent)
    assert value.item() == pytest.approx(0.0, abs=1e-6) and float(metrics["spr_cosine"]) == pytest.approx(1.0)
    batch = make_batch(b=3)  # real future frames differ: positive loss, at most 4 per step
    value, _ = run_loss(loss, batch, agent)
    assert 0.0 < value.item() <= 4.0 * 5


def test_training_the_loss_alone_drives_it_down():
    loss = SPRLoss()
    agent = tiny_agent([loss], augment=False)
    batch = make_batch(b=8, seed=3)
    params = [*loss.transition_model.parameters(), *loss.predictor.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    first = None
    for _ in range(40):
        value, _ = run_loss(loss, batch, agent)
        first = value.item() if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert value.item() < 0.5 * first


def test_gradients_reach_encoder_projector_dynamics_and_predictor_not_targets():
    loss = SPRLoss()
    agent = tiny_agent([loss])
    value, _ = run_loss(loss, make_batch(), agent)
    value.backward()
    for name, module in (("encoder", agent.encoder), ("transition", loss.transition_model),
                         ("predictor", loss.predictor)):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    assert agent.head.value_fc1.weight_mu.grad.abs().sum() > 0  # projector = Q-head first layers
    assert agent.head.adv_fc1.weight_mu.grad.abs().sum() > 0
    assert agent.head.adv_fc2.weight_mu.grad is None  # the rest of the head is not on the path
    assert all(p.grad is None and not p.requires_grad
               for p in [*loss.target_encoder.parameters(), *loss.target_projector.parameters()])
    assert loss.grad_clip_groups() == [list(loss.transition_model.parameters())]


def test_update_targets_hard_copy_and_ema():
    loss = SPRLoss(target_tau=1.0)
    agent = tiny_agent([loss])
    with torch.no_grad():
        for p in [*agent.encoder.parameters(), *agent.projector.parameters()]:
            p.add_(1.0)
    step_targets(loss)
    for po, pt in zip(agent.encoder.parameters(), loss.target_encoder.parameters(), strict=True):
        torch.testing.assert_close(po, pt)
    ema = SPRLoss(target_tau=0.25)
    agent = tiny_agent([ema])
    before = [p.clone() for p in ema.target_projector.parameters()]
    with torch.no_grad():
        for p in agent.projector.parameters():
            p.add_(4.0)
    step_targets(ema)
    for b0, pt in zip(before, ema.target_projector.parameters(), strict=True):
        torch.testing.assert_close(pt, b0 + 1.0)  # 0.25 of the way to online = before + 4


@pytest.mark.parametrize("kwargs, match", [
    ({"weight": -1.0}, "losses.spr.weight"), ({"jumps": 0}, "losses.spr.jumps"),
    ({"jumps": 2.5}, "losses.spr.jumps"), ({"target_tau": 0.0}, "losses.spr.target_tau"),
    ({"target_tau": 1.5}, "losses.spr.target_tau"), ({"norm": "group"}, "losses.spr.norm"),
    ({"predictor": "mlp"}, "losses.spr.predictor"), ({"transition_hidden": 0}, "transition_hidden"),
    ({"transition_blocks": -1}, "transition_blocks"), ({"normalize_eps": 0.0}, "normalize_eps"),
])
def test_bad_parameters_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SPRLoss(**kwargs)


def test_batch_too_short_and_vector_latent_are_config_errors():
    loss = SPRLoss(jumps=5)
    agent = tiny_agent([loss])
    with pytest.raises(ConfigError, match="needs 6 steps"):
        run_loss(loss, make_batch(t=5), agent)

    class VectorEncoder(nn.Module):
        output_dim = 32

        def __init__(self, in_channels: int):
            super().__init__()
            self.net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(in_channels * 4, 32))

        def forward(self, x):
            return self.net(x)

    with pytest.raises(ConfigError, match="spatial latent"):
        tiny_agent([SPRLoss()], encoder=VectorEncoder)


def test_rainbow_update_with_spr_trains_the_transition_model():
    loss = SPRLoss()
    agent = tiny_agent([loss])
    before = [p.clone() for p in loss.transition_model.parameters()]
    batch = make_batch(b=4, t=7)
    batch.done[0, 2] = True
    metrics = agent.update(batch)
    assert {"spr_loss", "spr_cosine", "rl_loss", "grad_norm_aux0_0"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    assert float(metrics["spr_kept_fraction"]) == pytest.approx(16 / 20)  # terms k = 2..5 of sample 0 dropped
    assert all((p - b0).abs().max() > 0 for p, b0 in zip(loss.transition_model.parameters(), before, strict=True))
    assert any(p is loss.transition_model.network[0].weight for g in agent.optimizer.param_groups
               for p in g["params"])
    # the target copy lags one update (refreshed after the forward, before the step)
    enc_now = next(agent.encoder.parameters())
    assert not torch.equal(enc_now, next(loss.target_encoder.parameters()))


def test_rainbow_update_with_mlr_and_spr_together():
    decoder = functools.partial(TransformerDecoder, depth=1)
    mlr, spr = MLRLoss(decoder=decoder, sequence_length=8), SPRLoss()
    agent = tiny_agent([mlr, spr])
    metrics = agent.update(make_batch(b=2, t=11))
    assert {"mlr_loss", "spr_loss", "grad_norm_aux0_0", "grad_norm_aux1_0"} <= set(metrics)
    parts = float(metrics["rl_loss"]) + float(metrics["mlr_loss"]) + float(metrics["spr_loss"])
    assert float(metrics["total_loss"]) == pytest.approx(parts, rel=1e-4)
