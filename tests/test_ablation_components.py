"""Ablation components: the per-step MLP decoder, the identity decoder, MLR's distance and
projector/predictor switches, and the pixel-reconstruction objective, on tiny fake agents."""

from __future__ import annotations

import gin
import pytest
import torch
import torch.nn.functional as F
from conftest import loss_context, run_loss, step_targets
from torch import nn

from mlr_registry import registry
from mlr_registry.agents.augmentation import Augmentation, intensity, random_crop
from mlr_registry.batch import Batch
from mlr_registry.decoders.identity import NoDecoder
from mlr_registry.decoders.mlp import MLPDecoder
from mlr_registry.decoders.transformer import TransformerDecoder
from mlr_registry.errors import ConfigError
from mlr_registry.losses.mlr import MLRLoss, mean_squared_error
from mlr_registry.losses.pixel_reconstruction import ConvPixelDecoder, PixelMLRLoss, masked_pixel_mse
from mlr_registry.maskers.cube import CubeMasker

B, T, C, H = 2, 16, 4, 24


class FakeAgent(nn.Module):
    """A conv encoder (n 4 24 24) -> (n 144) with latent_shape (4, 6, 6), or with ``fc`` a
    DMC-like vector encoder -> (n 12); a Linear projector; ``augment`` is the identity, or with
    ``crop`` a random 20x20 crop per image (as SAC's 84 crop of 100)."""

    def __init__(self, fc: bool = False, crop: bool = False, discrete: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(C, 4, 4, stride=4), nn.ReLU(), nn.Flatten()]
        self.image = 20 if crop else H
        side = self.image // 4
        if fc:
            layers += [nn.Linear(4 * side * side, 12), nn.LayerNorm(12)]
        self.encoder = nn.Sequential(*layers)
        self._shape = (12,) if fc else (4, side, side)
        self.projector = nn.Linear(self.latent_dim, 10)
        self.num_actions = 3
        self.discrete_actions = discrete
        self.observation_shape = (C, H, H)
        self.crop = crop
        self.augment_inputs: list[torch.Tensor] = []

    @property
    def latent_dim(self) -> int:
        return int(torch.tensor(self._shape).prod())

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self._shape

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        self.augment_inputs.append(x.detach().clone())
        if not self.crop:
            return x
        top, left = torch.randint(0, H - 20 + 1, (2,)).tolist()
        return x[..., top:top + 20, left:left + 20]


class FixedMasker:
    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask  # (t 1 h w)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mask[: obs.shape[1]].unsqueeze(0).expand(obs.shape[0], -1, -1, -1, -1)


def _mask() -> torch.Tensor:
    return CubeMasker(patch_size=6, seed=1)(torch.zeros(1, T, C, H, H))[0]  # (t 1 h w)


def _batch(discrete: bool = True, weights: bool = True, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (B, T, C, H, H), generator=g, dtype=torch.uint8)
    action = torch.randint(0, 3, (B, T), generator=g) if discrete else torch.randn(B, T, 3, generator=g)
    return Batch(obs=obs, action=action, reward=torch.zeros(B, T), done=torch.zeros(B, T, dtype=torch.bool),
                 weights=torch.tensor([0.5, 2.0]) if weights else None)


def _mlr(agent: FakeAgent, **kw) -> MLRLoss:
    torch.manual_seed(0)
    kw.setdefault("masker", FixedMasker(_mask()))
    kw.setdefault("decoder", NoDecoder)
    loss = MLRLoss(**kw)
    loss.setup(loss_context(agent))
    return loss


def _grads_nonzero(module: nn.Module) -> bool:
    return all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


# --- decoders.mlp ----------------------------------------------------------------------------

@pytest.mark.parametrize("discrete", [True, False])
def test_mlp_decoder_shapes_and_actions(discrete):
    torch.manual_seed(0)
    dec = MLPDecoder(dim=8, num_actions=3, discrete_actions=discrete, depth=3, mlp_ratio=1.5)
    latents = torch.randn(2, 5, 8)
    actions = torch.randint(0, 3, (2, 5)) if discrete else torch.randn(2, 5, 3)
    out = dec(latents, actions)
    assert out.shape == (2, 5, 8)
    assert len(dec.blocks) == 3 and dec.blocks[0].mlp[0].out_features == 12
    assert {id(p) for p in dec.block_parameters()} == {id(p) for p in dec.blocks.parameters()}
    other = (actions + 1) % 3 if discrete else actions + 1.0
    assert not torch.allclose(dec(latents, other), out)  # actions are used
    no_act = MLPDecoder(dim=8, num_actions=3, discrete_actions=discrete, use_actions=False)
    assert no_act.action_embedding is None
    assert torch.equal(no_act(latents, actions), no_act(latents, other))


