"""MLR loss against hand computations, on a tiny fake agent (not the real Rainbow or SAC)."""

from __future__ import annotations

import gin
import pytest
import torch
import torch.nn.functional as F
from conftest import loss_context, run_loss, step_targets
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.decoders.transformer import TransformerDecoder
from mlr_registry.errors import ConfigError
from mlr_registry.losses.mlr import MLRLoss, normalized_squared_distance
from mlr_registry.maskers.cube import CubeMasker

B, T, C, H = 2, 16, 4, 24


class FakeAgent(nn.Module):
    """Just enough of an agent: a conv encoder (n 4 24 24) -> (n 144), a Linear projector, an
    augmentation that records its inputs (identity, or a random per-image roll)."""

    def __init__(self, num_actions: int = 3, discrete: bool = True, shift: bool = False,
                 fc: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(C, 4, 4, stride=4), nn.ReLU(), nn.Flatten()]
        if fc:  # DMC-like: conv, then Linear + LayerNorm
            layers += [nn.Linear(144, 12), nn.LayerNorm(12)]
        self.encoder = nn.Sequential(*layers)
        self._d = 12 if fc else 144
        self.projector = nn.Linear(self._d, 10)
        self.num_actions = num_actions
        self.discrete_actions = discrete
        self.shift = shift
        self.augment_inputs: list[torch.Tensor] = []

    @property
    def latent_dim(self) -> int:
        return self._d

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self._d,) if self._d == 12 else (4, 6, 6)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        self.augment_inputs.append(x.detach().clone())
        if not self.shift:
            return x
        shifts = torch.randint(-2, 3, (2,))
        return torch.roll(x, shifts=tuple(shifts.tolist()), dims=(-2, -1))


class FixedMasker:
    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask  # (t 1 h w)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mask[: obs.shape[1]].unsqueeze(0).expand(obs.shape[0], -1, -1, -1, -1)


def _batch(t: int = T, weights: bool = True, discrete: bool = True, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (B, t, C, H, H), generator=g, dtype=torch.uint8)
    action = torch.randint(0, 3, (B, t), generator=g) if discrete else torch.randn(B, t, 3, generator=g)
    return Batch(obs=obs, action=action, reward=torch.zeros(B, t), done=torch.zeros(B, t, dtype=torch.bool),
                 weights=torch.tensor([0.5, 2.0]) if weights else None)


def _fixed_mask(seed: int = 1) -> torch.Tensor:
    return CubeMasker(patch_size=6, seed=seed)(torch.zeros(1, T, C, H, H))[0]  # (t 1 h w)


def _small_decoder(**kw):
    return TransformerDecoder(**kw, num_heads=2 if kw["dim"] % 2 == 0 else 1)


def _loss(agent: FakeAgent | None = None, **kw) -> tuple[MLRLoss, FakeAgent]:
    torch.manual_seed(0)
    agent = agent or FakeAgent()
    kw.setdefault("masker", CubeMasker(patch_size=6, seed=0))
    kw.setdefault("decoder", _small_decoder)
    loss = MLRLoss(**kw)
    loss.setup(loss_context(agent))
    return loss, agent


