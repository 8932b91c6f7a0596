"""The CURL-style SAC agent of the DMC experiments (docs/faithfulness.md#dmc-sac-agent,
docs/faithfulness.md#dmc-optimisation), at tiny sizes: 8 filters, 8-d features, hidden 16, batch 4."""

from __future__ import annotations

import functools
import io
import math
import types

import pytest
import torch
from torch import nn

from mlr_registry.agents.lr_schedule import inverse_sqrt_warmup
from mlr_registry.agents.sac import SAC, Actor, tanh_gaussian
from mlr_registry.batch import Batch
from mlr_registry.encoders.pixel_encoder import PixelEncoder
from mlr_registry.errors import ConfigError
from mlr_registry.losses.auxiliary import AuxiliaryLoss, LossContext, LossOutput
from mlr_registry.registry import lookup

A = 2
B = 4
SMALL_ENCODER = functools.partial(PixelEncoder, num_filters=8, feature_dim=8)


def make_agent(seed: int = 0, **kwargs) -> SAC:
    torch.manual_seed(seed)
    params = {"encoder": SMALL_ENCODER, "hidden_dim": 16, **kwargs}
    return SAC((9, 100, 100), A, **params)


def make_transitions(seed: int = 1, as_mapping: bool = False):
    g = torch.Generator().manual_seed(seed)
    fields = {"obs": torch.randint(0, 256, (B, 9, 100, 100), dtype=torch.uint8, generator=g),
              "next_obs": torch.randint(0, 256, (B, 9, 100, 100), dtype=torch.uint8, generator=g),
              "action": torch.rand(B, A, generator=g) * 2 - 1, "reward": torch.rand(B, generator=g),
              "not_done": torch.ones(B)}
    return fields if as_mapping else types.SimpleNamespace(**fields)


def make_sequences(t: int = 16, seed: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randint(0, 256, (B, t, 9, 100, 100), dtype=torch.uint8, generator=g),
                 action=torch.rand(B, t, A, generator=g) * 2 - 1, reward=torch.zeros(B, t),
                 done=torch.zeros(B, t, dtype=torch.bool))


class CountedTarget:
    """A declared target that counts its updates in its loss."""

    def __init__(self, loss: StubAux) -> None:
        self.loss = loss

    def update(self) -> None:
        self.loss.target_updates += 1


class StubAux(AuxiliaryLoss):
    """A linear head on the shared encoder's features of the first frame, squared."""

    def __init__(self, lr_warmup: int = 0) -> None:
        super().__init__()
        self.lr_warmup = lr_warmup
        self.setup_contexts: list[LossContext] = []
        self.calls: list[Batch] = []
        self.target_updates = 0

    def setup(self, context: LossContext) -> None:
        self.setup_contexts.append(context)
        self.head = nn.Linear(context.latent_dim, 1)

    def forward(self, batch: Batch, context: LossContext) -> LossOutput:
        self.calls.append(batch)
        x = context.augment(batch.obs[:, 0].float() / 255.0)
        loss = self.head(context.encoder(x)).pow(2).mean()
        return LossOutput({"loss": loss}, {"loss": loss.item()})

    def target_networks(self):
        return [CountedTarget(self)]


def spy_steps(agent: SAC, log: list[str]) -> None:
    """Record each optimizer step's name in ``log`` (step pre-hooks)."""
    names = {"critic": agent.critic_optimizer, "actor": agent.actor_optimizer,
             "alpha": agent.log_alpha_optimizer, "aux": agent.aux_optimizer}
    for name, opt in names.items():
        if opt is not None:
            opt.register_step_pre_hook(lambda *_, _name=name: log.append(_name))


# --- structure -------------------------------------------------------------------------------

def test_registered_and_is_an_aux_host():
    assert lookup("agent", "sac").target is SAC
    assert lookup("encoder", "pixel_encoder").target is PixelEncoder
    agent = make_agent()
    context = agent.loss_context
    assert context.encoder is agent.critic.encoder and context.projector is None and callable(context.crop)
    assert (context.num_actions, context.discrete_actions, context.latent_shape) == (A, False, (8,))
    assert agent.encoder is agent.critic.encoder
    assert agent.projector is None and agent.discrete_actions is False and agent.num_actions == A
    assert agent.latent_dim == 8 and agent.latent_shape == (8,)
    assert agent.target_entropy == -A
    assert agent.alpha.item() == pytest.approx(0.1)
    assert agent.aux_optimizer is None