def test_mlp_decoder_has_no_temporal_mixing_unlike_the_transformer():
    torch.manual_seed(0)
    latents, actions = torch.randn(2, 6, 8), torch.randint(0, 3, (2, 6))
    changed = latents.clone()
    changed[:, [0, 1, 2, 4, 5]] = torch.randn(2, 5, 8)
    changed_actions = actions.clone()
    changed_actions[:, [0, 5]] = (actions[:, [0, 5]] + 1) % 3
    mlp = MLPDecoder(dim=8, num_actions=3)
    assert torch.equal(mlp(latents, actions)[:, 3], mlp(changed, changed_actions)[:, 3])
    assert not torch.allclose(mlp(latents, actions)[:, 0], mlp(changed, changed_actions)[:, 0])
    transformer = TransformerDecoder(dim=8, num_actions=3, depth=1)
    assert not torch.allclose(transformer(latents, actions)[:, 3], transformer(changed, changed_actions)[:, 3])


def test_mlp_decoder_trunc_normal_init():
    dec = MLPDecoder(dim=8, num_actions=3, init="trunc_normal")
    for m in dec.modules():
        if isinstance(m, nn.Linear):
            assert float(m.weight.detach().abs().max()) <= 0.02 and bool((m.bias == 0).all())


# --- decoders.none ---------------------------------------------------------------------------

def test_no_decoder_is_the_identity():
    dec = NoDecoder(dim=8, num_actions=3)
    latents = torch.randn(2, 5, 8, requires_grad=True)
    out = dec(latents, torch.zeros(2, 5, dtype=torch.long))
    assert out is latents
    assert list(dec.parameters()) == [] and list(dec.block_parameters()) == []
    with pytest.raises(ValueError, match="latents"):
        dec(torch.randn(2, 5, 7), None)


def test_decoders_are_registered_and_gin_configurable():
    registry.load_all()
    assert registry.lookup("decoder", "mlp").target is MLPDecoder
    assert registry.lookup("decoder", "none").target is NoDecoder
    assert registry.lookup("loss", "pixel_mlr").target is PixelMLRLoss
    gin.clear_config()
    try:
        gin.parse_config("""
            losses.mlr.decoder = @decoders.mlp
            decoders.mlp.depth = 1
            decoders.mlp.use_actions = False
        """)
        loss = MLRLoss(masker=FixedMasker(_mask()))
        loss.setup(loss_context(FakeAgent()))
    finally:
        gin.clear_config()
    assert isinstance(loss.decoder, MLPDecoder) and len(loss.decoder.blocks) == 1
    assert loss.decoder.action_embedding is None and loss.decoder.dim == 144


# --- MLR: distance, projector/predictor "none" -----------------------------------------------

def test_mean_squared_error_by_hand():
    p = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    z = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, -2.0]])
    assert mean_squared_error(p, z).tolist() == pytest.approx([(4 + 9) / 3, 8 / 3])
    assert mean_squared_error(p.half(), z.half()).dtype == torch.float32


def test_mse_without_decoder_projector_predictor_equals_hand_computation():
    agent = FakeAgent()
    mask = _mask()
    loss = _mlr(agent, distance="mse", projector="none", predictor="none", unnormalized_masked_input=False,
                weight=0.5)
    assert isinstance(loss.projector, nn.Identity) and isinstance(loss.target_projector, nn.Identity)
    assert isinstance(loss.predictor, nn.Identity)
    batch = _batch()
    out, metrics = run_loss(loss, batch, agent)

    obs = batch.obs.float().flatten(0, 1)
    keep = (~mask).float().repeat(B, 1, 1, 1)
    pred = agent.encoder(obs * keep / 255)  # no decoder, projector, predictor
    target = loss.target_encoder(obs / 255)
    per = ((pred - target) ** 2).mean(-1).view(B, T)
    expected = (per * torch.tensor([0.5, 2.0])[:, None]).mean()
    assert out.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    assert float(metrics["mlr_loss"]) == pytest.approx(per.mean().item(), rel=1e-5)
    cos = F.cosine_similarity(pred, target, dim=-1).mean().item()
    assert float(metrics["mlr_cosine"]) == pytest.approx(cos, rel=1e-4)
    out.backward()
    assert _grads_nonzero(agent.encoder)
    assert agent.projector.weight.grad is None  # the agent's projector is not used


def test_cosine_default_differs_from_mse():
    agent = FakeAgent()
    cosine, _ = run_loss(_mlr(agent), _batch(), agent)
    mse, _ = run_loss(_mlr(agent, distance="mse"), _batch(), agent)
    assert cosine.item() != pytest.approx(mse.item(), rel=1e-3)


