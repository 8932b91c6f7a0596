"""The auxiliary-loss contract as the agents apply it: a loss sees a LossContext, returns named
terms (summed) and metrics (recorded under its name, so two losses never collide), declares its
targets and its lr warm-up (SAC: one optimizer group per warm-up; Rainbow: none allowed)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from mlr_registry import config, registry
from mlr_registry.agents.rainbow import Rainbow
from mlr_registry.agents.sac import SAC
from mlr_registry.batch import Batch
from mlr_registry.encoders.nature_cnn import NatureCNN
from mlr_registry.encoders.pixel_encoder import PixelEncoder
from mlr_registry.errors import ConfigError
from mlr_registry.losses.auxiliary import AuxiliaryLoss, LossOutput, loss_names
from mlr_registry.losses.curl import CURLLoss
from mlr_registry.losses.mlr import MLRLoss


class TwoTerms(AuxiliaryLoss):
    """Two weighted terms on the encoder's features of the first frame; a constant metric."""

    def __init__(self, lr_warmup: int = 0, value: float = 1.0):
        super().__init__()
        self.lr_warmup, self.value = lr_warmup, value

    def setup(self, context):
        self.head = nn.Linear(context.latent_dim, 1)

    def forward(self, batch, context):
        z = self.head(context.encoder(context.augment(batch.obs[:, 0].float() / 255))).mean()
        return LossOutput({"square": z.pow(2), "shift": 0 * z + self.value},
                          {"value": torch.tensor(self.value), "square": z.pow(2).detach()})


def rainbow(losses):
    torch.manual_seed(0)
    return Rainbow((4, 84, 84), 3, encoder=functools.partial(NatureCNN, channels=(8, 16, 16)), hidden_size=16,
                   n_step=2, aux_losses=losses)


def rainbow_batch(b: int = 4, t: int = 4) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(obs=torch.randint(0, 256, (b, t, 4, 84, 84), dtype=torch.uint8, generator=g),
                 action=torch.randint(0, 3, (b, t), generator=g), reward=torch.zeros(b, t),
                 done=torch.zeros(b, t, dtype=torch.bool), returns=torch.rand(b, t, generator=g),
                 done_n=torch.zeros(b, t, dtype=torch.bool), indices=torch.arange(b))


def sac(losses, **kw):
    torch.manual_seed(0)
    return SAC((9, 100, 100), 2, encoder=functools.partial(PixelEncoder, num_filters=8, feature_dim=8),
               hidden_dim=16, aux_losses=losses, **kw)


def sac_data(b: int = 4):
    g = torch.Generator().manual_seed(1)
    transitions = {"obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, generator=g),
                   "next_obs": torch.randint(0, 256, (b, 9, 100, 100), dtype=torch.uint8, generator=g),
                   "action": torch.rand(b, 2, generator=g) * 2 - 1, "reward": torch.rand(b, generator=g),
                   "not_done": torch.ones(b)}
    sequences = Batch(obs=torch.randint(0, 256, (b, 2, 9, 100, 100), dtype=torch.uint8, generator=g),
                      action=torch.rand(b, 2, 2, generator=g) * 2 - 1, reward=torch.zeros(b, 2),
                      done=torch.zeros(b, 2, dtype=torch.bool))
    return transitions, sequences


def test_names_are_registered_names_made_unique():
    registry.load_all()
    assert loss_names([MLRLoss(), CURLLoss(), MLRLoss(), TwoTerms(), MLRLoss()]) == [
        "mlr", "curl", "mlr_2", "twoterms", "mlr_3"]


def test_rainbow_sums_terms_and_keeps_two_losses_metrics_apart():
    agent = rainbow([TwoTerms(value=1.0), TwoTerms(value=2.0)])
    metrics = agent.update(rainbow_batch())
    assert metrics["twoterms_value"] == 1.0 and metrics["twoterms_2_value"] == 2.0
    # total = rl + (square + 1) + (square' + 2): the terms are summed
    expected = metrics["rl_loss"] + metrics["twoterms_square"] + 1 + metrics["twoterms_2_square"] + 2
    assert metrics["total_loss"] == pytest.approx(expected, rel=1e-6)