def test_network_shapes_at_reference_sizes():
    agent = SAC((9, 100, 100), 6)  # defaults: 64 filters, 50-d features, hidden 1024
    assert agent.critic.encoder.fc.in_features == 64 * 35 * 35
    q1 = [m for m in agent.critic.q1 if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in q1] == [(56, 1024), (1024, 1024), (1024, 1)]
    trunk = [m for m in agent.actor.trunk if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in trunk] == [(50, 1024), (1024, 1024), (1024, 12)]


def test_actor_convs_are_tied_to_the_critic_encoder_fc_separate():
    agent = make_agent()
    for ca, cc in zip(agent.actor.encoder.convs, agent.critic.encoder.convs, strict=True):
        assert ca.weight is cc.weight and ca.bias is cc.bias
    assert agent.actor.encoder.fc.weight is not agent.critic.encoder.fc.weight
    assert agent.actor.encoder.ln.weight is not agent.critic.encoder.ln.weight
    # the critic target is a separate full copy, equal at construction
    for po, pt in zip(agent.critic.parameters(), agent.critic_target.parameters(), strict=True):
        assert po is not pt and torch.equal(po, pt) and not pt.requires_grad


def test_init_orthogonal_heads_and_optimizer_settings():
    agent = make_agent()
    for net in (agent.critic.q1, agent.critic.q2, agent.actor.trunk):
        for m in net:
            if isinstance(m, nn.Linear):
                w = m.weight.detach()
                gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
                torch.testing.assert_close(gram, torch.eye(gram.shape[0]), rtol=1e-4, atol=1e-4)
                assert torch.count_nonzero(m.bias) == 0
    conv = agent.critic.encoder.convs[1].weight.detach()
    assert torch.count_nonzero(conv[:, :, 0]) == 0 and torch.count_nonzero(conv[:, :, :, 2]) == 0
    assert agent.log_alpha.item() == pytest.approx(math.log(0.1))
    groups = {"actor": agent.actor_optimizer, "critic": agent.critic_optimizer, "alpha": agent.log_alpha_optimizer}
    assert [(g.param_groups[0]["lr"], g.param_groups[0]["betas"]) for g in groups.values()] == [
        (1e-3, (0.9, 0.999)), (1e-3, (0.9, 0.999)), (1e-4, (0.5, 0.999))]
    critic_ids = {id(p) for p in agent.critic_optimizer.param_groups[0]["params"]}
    assert {id(p) for p in agent.critic.encoder.parameters()} <= critic_ids


# --- policy ----------------------------------------------------------------------------------

def test_log_std_is_squashed_into_the_range():
    torch.manual_seed(0)
    actor = Actor(SMALL_ENCODER(in_channels=9), 8, A, 16, -10.0, 2.0)
    with torch.no_grad():
        actor.trunk[-1].weight.mul_(1000.0)  # saturate tanh both ways
        _, log_std = actor.distribution(torch.rand(64, 9, 84, 84))
    assert log_std.min() >= -10.0 and log_std.max() <= 2.0
    assert log_std.min() < -9.9 and log_std.max() > 1.9
    with torch.no_grad():
        _, ls = actor.distribution(torch.zeros(1, 9, 84, 84))
        raw = actor.trunk(actor.encoder(torch.zeros(1, 9, 84, 84)))[:, A:]
    torch.testing.assert_close(ls, -10.0 + 6.0 * (torch.tanh(raw) + 1))


def test_tanh_gaussian_log_prob_matches_a_hand_computation():
    mu = torch.tensor([[0.3, -1.2], [2.0, 0.0]])
    log_std = torch.tensor([[-0.5, 0.2], [-2.0, 1.0]])
    noise = torch.tensor([[0.7, -0.1], [1.5, -2.0]])
    mean_action, action, log_pi = tanh_gaussian(mu, log_std, noise)
    pi = mu + noise * log_std.exp()
    gaussian = torch.distributions.Normal(mu, log_std.exp()).log_prob(pi).sum(-1)
    expected = gaussian - torch.log(1 - torch.tanh(pi) ** 2 + 1e-6).sum(-1)
    torch.testing.assert_close(log_pi, expected)
    torch.testing.assert_close(action, torch.tanh(pi))
    torch.testing.assert_close(mean_action, torch.tanh(mu))
    assert log_pi.shape == (2,)