def test_projector_none_keeps_predictor_at_latent_width_and_targets_track_encoder():
    agent = FakeAgent(fc=True)
    loss = _mlr(agent, projector="none", predictor="linear", target_tau=0.5)
    assert tuple(loss.predictor.weight.shape) == (12, 12)
    assert {n.split(".")[0] for n, _ in loss.named_parameters()} == {"target_encoder", "predictor"}
    out, _ = run_loss(loss, _batch(), agent)
    out.backward()
    assert _grads_nonzero(agent.encoder) and _grads_nonzero(loss.predictor)
    with torch.no_grad():
        agent.encoder[3].bias.fill_(2.0)
        loss.target_encoder[3].bias.fill_(0.0)
    step_targets(loss)
    assert torch.allclose(loss.target_encoder[3].bias, torch.full((12,), 1.0))


def test_predictor_none_with_agent_projector():
    agent = FakeAgent()
    loss = _mlr(agent, predictor="none")
    assert isinstance(loss.predictor, nn.Identity)
    batch = _batch()
    out, _ = run_loss(loss, batch, agent)
    obs = batch.obs.float().flatten(0, 1)
    keep = (~_mask()).float().repeat(B, 1, 1, 1)
    pred = agent.projector(agent.encoder(obs * keep))  # Atari quirk: masked input not /255
    target = loss.target_projector(loss.target_encoder(obs / 255))
    per = (2 - 2 * F.cosine_similarity(pred, target, dim=-1)).view(B, T)
    assert out.item() == pytest.approx((per * torch.tensor([0.5, 2.0])[:, None]).mean().item(), rel=1e-5)


def test_mlr_with_mlp_decoder_trains_and_clips_its_blocks():
    agent = FakeAgent(discrete=False)
    loss = _mlr(agent, decoder=MLPDecoder)
    (group,) = loss.grad_clip_groups()
    assert {id(p) for p in group} == {id(p) for p in loss.decoder.blocks.parameters()}
    out, _ = run_loss(loss, _batch(discrete=False), agent)
    out.backward()
    assert _grads_nonzero(agent.encoder) and _grads_nonzero(loss.decoder)
    assert _mlr(agent).grad_clip_groups() == []  # decoders.none: nothing to clip


# --- losses.pixel_mlr ------------------------------------------------------------------------

def test_masked_pixel_mse_by_hand_and_ignores_unmasked_pixels():
    g = torch.Generator().manual_seed(0)
    recon, target = torch.rand(2, 3, 2, 4, 4, generator=g), torch.rand(2, 3, 2, 4, 4, generator=g)
    mask = torch.rand(2, 3, 1, 4, 4, generator=g) < 0.5
    mask[1] = False  # a sequence with nothing masked contributes 0
    out = masked_pixel_mse(recon, target, mask)
    m = mask.expand_as(recon)
    assert out[0].item() == pytest.approx(((recon - target)[0][m[0]] ** 2).mean().item(), rel=1e-6)
    assert out[1].item() == 0.0
    other = torch.where(m, recon, torch.randn_like(recon) * 100)
    assert torch.equal(masked_pixel_mse(other, target, mask), out)


def _pixel(agent: FakeAgent, **kw) -> PixelMLRLoss:
    torch.manual_seed(0)
    kw.setdefault("masker", FixedMasker(_mask()))
    kw.setdefault("decoder", lambda **k: TransformerDecoder(**k, depth=1))
    kw.setdefault("decoder_channels", 8)
    loss = PixelMLRLoss(**kw)
    loss.setup(loss_context(agent))
    return loss


@pytest.mark.parametrize("augment", [Augmentation(), lambda x: intensity(random_crop(x, 84), 0.05)],
                         ids=["atari_shift_intensity", "dmc_crop_intensity"])
def test_agents_augmentations_treat_stacked_channels_alike(augment):
    """The pixel loss stacks [masked input | target | mask] along channels and augments once;
    this holds only if the agents' augmentations move and scale all channels together."""
    x = torch.rand(6, 3, 100, 100) + 0.1
    mask = (torch.rand(6, 1, 100, 100) < 0.5).float()
    out = augment(torch.cat([x * (1 - mask) * 255, x, mask], dim=1))
    online, target, masked = out[:, :3], out[:, 3:6], out[:, 6:] > 0.5
    assert masked.float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert bool((online == 0).expand_as(online).eq(masked.expand_as(online)).all())  # zeros exactly where masked
    keep = (~masked).expand_as(online)
    assert torch.allclose(online[keep], 255 * target[keep], rtol=1e-5)


def test_conv_pixel_decoder_sizes_for_both_benchmarks():
    atari = ConvPixelDecoder((64, 7, 7), 4, (84, 84), channels=8)
    assert atari(torch.randn(2, 3136)).shape == (2, 4, 84, 84)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in atari.modules()) == 3  # 7 -> 56, resize to 84
    dmc = ConvPixelDecoder((50,), 9, (84, 84), channels=8)
    assert dmc(torch.randn(2, 50)).shape == (2, 9, 84, 84)
    exact = ConvPixelDecoder((16,), 3, (28, 28), channels=4)
    assert not exact.resize and exact(torch.randn(1, 16)).shape == (1, 3, 28, 28)