def test_normalized_squared_distance_by_hand():
    p = torch.tensor([[3.0, 4.0], [1e-4, 0.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    d = normalized_squared_distance(p, z, eps=1e-3)
    # row 0: (.6-1)² + .8² = 0.8 = 2 - 2·0.6; row 1: ‖p‖ < eps, so p/eps = (0.1, 0): .01 + 1
    assert d.tolist() == pytest.approx([0.8, 1.01], abs=1e-6)
    assert normalized_squared_distance(p.half(), z.half()).dtype == torch.float32


def test_loss_equals_hand_computation():
    mask = _fixed_mask()
    loss, agent = _loss(masker=FixedMasker(mask), weight=0.5)
    batch = _batch()
    out, metrics = run_loss(loss, batch, agent)

    obs = batch.obs
    masked = obs.float() * (~mask).float()  # (b t c h w) · (t 1 h w); quirk: no /255
    latents = agent.encoder(masked.flatten(0, 1)).view(B, T, -1)
    pred = loss.predictor(agent.projector(loss.decoder(latents, batch.action).flatten(0, 1)))
    target = loss.target_projector(loss.target_encoder(obs.flatten(0, 1).float() / 255))
    per = (2 - 2 * F.cosine_similarity(pred, target, dim=-1)).view(B, T)
    expected = (per * torch.tensor([0.5, 2.0])[:, None]).mean()

    assert out.shape == ()
    assert out.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    assert float(metrics["mlr_loss"]) == pytest.approx(per.mean().item(), rel=1e-5)
    assert float(metrics["mlr_cosine"]) == pytest.approx(1 - per.mean().item() / 2, rel=1e-5)
    assert set(metrics) == {"mlr_loss", "mlr_cosine"}


def test_importance_weights_switch_and_absent_weights():
    mask = _fixed_mask()
    loss, agent = _loss(masker=FixedMasker(mask))
    weighted, metrics = run_loss(loss, _batch(weights=True), agent)
    unweighted, _ = run_loss(loss, _batch(weights=False), agent)
    assert unweighted.item() == pytest.approx(float(metrics["mlr_loss"]), rel=1e-6)
    assert weighted.item() != pytest.approx(unweighted.item(), rel=1e-3)
    off, _ = _loss(masker=FixedMasker(mask), use_importance_weights=False)
    assert run_loss(off, _batch(weights=True), agent)[0].item() == pytest.approx(unweighted.item(), rel=1e-6)


def test_quirk_changes_online_input_scale_and_mask_precedes_augment():
    mask = _fixed_mask()
    batch = _batch()
    raw = batch.obs.float().flatten(0, 1)
    keep = (~mask).float().repeat(B, 1, 1, 1)  # (b·t 1 h w)

    loss, agent = _loss(masker=FixedMasker(mask))  # faithful Atari: [0, 255] masked input
    run_loss(loss, batch, agent)
    online_in, target_in = agent.augment_inputs  # augment sees the masked frames, then the target
    assert torch.equal(online_in, raw * keep)
    assert online_in.max() > 1.5
    assert torch.allclose(target_in, raw / 255)

    loss, agent = _loss(masker=FixedMasker(mask), unnormalized_masked_input=False)
    run_loss(loss, batch, agent)
    clean_in, _ = agent.augment_inputs
    assert torch.allclose(clean_in * 255, raw * keep, atol=1e-4)
    assert clean_in.max() <= 1.0


def test_only_first_sequence_length_steps_are_used():
    batch = _batch(t=26)
    loss, agent = _loss(masker=FixedMasker(_fixed_mask()))
    a, _ = run_loss(loss, batch, agent)
    batch.obs[:, 16:] = 0
    batch.action[:, 16:] = 0
    b, _ = run_loss(loss, batch, agent)
    assert torch.equal(a, b)
    assert agent.augment_inputs[0].shape == (B * 16, C, H, H)
    short, _ = _loss(sequence_length=8, masker=CubeMasker(patch_size=6, seed=0))
    run_loss(short, batch, agent)
    assert agent.augment_inputs[-1].shape == (B * 8, C, H, H)


def test_gradients_reach_online_networks_not_targets():
    loss, agent = _loss(agent=FakeAgent(shift=True))
    out, _ = run_loss(loss, _batch(), agent)
    out.backward()
    for name, module in (("encoder", agent.encoder), ("projector", agent.projector),
                         ("decoder", loss.decoder), ("predictor", loss.predictor)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    for module in (loss.target_encoder, loss.target_projector):
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    # The agent's modules are not registered in the loss (no duplicates in optimizers).
    loss_params = {id(p) for p in loss.parameters()}
    assert not loss_params & {id(p) for p in agent.parameters()}
    assert {n.split(".")[0] for n, _ in loss.named_parameters()} == {
        "decoder", "target_encoder", "target_projector", "predictor"}


def test_grad_clip_groups_are_the_transformer_blocks():
    loss, _ = _loss()
    (group,) = loss.grad_clip_groups()
    assert {id(p) for p in group} == {id(p) for p in loss.decoder.blocks.parameters()}
    assert not {id(p) for p in group} & {id(p) for p in loss.decoder.action_embedding.parameters()}
    assert not {id(p) for p in group} & {id(p) for p in loss.predictor.parameters()}


def test_target_starts_as_copy_and_tau_one_is_exact_hard_copy():
    loss, agent = _loss()
    for online, target in ((agent.encoder, loss.target_encoder), (agent.projector, loss.target_projector)):
        assert all(torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters(), strict=True))
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.equal(agent.projector.weight, loss.target_projector.weight)
    step_targets(loss)
    for online, target in ((agent.encoder, loss.target_encoder), (agent.projector, loss.target_projector)):
        assert all(torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters(), strict=True))
    assert loss.target_projector.weight.data_ptr() != agent.projector.weight.data_ptr()


def test_tau_005_ema_numbers():
    loss, agent = _loss(target_tau=0.05)
    with torch.no_grad():
        agent.projector.weight.fill_(1.0)
        loss.target_projector.weight.fill_(3.0)
        agent.encoder[0].bias.fill_(-2.0)
        loss.target_encoder[0].bias.fill_(2.0)
    step_targets(loss)
    assert torch.allclose(loss.target_projector.weight, torch.full_like(agent.projector.weight, 2.9))
    assert torch.allclose(loss.target_encoder[0].bias, torch.full((4,), 1.8))  # .05·−2 + .95·2
    step_targets(loss)
    assert torch.allclose(loss.target_projector.weight, torch.full_like(agent.projector.weight, 2.805))


def test_mlp_projector_and_predictor_dmc_mode():
    loss, agent = _loss(projector="mlp", predictor="mlp", projection_hidden=7, target_tau=0.05)
    assert [tuple(m.weight.shape) for m in loss.projector if isinstance(m, nn.Linear)] == [(7, 144), (144, 7)]
    assert [tuple(m.weight.shape) for m in loss.predictor if isinstance(m, nn.Linear)] == [(7, 144), (144, 7)]
    # The target projector is initialized independently (not a copy of the projector).
    assert not torch.equal(loss.projector[0].weight, loss.target_projector[0].weight)
    out, _ = run_loss(loss, _batch(), agent)
    out.backward()
    assert agent.projector.weight.grad is None  # the agent's projector is not used
    assert loss.projector[0].weight.grad is not None
    before = loss.target_projector[0].weight.clone()
    step_targets(loss)
    expected = 0.05 * loss.projector[0].weight + 0.95 * before
    assert torch.allclose(loss.target_projector[0].weight, expected)


def test_trunc_normal_init_and_encoder_reinit():
    agent = FakeAgent(fc=True)
    conv_before = agent.encoder[0].weight.clone()
    loss, agent = _loss(agent=agent, projector="mlp", predictor="mlp", init="trunc_normal",
                        reinit_encoder_linear=True)
    for module in (loss.projector, loss.predictor, loss.target_projector, agent.encoder, loss.target_encoder):
        for m in module.modules():
            if isinstance(m, nn.Linear):
                assert float(m.weight.detach().abs().max()) <= 0.02 and bool((m.bias == 0).all())
    assert torch.equal(agent.encoder[0].weight, conv_before)  # convs untouched
    assert torch.equal(loss.target_encoder[0].weight, conv_before)
    assert not torch.equal(agent.encoder[3].weight, loss.target_encoder[3].weight)  # independent draws
    run_loss(loss, _batch(), agent)  # runs with a DMC-like (vector) encoder


def test_continuous_actions():
    agent = FakeAgent(num_actions=3, discrete=False)
    loss, agent = _loss(agent=agent)
    assert loss.decoder.discrete_actions is False
    out, _ = run_loss(loss, _batch(discrete=False), agent)
    out.backward()
    assert loss.decoder.action_embedding.weight.grad is not None


def test_defaults_and_gin_decoder_factory():
    loss = MLRLoss()
    assert isinstance(loss.masker, CubeMasker) and loss.masker.patch_size == 12
    assert (loss.target_tau, loss.sequence_length, loss.weight) == (1.0, 16, 1.0)
    assert loss.unnormalized_masked_input and loss.use_importance_weights
    gin.clear_config()
    try:
        gin.parse_config("""
            losses.mlr.decoder = @decoders.transformer
            losses.mlr.masker = @maskers.cube()
            decoders.transformer.depth = 1
            decoders.transformer.num_heads = 4
            maskers.cube.patch_size = 6
        """)
        loss = MLRLoss()
        loss.setup(loss_context(FakeAgent()))
    finally:
        gin.clear_config()
    assert len(loss.decoder.blocks) == 1 and loss.decoder.blocks[0].attn.num_heads == 4
    assert loss.decoder.dim == 144 and loss.decoder.num_actions == 3
    assert loss.masker.patch_size == 6


def test_errors():
    with pytest.raises(ConfigError, match="target_tau"):
        MLRLoss(target_tau=0.0)
    with pytest.raises(ConfigError, match="projector"):
        MLRLoss(projector="q_l1")
    with pytest.raises(ConfigError, match="predictor"):
        MLRLoss(predictor="mlp3")
    with pytest.raises(ConfigError, match="init = 'trunc_normal'"):
        MLRLoss(reinit_encoder_linear=True)
    with pytest.raises(ConfigError, match="sequence_length"):
        MLRLoss(sequence_length=0)
    loss, agent = _loss()
    with pytest.raises(ConfigError, match="sequence_length = 16"):
        run_loss(loss, _batch(t=8), agent)
    agent.projector = None
    with pytest.raises(ConfigError, match="exposes no projector; use losses.mlr.projector = 'mlp'"):
        MLRLoss().setup(loss_context(agent))