def test_act_center_crops_at_offset_8_and_greedy_is_deterministic():
    agent = make_agent()
    obs = make_transitions().obs
    greedy = agent.act(obs, greedy=True)
    assert greedy.shape == (B, A)
    assert torch.equal(greedy, agent.act(obs, greedy=True))
    with torch.no_grad():
        mu, _ = agent.actor.distribution(obs[:, :, 8:92, 8:92].float() / 255.0)
    torch.testing.assert_close(greedy, torch.tanh(mu))
    outside = obs.clone()
    outside[:, :, :8] = 0
    outside[:, :, 92:] = 255
    outside[:, :, :, :8] = 7
    assert torch.equal(agent.act(outside, greedy=True), greedy)  # pixels outside the crop are unseen
    sampled = agent.act(obs)
    assert sampled.shape == (B, A) and sampled.abs().max() <= 1 and not torch.equal(sampled, greedy)
    single = agent.act(obs[0], greedy=True)
    assert single.shape == (A,)
    torch.testing.assert_close(single, greedy[0])
    # greedy acting draws no noise (the reference's select_action): evaluation leaves torch's
    # random stream, which the training crops and masks draw from, where it was
    state = torch.get_rng_state()
    agent.act(obs, greedy=True), agent.act(obs[0], greedy=True)
    assert torch.equal(torch.get_rng_state(), state)
    agent.act(obs[0])
    assert not torch.equal(torch.get_rng_state(), state)


# --- learning --------------------------------------------------------------------------------

@pytest.mark.parametrize("exclusive, high", [(True, 15), (False, 16)])
def test_batch_crop_offsets(exclusive, high):
    agent = make_agent(crop_offsets_exclusive=exclusive)
    n = 2000
    rows = torch.arange(100, dtype=torch.uint8)
    x = torch.stack([rows[:, None].expand(100, 100), rows[None, :].expand(100, 100)])  # (2 100 100)
    out = agent.crop(x.expand(n, 2, 100, 100))
    assert out.shape == (n, 2, 84, 84)
    tops, lefts = out[:, 0, 0, 0].long(), out[:, 1, 0, 0].long()
    assert torch.equal(out[:, 0, :, 0], tops[:, None] + torch.arange(84))  # a contiguous window
    for offsets in (tops, lefts):
        assert offsets.min() == 0 and offsets.max() == high
        assert len(offsets.unique()) == high + 1
    assert not torch.equal(tops, lefts)  # top and left drawn independently


def test_td_target_formula_with_known_numbers():
    agent = make_agent()
    seen = {}

    class StubActor(nn.Module):
        def forward(self, obs, detach_conv=False):
            a = torch.full((obs.shape[0], A), 0.25)
            return a, a, torch.tensor([-1.0, 2.0]), torch.zeros(obs.shape[0], A)

    class StubCritic(nn.Module):
        def forward(self, obs, action, detach_conv=False):
            seen["action"] = action
            return torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])

    agent.actor, agent.critic_target = StubActor(), StubCritic()
    y = agent.td_target(torch.zeros(2, 9, 84, 84), torch.tensor([0.5, 1.0]), torch.tensor([1.0, 0.0]))
    # y = r + not_done·0.99·(min(Q1', Q2') − 0.1·log π)
    torch.testing.assert_close(y, torch.tensor([0.5 + 0.99 * (1.0 + 0.1), 1.0]))
    assert torch.equal(seen["action"], torch.full((2, A), 0.25))


def test_update_order_and_periods():
    aux = StubAux()
    agent = make_agent(aux_losses=[aux])
    log: list[str] = []
    spy_steps(agent, log)
    metrics = agent.update(make_transitions(), make_sequences(), step=0)
    assert log == ["critic", "aux", "actor", "alpha"]
    assert {"critic_loss", "aux_loss", "actor_loss", "alpha_loss", "alpha", "stubaux_loss", "aux_lr"} <= set(metrics)
    log.clear()
    metrics = agent.update(make_transitions(as_mapping=True), make_sequences(), step=1)
    assert log == ["critic", "aux"] and "actor_loss" not in metrics
    log.clear()
    agent.update(make_transitions(), None, step=2)  # no sequences: no aux step
    assert log == ["critic", "actor", "alpha"]
    assert len(aux.calls) == 2 and aux.target_updates == 2