@pytest.mark.parametrize("fc, crop", [(False, False), (True, True)])
def test_pixel_loss_counts_only_masked_pixels_and_trains_the_encoder(fc, crop):
    agent = FakeAgent(fc=fc, crop=crop)
    loss = _pixel(agent, unnormalized_masked_input=not fc)
    assert loss.pixel_decoder.out_size == ((20, 20) if crop else (H, H))
    batch = _batch()
    agent.augment_inputs.clear()
    out, metrics = run_loss(loss, batch, agent)
    (views,) = agent.augment_inputs  # one augmentation draw for input, target and mask
    assert views.shape == (B * T, 2 * C + 1, H, H)
    out.backward()
    assert _grads_nonzero(agent.encoder) and _grads_nonzero(loss.pixel_decoder)
    assert _grads_nonzero(loss.decoder.blocks)
    loss_value = float(metrics["pixel_mlr_loss"])
    assert loss_value > 0 and out.item() != pytest.approx(loss_value, rel=1e-3)  # PER weights


def test_pixel_loss_equals_hand_computation_and_ignores_unmasked_reconstruction():
    agent = FakeAgent()
    mask = _mask()
    loss = _pixel(agent, weight=2.0)
    batch = _batch()
    out, metrics = run_loss(loss, batch, agent)

    obs = batch.obs.float().flatten(0, 1)
    keep = (~mask).float().repeat(B, 1, 1, 1)
    latents = agent.encoder(obs * keep).view(B, T, -1)  # Atari quirk: masked input in [0, 255]
    recon = loss.pixel_decoder(loss.decoder(latents, batch.action).flatten(0, 1)).view(B, T, C, H, H)
    m = mask.expand(B, T, C, H, H)
    err = (recon - batch.obs.float() / 255) ** 2
    per = torch.stack([err[i][m[i]].mean() for i in range(B)])
    assert float(metrics["pixel_mlr_loss"]) == pytest.approx(per.mean().item(), rel=1e-5)
    assert out.item() == pytest.approx(2.0 * (per * torch.tensor([0.5, 2.0])).mean().item(), rel=1e-5)

    # Any change of the reconstruction at unmasked pixels leaves the loss unchanged.
    decode = loss.pixel_decoder.forward
    visible = (~mask).repeat(B, 1, 1, 1).expand(B * T, C, H, H)
    loss.pixel_decoder.forward = lambda z: torch.where(visible, decode(z) + 50.0, decode(z))
    again, _ = run_loss(loss, batch, agent)
    assert again.item() == pytest.approx(out.item(), rel=1e-6)
    loss.pixel_decoder.forward = lambda z: torch.where(visible, decode(z), decode(z) + 50.0)
    assert run_loss(loss, batch, agent)[0].item() > 100 * out.item()


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("build, match", [
    (lambda: MLPDecoder(dim=8, num_actions=3, depth=0), "decoders.mlp.depth = 0"),
    (lambda: MLPDecoder(dim=8, num_actions=3, mlp_ratio=0.0), "decoders.mlp.mlp_ratio"),
    (lambda: MLPDecoder(dim=8, num_actions=3, init="xavier"), "init = 'xavier'"),
    (lambda: MLPDecoder(dim=8, num_actions=3, depth=1.5), "depth = 1.5"),
    (lambda: NoDecoder(dim=0, num_actions=3), "decoders.none.dim = 0"),
    (lambda: MLRLoss(distance="l1"), "losses.mlr.distance = 'l1'; expected one of cosine, mse"),
    (lambda: MLRLoss(projector="identity"), "projector = 'identity'; expected one of agent, mlp, none"),
    (lambda: MLRLoss(predictor="identity"), "predictor = 'identity'; expected one of linear, mlp, none"),
    (lambda: PixelMLRLoss(decoder_channels=0), "losses.pixel_mlr.decoder_channels = 0"),
    (lambda: PixelMLRLoss(start_size=0), "losses.pixel_mlr.start_size = 0"),
    (lambda: PixelMLRLoss(sequence_length=0), "losses.pixel_mlr.sequence_length = 0"),
    (lambda: PixelMLRLoss(weight=-1.0), "losses.pixel_mlr.weight = -1.0"),
    (lambda: PixelMLRLoss(decoder=3), "losses.pixel_mlr.decoder = 3"),
])
def test_bad_parameters_name_themselves(build, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(".", r"\.")):
        build()


def test_pixel_loss_length_error():
    loss = _pixel(FakeAgent(), sequence_length=20)
    with pytest.raises(ConfigError, match="losses.pixel_mlr.sequence_length = 20"):
        run_loss(loss, _batch(), FakeAgent())
