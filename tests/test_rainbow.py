"""SPR-style Rainbow: noisy layers, C51 projection, dueling head, projector, acting and updates."""

from __future__ import annotations

import copy
import functools
import math

import gin
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.agents.distributional import make_support, project_distribution
from mlr_registry.agents.noisy import NoisyLinear, reset_noise
from mlr_registry.agents.rainbow import C51Head, Rainbow, scale_grad
from mlr_registry.batch import Batch
from mlr_registry.encoders.nature_cnn import NatureCNN
from mlr_registry.errors import ConfigError
from mlr_registry.losses.auxiliary import AuxiliaryLoss, LossContext, LossOutput

TINY_ENCODER = functools.partial(NatureCNN, channels=(8, 16, 16))
A = 4


def tiny_agent(**kwargs) -> Rainbow:
    kwargs = {"encoder": TINY_ENCODER, "hidden_size": 32, "n_step": 3, **kwargs}
    return Rainbow((4, 84, 84), A, **kwargs)


def make_batch(b: int = 8, t: int = 5, seed: int = 0, done: bool = False, weights=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        obs=torch.randint(0, 256, (b, t, 4, 84, 84), dtype=torch.uint8, generator=g),
        action=torch.randint(0, A, (b, t), generator=g),
        reward=torch.zeros(b, t),
        done=torch.zeros(b, t, dtype=torch.bool),
        returns=(torch.rand(b, t, generator=g) * 6 - 3),
        done_n=torch.full((b, t), done, dtype=torch.bool),
        weights=weights,
        indices=torch.arange(b),
    )


# --- NoisyLinear ---------------------------------------------------------------------------

def test_noisy_linear_init_follows_fortunato_factorised():
    layer = NoisyLinear(400, 100, std_init=0.1)
    bound = 1 / math.sqrt(400)
    assert layer.weight_mu.abs().max() <= bound and layer.weight_mu.abs().max() > 0.9 * bound
    assert layer.bias_mu.abs().max() <= bound
    assert torch.all(layer.weight_sigma == 0.1 / math.sqrt(400))
    assert torch.all(layer.bias_sigma == 0.1 / math.sqrt(100))
    buffers = dict(layer.named_buffers())
    assert set(buffers) == {"epsilon_in", "epsilon_out"}
    assert buffers["epsilon_in"].shape == (400,) and buffers["epsilon_out"].shape == (100,)
    # f(x) = sign(x)·sqrt|x| of a standard normal: E|f(x)|² = E|x| = sqrt(2/π)
    torch.manual_seed(0)
    big = NoisyLinear(20000, 1)
    assert abs(big.epsilon_in.pow(2).mean().item() - math.sqrt(2 / math.pi)) < 0.02


def test_noisy_linear_noise_modes():
    torch.manual_seed(0)
    layer = NoisyLinear(6, 5)
    x = torch.randn(3, 6)
    noisy_w = layer.weight_mu + layer.weight_sigma * torch.outer(layer.epsilon_out, layer.epsilon_in)
    noisy_b = layer.bias_mu + layer.bias_sigma * layer.epsilon_out
    expected_noisy = F.linear(x, noisy_w, noisy_b)
    expected_mu = F.linear(x, layer.weight_mu, layer.bias_mu)
    layer.train()
    torch.testing.assert_close(layer(x), expected_noisy)
    torch.testing.assert_close(layer.forward_mu(x), expected_mu)  # mu only, whatever the mode
    layer.eval()
    torch.testing.assert_close(layer(x), expected_noisy)  # sampling=True by default: noise in eval
    layer.sampling = False
    torch.testing.assert_close(layer(x), expected_mu)  # eval and not sampling: noise off
    layer.noise_override = True
    torch.testing.assert_close(layer(x), expected_noisy)
    layer.train()
    layer.noise_override = False
    torch.testing.assert_close(layer(x), expected_mu)  # the override beats training mode
    layer.noise_override = None
    # copies carry the noise; reset_noise changes it
    clone = copy.deepcopy(layer)
    torch.testing.assert_close(clone(x), layer(x))
    reset_noise(layer)
    assert not torch.equal(layer.epsilon_in, clone.epsilon_in)
    clone.load_state_dict(layer.state_dict())
    assert torch.equal(clone.epsilon_out, layer.epsilon_out)
    with pytest.raises(ConfigError, match="std_init"):
        NoisyLinear(3, 3, std_init=-0.1)