def test_actor_step_sees_no_conv_gradients():
    agent = make_agent(aux_losses=[StubAux()])
    state = {}

    def record(*_):
        state["conv_grads"] = [p.grad for c in agent.actor.encoder.convs for p in c.parameters()]
        state["fc_grad"] = agent.actor.encoder.fc.weight.grad

    agent.actor_optimizer.register_step_pre_hook(record)
    agent.update(make_transitions(), make_sequences(), step=0)
    assert all(g is None for g in state["conv_grads"])
    assert state["fc_grad"] is not None and state["fc_grad"].abs().sum() > 0


def test_target_ema_only_on_even_steps_with_the_right_taus():
    agent = make_agent()
    before = {k: v.clone() for k, v in agent.critic_target.state_dict().items()}
    agent.update(make_transitions(), None, step=1)  # odd: no EMA, no actor
    for k, v in agent.critic_target.state_dict().items():
        assert torch.equal(v, before[k]), k
    actor_before = [p.clone() for p in agent.actor.trunk.parameters()]
    alpha_before = agent.log_alpha.detach().clone()
    assert all(torch.equal(a, b) for a, b in zip(actor_before, agent.actor.trunk.parameters(), strict=True))

    agent.update(make_transitions(), None, step=2)
    online = agent.critic.state_dict()
    for k, v in agent.critic_target.state_dict().items():
        tau = 0.05 if k.startswith("encoder.") else 0.01
        torch.testing.assert_close(v, before[k] + tau * (online[k] - before[k]), rtol=1e-5, atol=1e-7,
                                   msg=k)
        assert not torch.equal(v, before[k]), k
    assert not torch.equal(agent.log_alpha.detach(), alpha_before)
    assert not all(torch.equal(a, b) for a, b in zip(actor_before, agent.actor.trunk.parameters(), strict=True))


def test_aux_optimizer_holds_encoder_and_loss_params_and_follows_the_schedule():
    aux = StubAux(lr_warmup=2)
    agent = make_agent(aux_losses=[aux], aux_lr=1e-3, aux_lr_scale=0.5)
    assert len(aux.setup_contexts) == 1 and aux.setup_contexts[0] is agent.loss_context
    ids = {id(p) for p in agent.aux_optimizer.param_groups[0]["params"]}
    assert {id(p) for p in agent.critic.encoder.parameters()} <= ids
    assert {id(p) for p in aux.head.parameters()} <= ids
    assert not {id(p) for p in agent.actor.trunk.parameters()} & ids
    assert agent.aux_optimizer.param_groups[0]["betas"] == (0.9, 0.999)

    lrs, enc_grads = [], []

    def record(*_):
        lrs.append(agent.aux_optimizer.param_groups[0]["lr"])
        enc_grads.append(agent.critic.encoder.fc.weight.grad)

    agent.aux_optimizer.register_step_pre_hook(record)
    head_before = aux.head.weight.detach().clone()
    for s in range(5):
        agent.update(make_transitions(seed=s), make_sequences(seed=s), step=s)
    base = 0.5 * 1e-3
    expected = [base * f for f in (5e-4, 5e-4 + (1 - 5e-4) / 2, 1.0, math.sqrt(2 / 3), math.sqrt(2 / 4))]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert all(g is not None and g.abs().sum() > 0 for g in enc_grads)
    assert not torch.equal(aux.head.weight, head_before)
    assert len(aux.calls) == 5 and aux.target_updates == 3  # steps 0, 2, 4


def test_aux_gradient_norm_is_clipped():
    class Huge(StubAux):
        def forward(self, batch, context):
            out = super().forward(batch, context)
            return LossOutput({"loss": 1e6 * out.terms["loss"]}, out.metrics)

    agent = make_agent(aux_losses=[Huge()], aux_max_grad_norm=0.5)
    norms = []
    agent.aux_optimizer.register_step_pre_hook(lambda *_: norms.append(torch.nn.utils.get_total_norm(
        [p.grad for p in agent.aux_parameters if p.grad is not None])))
    metrics = agent.update(make_transitions(), make_sequences(), step=1)
    assert metrics["aux_grad_norm"] > 0.5
    assert float(norms[0]) == pytest.approx(0.5, rel=1e-4)