def test_rainbow_refuses_a_warm_up():
    with pytest.raises(ConfigError, match=r"^losses\.twoterms\.lr_warmup = 5: rainbow trains auxiliary losses under "
                                          r"its one Adam at a constant lr; set it to 0"):
        rainbow([TwoTerms(lr_warmup=5)])


def test_sac_gives_each_warm_up_its_group_and_the_encoder_the_longest():
    slow, fast = TwoTerms(lr_warmup=4), TwoTerms(lr_warmup=0)
    agent = sac([fast, slow], aux_lr=1e-3, aux_lr_scale=1.0)
    groups = agent.aux_optimizer.param_groups
    assert len(groups) == 2
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert {id(p) for p in slow.parameters()} | {id(p) for p in agent.critic.encoder.parameters()} == ids[0]
    assert {id(p) for p in fast.parameters()} == ids[1]
    transitions, sequences = sac_data()
    lrs = []
    for step in range(3):
        lrs.append([g["lr"] for g in groups])
        metrics = agent.update(transitions, sequences, step)
        assert metrics["aux_lr"] == pytest.approx(lrs[-1][0])  # the encoder's group
    k = [5e-4 + (1 - 5e-4) * s / 4 for s in range(3)]
    flat = [lr for pair in lrs for lr in pair]
    assert flat == pytest.approx([lr for f in k for lr in (1e-3 * f, 1e-3)])  # the new loss is not held back
    assert {"twoterms_value", "twoterms_2_value", "aux_loss"} <= set(metrics)


def test_sac_with_one_warm_up_keeps_one_group_and_resumes():
    agent = sac([TwoTerms(lr_warmup=3)])
    assert len(agent.aux_optimizer.param_groups) == 1
    transitions, sequences = sac_data()
    agent.update(transitions, sequences, 0)
    other = sac([TwoTerms(lr_warmup=3)])
    other.load_checkpoint_state(agent.checkpoint_state())
    assert other.aux_optimizer.param_groups[0]["lr"] == agent.aux_optimizer.param_groups[0]["lr"]
    assert math.isclose(other.aux_optimizer.param_groups[0]["lr"], 1e-3 * 0.5 * (5e-4 + (1 - 5e-4) / 3))


def test_the_old_sac_warm_up_binding_names_the_new_spelling():
    registry.load_all()
    with pytest.raises(ConfigError) as err:
        config.parse([], ["agents.sac.aux_warmup = 6000"])
    assert str(err.value) == ("--bind: agents.sac.aux_warmup is gone; each auxiliary loss declares its own warm-up: "
                              "losses.<name>.lr_warmup (e.g. losses.mlr.lr_warmup = 6000; 0 = a constant lr)")
    root = config.REPO_ROOT
    assert config.file_bindings(root / "gin/dmc_mlr.gin")["losses.mlr.lr_warmup"] == "6000"
    assert config.file_bindings(root / "gin/ablations/objective_pixel_dmc.gin")["losses.pixel_mlr.lr_warmup"] == "6000"
    assert config.file_bindings(root / "gin/dmc_curl.gin")["losses.curl.lr_warmup"] == "0"
    assert not [p for p in root.glob("gin/**/*.gin") if "aux_warmup" in p.read_text()]


def test_the_agent_exposes_its_losses_rng_state_for_checkpoints():
    from mlr_registry.maskers.cube import CubeMasker
    from mlr_registry.training.rng import seeded_generator_states, set_seeded_generator_states

    def build():
        return rainbow([MLRLoss(masker=CubeMasker(patch_size=12, block_size=4, seed=3)), TwoTerms()])

    obs = torch.zeros(1, 4, 4, 84, 84, dtype=torch.uint8)
    agent = build()
    agent.aux_losses[0].masker(obs)  # a seeded masker makes its generator on first use
    states = seeded_generator_states(agent)
    assert list(states) == ["0|cpu"]  # the checkpoints' format: "<loss index>|<device>"
    after = agent.aux_losses[0].masker(obs)
    resumed = build()
    set_seeded_generator_states(resumed, states)
    assert torch.equal(resumed.aux_losses[0].masker(obs), after)