# --- C51 projection ------------------------------------------------------------------------

def test_projection_hand_computed_cases():
    support = make_support(-2.0, 2.0, 5)  # atoms -2 -1 0 1 2, delta 1
    p = torch.tensor([[0.1, 0.2, 0.3, 0.25, 0.15]])
    # done: all mass at clamp(r) split between neighbours; 0.25 → 0.75 on atom 0, 0.25 on atom 1
    out = project_distribution(p, torch.tensor([0.25]), torch.tensor([True]), 0.9, support)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.75, 0.25, 0.0]]))
    # done with r beyond v_max: clamped to the last atom
    out = project_distribution(p, torch.tensor([7.0]), torch.tensor([True]), 0.9, support)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]]))
    # gamma 1, r = 1: an exact shift by one atom; the top two atoms clamp onto v_max
    out = project_distribution(p, torch.tensor([1.0]), torch.tensor([False]), 1.0, support)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4]]))
    # gamma 0.5, r = 0: Tz = -1, -0.5, 0, 0.5, 1 → halves split to neighbours
    out = project_distribution(p, torch.tensor([0.0]), torch.tensor([False]), 0.5, support)
    expected = torch.tensor([[0.0, 0.1 + 0.1, 0.1 + 0.3 + 0.125, 0.125 + 0.15, 0.0]])
    torch.testing.assert_close(out, expected)


def test_projection_matches_rlpyt_dense_form_and_keeps_mass():
    torch.manual_seed(0)
    support = make_support()
    b = 64
    p = torch.softmax(torch.randn(b, 51), -1)
    r = torch.randn(b) * 4
    d = torch.rand(b) < 0.3
    out = project_distribution(p, r, d, 0.99 ** 10, support)
    # rlpyt's CategoricalDQN: target = Σ_j p_j · clamp(1 − |Tz_j − z_i| / Δz, 0, 1)
    tz = (r[:, None] + (~d)[:, None].float() * 0.99 ** 10 * support).clamp(-10, 10)
    coeff = (1 - (tz[:, None, :] - support[None, :, None]).abs() / 0.4).clamp(0, 1)  # (b i j)
    dense = (p[:, None, :] * coeff).sum(-1)
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-4)  # float32 rounding near atoms
    torch.testing.assert_close(out.sum(-1), torch.ones(b))


# --- head and projector --------------------------------------------------------------------

def test_scale_grad_is_identity_forward_and_scales_the_gradient():
    x = torch.randn(5, requires_grad=True)
    y = scale_grad(x, 2 ** -0.5)
    torch.testing.assert_close(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((5,), 2 ** -0.5))


def test_dueling_head_combination():
    torch.manual_seed(0)
    head = C51Head(latent_dim=12, num_actions=3, n_atoms=7, hidden_size=8, noisy_std=0.1, dueling=True,
                   grad_scale=2 ** -0.5)
    with torch.no_grad():
        head.advantage_bias.copy_(torch.randn(7))
    x = torch.randn(4, 12)
    logits = head(x)
    assert logits.shape == (4, 3, 7)
    value = head.value_fc2(F.relu(head.value_fc1(x)))  # (4 7)
    adv = head.adv_fc2(F.relu(head.adv_fc1(x))).view(4, 3, 7) + head.advantage_bias
    torch.testing.assert_close(logits, value[:, None] + adv - adv.mean(1, keepdim=True))
    torch.testing.assert_close(logits.mean(1), value)  # advantages are centred over actions
    plain = C51Head(12, 3, 7, 8, 0.1, dueling=False, grad_scale=1.0)
    torch.testing.assert_close(plain(x), plain.adv_fc2(F.relu(plain.adv_fc1(x))).view(4, 3, 7))
    assert len(plain.first_layers()) == 1 and not hasattr(plain, "value_fc1")