def test_inverse_sqrt_warmup_values():
    assert inverse_sqrt_warmup(0) == 5e-4
    assert inverse_sqrt_warmup(3000) == pytest.approx(5e-4 + (1 - 5e-4) / 2)
    assert inverse_sqrt_warmup(6000) == 1.0
    assert inverse_sqrt_warmup(24000) == pytest.approx(0.5)
    assert inverse_sqrt_warmup(49000) == pytest.approx(0.35, abs=0.005)
    with pytest.raises(ConfigError, match="warmup"):
        inverse_sqrt_warmup(1, warmup=0)


def test_with_the_mlr_loss_reinitialized_encoder_fc_and_one_update():
    from mlr_registry.losses.mlr import MLRLoss
    from mlr_registry.maskers.cube import CubeMasker

    torch.manual_seed(0)
    loss = MLRLoss(masker=CubeMasker(patch_size=10, block_size=4), target_tau=0.05, projector="mlp",
                   predictor="mlp", unnormalized_masked_input=False, init="trunc_normal",
                   reinit_encoder_linear=True, lr_warmup=6000)
    agent = make_agent(aux_losses=[loss])
    fc, target_fc = agent.critic.encoder.fc.weight, agent.critic_target.encoder.fc.weight
    assert not torch.equal(fc, target_fc) and fc.abs().max() <= 0.02  # docs/faithfulness.md#dmc-initialisation
    assert agent.actor.encoder.fc.weight.abs().max() > 0.02  # the actor keeps its orthogonal fc
    for cc, ct in zip(agent.critic.encoder.convs, agent.critic_target.encoder.convs, strict=True):
        assert torch.equal(cc.weight, ct.weight)
    metrics = agent.update(make_transitions(), make_sequences(), step=0)
    assert float(metrics["aux_lr"]) == pytest.approx(0.5e-3 * 5e-4, rel=1e-6)
    assert math.isfinite(metrics["mlr_loss"]) and math.isfinite(metrics["critic_loss"])


def test_checkpoint_round_trip_resumes_identically():
    agent = make_agent(seed=0, aux_losses=[StubAux()])
    for s in range(2):
        agent.update(make_transitions(seed=s), make_sequences(seed=s), step=s)
    buffer = io.BytesIO()
    torch.save(agent.checkpoint_state(), buffer)
    buffer.seek(0)
    other = make_agent(seed=5, aux_losses=[StubAux()])
    other.load_checkpoint_state(torch.load(buffer, weights_only=False))
    for ca, cc in zip(other.actor.encoder.convs, other.critic.encoder.convs, strict=True):
        assert ca.weight is cc.weight  # still tied after loading
    assert other.aux_scheduler.last_epoch == 2
    for k, v in agent.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    results = []
    for a in (agent, other):
        torch.manual_seed(9)
        results.append(a.update(make_transitions(seed=7), make_sequences(seed=7), step=2))
    assert results[0] == results[1]


@pytest.mark.parametrize("kwargs, match", [
    ({"hidden_dim": 0}, "hidden_dim"), ({"discount": 1.5}, "discount"),
    ({"init_temperature": 0.0}, "init_temperature"), ({"actor_lr": 0.0}, "actor_lr"),
    ({"critic_beta": 1.0}, "critic_beta"), ({"actor_log_std_min": 2.0}, "actor_log_std_min"),
    ({"actor_update_period": 0}, "actor_update_period"), ({"critic_tau": 0.0}, "critic_tau"),
    ({"encoder_tau": 1.5}, "encoder_tau"), ({"image_size": 101}, "image_size"),
    ({"aux_max_grad_norm": 0.0}, "aux_max_grad_norm"),
    ({"aux_lr_scale": -1.0}, "aux_lr_scale"), ({"device": "nope"}, "device"),
])
def test_bad_parameters_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_agent(**kwargs)


def test_bad_observation_shape_and_crop_range():
    with pytest.raises(ConfigError, match="observation_shape"):
        SAC((9, 100), A, encoder=SMALL_ENCODER, hidden_dim=16)
    with pytest.raises(ConfigError, match="crop_offsets_exclusive"):
        SAC((9, 100, 84), A, encoder=SMALL_ENCODER, hidden_dim=16)
    agent = SAC((9, 84, 84), A, encoder=SMALL_ENCODER, hidden_dim=16)  # no crop needed
    x = torch.randint(0, 256, (B, 9, 84, 84), dtype=torch.uint8)
    assert torch.equal(agent.crop(x), x)