def test_projector_shares_the_heads_first_layers_mu_only():
    agent = Rainbow((4, 84, 84), 6)  # full size: 3136 → 2·256
    assert isinstance(agent.loss_context, LossContext) and agent.loss_context.projector is agent.projector
    assert agent.latent_dim == 3136 and agent.latent_shape == (64, 7, 7)
    assert agent.projector.out_features == 512
    assert agent.projector.layers[0] is agent.head.value_fc1
    assert agent.projector.layers[1] is agent.head.adv_fc1
    assert agent.projector.layers[0].weight_mu is agent.head.value_fc1.weight_mu
    agent.train()  # training mode: the head would be noisy, the projector is not
    x = torch.rand(3, 3136, requires_grad=True)
    out = agent.projector(x)
    assert out.shape == (3, 512)
    expected = torch.cat([agent.head.value_fc1.forward_mu(x), agent.head.adv_fc1.forward_mu(x)], -1)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    w = torch.cat([agent.head.value_fc1.weight_mu, agent.head.adv_fc1.weight_mu])
    torch.testing.assert_close(x.grad, w.sum(0).expand(3, -1))  # no 2^-0.5 scaling on this path
    assert agent.head.value_fc1.weight_sigma.grad is None  # mu only
    torch.testing.assert_close(agent.head.value_fc1.weight_mu.grad, x.detach().sum(0).expand(256, -1))
    assert tiny_agent(dueling=False).projector.out_features == 32


# --- acting --------------------------------------------------------------------------------

def _expected_q(agent: Rainbow, obs: torch.Tensor, noise: bool) -> torch.Tensor:
    with torch.no_grad():
        for m in agent.head.modules():
            if isinstance(m, NoisyLinear):
                m.noise_override = noise
        q = F.softmax(agent.head(agent.encoder(obs.float() / 255)), -1) @ agent.support
        for m in agent.head.modules():
            if isinstance(m, NoisyLinear):
                m.noise_override = None
    return q


def test_act_greedy_is_deterministic_noise_free_and_training_act_uses_the_last_noise():
    torch.manual_seed(0)
    agent = tiny_agent(noisy_std=5.0)  # large noise so that noisy and noise-free argmaxes differ
    obs = make_batch(b=64).obs[:, 0]
    eps_before = agent.head.adv_fc1.epsilon_in.clone()
    greedy = agent.act(obs, epsilon=0.0, greedy=True)
    assert greedy.dtype == torch.int64 and greedy.shape == (64,)
    assert torch.equal(greedy, agent.act(obs, epsilon=0.0, greedy=True))
    assert torch.equal(greedy, _expected_q(agent, obs, noise=False).argmax(-1))
    noisy = agent.act(obs, epsilon=0.0, greedy=False)
    assert torch.equal(noisy, _expected_q(agent, obs, noise=True).argmax(-1))
    assert torch.equal(noisy, agent.act(obs, epsilon=0.0, greedy=False))  # acting never resamples noise
    assert not torch.equal(noisy, greedy)
    assert torch.equal(agent.head.adv_fc1.epsilon_in, eps_before)
    single = agent.act(obs[0], epsilon=0.0, greedy=True)  # one (c h w) observation: b = 1
    assert single.shape == (1,) and single.item() == greedy[0].item()


def test_act_epsilon_greedy_is_uniform_at_one_and_mixed_in_between():
    torch.manual_seed(0)
    agent = tiny_agent()
    n = 8000
    obs = torch.zeros(1, 4, 84, 84, dtype=torch.uint8).expand(n, -1, -1, -1)
    counts = torch.bincount(agent.act(obs, epsilon=1.0), minlength=A).float()
    assert counts.sum() == n and (counts / n - 1 / A).abs().max() < 0.03
    obs = obs[:2000]
    best = agent.act(obs[:1], epsilon=0.0, greedy=True)
    frac = (agent.act(obs, epsilon=0.5, greedy=True) == best).float().mean().item()
    assert abs(frac - (0.5 + 0.5 / A)) < 0.05
    with pytest.raises(ConfigError, match="epsilon"):
        agent.act(obs, epsilon=1.5)


# --- updates -------------------------------------------------------------------------------

class LoggedTarget:
    """A declared target that only logs its updates."""

    def __init__(self, log: list):
        self.log = log

    def update(self) -> None:
        self.log.append("update_targets")


class StubAux(AuxiliaryLoss):
    """A test auxiliary loss: a clipped predictor, an unclipped layer, a call log. ``observe``
    (set by a test) is called at each forward and its result kept in ``noise_seen``."""

    def __init__(self, weight: float = 1.0, log: list | None = None):
        super().__init__()
        self.weight = weight
        self.log = log if log is not None else []
        self.observe = None

    def setup(self, context):
        self.seen_latent_dim = context.latent_dim
        self.predictor = nn.Linear(context.projector.out_features, 4)
        self.unclipped = nn.Linear(4, 1)

    def forward(self, batch, context):
        self.log.append("forward")
        if self.observe is not None:
            self.noise_seen = self.observe()
        z = context.projector(context.encoder(context.augment(batch.obs[:, 1].float() / 255)))
        loss = self.weight * self.unclipped(self.predictor(z)).pow(2).mean()
        return LossOutput({"loss": loss}, {"loss": float(loss.detach())})

    def grad_clip_groups(self):
        return [list(self.predictor.parameters())]

    def target_networks(self):
        return [LoggedTarget(self.log)]


def _spy_on_step(agent: Rainbow, log: list, norms: list) -> None:
    step = agent.optimizer.step

    def spy(*args, **kwargs):
        log.append("step")
        stem = torch.cat([p.grad.flatten() for p in agent.stem_parameters() if p.grad is not None])
        aux = agent.aux_losses[0]
        pred = torch.cat([p.grad.flatten() for p in aux.predictor.parameters()])
        free = torch.cat([p.grad.flatten() for p in aux.unclipped.parameters()])
        norms.append((stem.norm().item(), pred.norm().item(), free.norm().item()))
        return step(*args, **kwargs)

    agent.optimizer.step = spy


def test_optimizer_covers_online_and_aux_parameters_with_the_papers_hyperparameters():
    aux = StubAux()
    agent = tiny_agent(aux_losses=[aux])
    assert aux.seen_latent_dim == 16 * 49
    (group,) = agent.optimizer.param_groups
    assert group["lr"] == 1e-4 and group["eps"] == 1.5e-4
    assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0
    ids = {id(p) for p in group["params"]}
    assert all(id(p) in ids for p in aux.parameters())
    assert all(id(p) in ids for p in agent.stem_parameters())
    assert id(agent.head.advantage_bias) in ids
    assert not any(id(p) in ids for p in agent.target_encoder.parameters())
    assert not any(id(p) in ids for p in agent.target_head.parameters())
    assert len(group["params"]) == len(set(ids))  # shared projector parameters appear once


def test_update_with_aux_loss_clips_groups_and_moves_targets_before_the_step():
    torch.manual_seed(0)
    log: list[str] = []
    norms: list = []
    aux = StubAux(weight=1e4, log=log)  # huge gradients, so that clipping bites
    agent = tiny_agent(aux_losses=[aux])
    _spy_on_step(agent, log, norms)
    before = [p.detach().clone() for p in aux.parameters()]
    metrics = agent.update(make_batch())
    assert log == ["forward", "update_targets", "step"]
    stem, pred, free = norms[0]
    assert stem <= 10.0 * (1 + 1e-4) and pred <= 10.0 * (1 + 1e-4)
    assert metrics["grad_norm"] > 10 and metrics["grad_norm_aux0_0"] > 10  # norms before clipping
    assert free > 10  # parameters outside every group are not clipped (MLR's predictor)
    assert all(not torch.equal(b, p) for b, p in zip(before, aux.parameters(), strict=True))
    assert {"rl_loss", "total_loss", "mean_q", "stubaux_loss", "priority_mean"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert float(metrics["total_loss"]) == pytest.approx(float(metrics["rl_loss"] + metrics["stubaux_loss"]), rel=1e-5)
    assert agent.update_count == 1


def test_target_is_a_copy_after_each_update_and_keeps_the_previous_noise():
    torch.manual_seed(0)
    aux = StubAux()
    agent = tiny_agent(aux_losses=[aux])
    aux.observe = lambda: (agent.head.adv_fc1.epsilon_in.clone(), agent.target_head.adv_fc1.epsilon_in.clone())
    batch = make_batch()
    agent.update(batch)
    online = dict(agent.encoder.state_dict(), **agent.head.state_dict())
    target = dict(agent.target_encoder.state_dict(), **agent.target_head.state_dict())
    assert online.keys() == target.keys() and all(torch.equal(online[k], target[k]) for k in online)
    noise_after_first = agent.head.adv_fc1.epsilon_in.clone()
    agent.update(batch)
    online_noise, target_noise = aux.noise_seen  # as seen during the second update
    assert torch.equal(target_noise, noise_after_first)  # the target keeps the last update's noise
    assert not torch.equal(online_noise, noise_after_first)  # the online net resampled once
    # period 2: copied after every second update only
    agent2 = tiny_agent(target_update_period=2)
    agent2.update(batch)
    assert not torch.equal(agent2.target_head.adv_fc1.weight_mu, agent2.head.adv_fc1.weight_mu)
    agent2.update(batch)
    assert torch.equal(agent2.target_head.adv_fc1.weight_mu, agent2.head.adv_fc1.weight_mu)


@pytest.mark.parametrize("double_dqn", [True, False])
def test_rl_loss_and_priorities_match_a_hand_computed_c51_target(double_dqn):
    torch.manual_seed(0)
    agent = tiny_agent(augment=False, noisy_std=0.0, double_dqn=double_dqn)
    with torch.no_grad():  # make the target net differ, so that double DQN matters
        agent.target_head.adv_fc2.weight_mu.add_(torch.randn_like(agent.target_head.adv_fc2.weight_mu))
    batch = make_batch(weights=torch.linspace(0.2, 1.0, 8))
    rows = torch.arange(8)
    with torch.no_grad():
        log_probs = F.log_softmax(agent.head(agent.encoder(batch.obs[:, 0].float() / 255)), -1)
        log_p = log_probs[rows, batch.action[:, 0]]
        nxt = batch.obs[:, 3].float() / 255
        target_ps = F.softmax(agent.target_head(agent.target_encoder(nxt)), -1)
        if double_dqn:
            chooser = agent.head(agent.encoder(nxt))
        else:
            chooser = agent.target_head(agent.target_encoder(nxt))
        a_star = (F.softmax(chooser, -1) @ agent.support).argmax(-1)
        target = project_distribution(target_ps[rows, a_star], batch.returns[:, 0], batch.done_n[:, 0],
                                      0.99 ** 3, agent.support)
        ce = -(target * log_p).sum(-1)
        # the reference's priority: KL with the target clamped to [1e-6, 1] (rlpyt's EPS), itself
        # clamped to [1e-6, 1e6]; the target has zero-mass atoms, where the clamp counts
        assert (target == 0).any()
        clamped = target.clamp(1e-6, 1)
        kl = (clamped * (clamped.log() - log_p)).sum(-1).clamp(1e-6, 1e6)
    metrics = agent.update(batch)
    assert float(metrics["rl_loss"]) == pytest.approx((batch.weights * ce).mean().item(), rel=1e-5)
    torch.testing.assert_close(metrics.priorities, kl)
    assert metrics.priorities.shape == (8,) and not metrics.priorities.requires_grad
    assert "priorities" not in metrics  # handed to the replay, not logged as a metric


def test_importance_weights_scale_the_rl_loss():
    torch.manual_seed(0)
    agent = tiny_agent(augment=False, noisy_std=0.0)
    twin = copy.deepcopy(agent)
    single = copy.deepcopy(agent)
    batch = make_batch()
    base = agent.update(batch)["rl_loss"]
    batch.weights = torch.full((8,), 2.0)
    assert twin.update(batch)["rl_loss"] == pytest.approx(2 * base, rel=1e-5)
    one_hot = torch.zeros(8)
    one_hot[0] = 8.0  # mean over the batch of 8·CE_0·[b = 0] = CE_0
    batch.weights = one_hot
    first_only = Batch(**{k: v[:1] for k, v in vars(batch).items()})
    first_only.weights = None
    weighted = copy.deepcopy(single).update(batch)["rl_loss"]
    assert weighted == pytest.approx(single.update(first_only)["rl_loss"], rel=1e-5)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    agent = tiny_agent()
    batch = make_batch(done=True)  # a fixed target: the projected n-step returns
    losses = [agent.update(batch)["rl_loss"] for _ in range(30)]
    assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5  # ≈ −10% at lr 1e-4
    assert all(math.isfinite(v) for v in losses)


def test_checkpoint_round_trip_resumes_identically():
    torch.manual_seed(0)
    agent = tiny_agent(aux_losses=[StubAux()])
    batch = make_batch()
    agent.update(batch)
    state = agent.checkpoint_state()
    torch.manual_seed(1)
    resumed = tiny_agent(aux_losses=[StubAux()])
    resumed.load_checkpoint_state(copy.deepcopy(state))
    assert resumed.update_count == 1
    assert resumed.optimizer.state_dict()["state"].keys() == agent.optimizer.state_dict()["state"].keys()
    torch.manual_seed(2)
    a = agent.update(batch)
    torch.manual_seed(2)
    b = resumed.update(batch)
    assert a == pytest.approx(b, rel=1e-5)
    assert all(torch.equal(x, y) for x, y in zip(agent.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))


# --- configuration -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, word", [
    (dict(v_min=1.0, v_max=1.0), "v_min"),
    (dict(discount=1.5), "discount"),
    (dict(n_step=0), "n_step"),
    (dict(n_atoms=1), "n_atoms"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(target_update_period=0), "target_update_period"),
    (dict(max_grad_norm=-1.0), "max_grad_norm"),
])
def test_bad_parameters_are_config_errors(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        tiny_agent(**kwargs)


def test_shape_errors_are_actionable():
    with pytest.raises(ConfigError, match="image_size"):
        Rainbow((4, 64, 64), 3, encoder=TINY_ENCODER)  # an 84-px encoder on 64-px frames
    with pytest.raises(ConfigError, match="observation_shape"):
        Rainbow((84, 84), 3)
    with pytest.raises(ConfigError, match="n_step"):
        tiny_agent().update(make_batch(t=3))  # needs obs up to index n_step = 3


def test_gin_configures_the_agent_and_its_encoder():
    try:
        gin.parse_config("encoders.nature_cnn.channels = (8, 16, 16)\nagents.rainbow.hidden_size = 16")
        agent = Rainbow((4, 84, 84), 3)
        assert agent.latent_dim == 16 * 49 and agent.projector.out_features == 32
    finally:
        gin.clear_config()
