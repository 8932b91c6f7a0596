"""A plugin component that breaks its kind's contract is named in one line, not a traceback
from deep inside the agent (a masker's mask, an auxiliary loss's output, a constructor that does
not take what its owner passes)."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, make_distribution, run_cli

from mlr_registry.errors import ConfigError
from mlr_registry.losses.auxiliary import LossOutput, checked_output
from mlr_registry.losses.common import mask_pixels


def test_a_mask_of_the_wrong_shape_or_type_is_named():
    obs = torch.zeros(2, 4, 3, 8, 8, dtype=torch.uint8)

    def float_mask(o):  # (b t h w) float: what a careless masker might return
        return torch.ones(o.shape[0], o.shape[1], *o.shape[3:])

    with pytest.raises(ConfigError, match=r"masker function returned torch.float32 \(2, 4, 8, 8\) for observations "
                                          r"\(2, 4, 3, 8, 8\); a masker returns a bool mask \(b t 1 h w\) = "
                                          r"\(2, 4, 1, 8, 8\)"):
        mask_pixels(obs, float_mask, unnormalized=True)
    mask, masked = mask_pixels(obs, lambda o: torch.ones(2, 4, 1, 8, 8, dtype=torch.bool), unnormalized=False)
    assert mask.all() and masked.shape == (2, 4, 3, 8, 8)


def test_an_auxiliary_loss_output_is_checked():
    loss = torch.nn.Identity()
    good = LossOutput({"loss": torch.tensor(1.0)}, {"x": 1.0})
    assert checked_output(loss, good) is good
    for bad, said in ((torch.tensor(1.0), "a 0-d tensor"), ((torch.ones(3), {}, 1), "a tuple of 3"),
                      (None, "NoneType")):
        with pytest.raises(ConfigError, match=f"auxiliary loss Identity returned {said}; an auxiliary loss "
                                              r"returns LossOutput\(terms, metrics\)"):
            checked_output(loss, bad)
    with pytest.raises(ConfigError, match=r"returned LossOutput terms \{'loss': 'Tensor'\}; terms must be"):
        checked_output(loss, LossOutput({"loss": torch.ones(3)}))
    with pytest.raises(ConfigError, match=r"returned \(loss, metrics\), the old contract; return "
                                          r"LossOutput\(terms=\{'loss': \.\.\.\}, metrics=\{\.\.\.\}\)"):
        checked_output(loss, (torch.tensor(1.0), {"x": 1.0}))


def test_an_encoder_that_does_not_take_in_channels_is_one_line(tmp_path):
    source = """
        from torch import nn
        from mlr_registry import register
        @register("encoder", "no_in_channels")
        class NoInChannels(nn.Module):
            def __init__(self, width=4):
                super().__init__()
    """
    site = make_distribution(tmp_path / "site", "enc-plugin", {"enc_plugin": source}, {"enc": "enc_plugin"})
    proc = run_cli(["--gin", str(REPO / "gin/smoke/atari_mlr.gin"), "--bind",
                    "agents.rainbow.encoder = @encoders.no_in_channels", "--dry-run"], cwd=tmp_path, site=site)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: no_in_channels does not take what its owner passes it: " in proc.stderr
    assert "unexpected keyword argument 'in_channels'" in proc.stderr


class OldContractLoss(torch.nn.Module):
    """A plugin loss written against the previous contract: it takes the agent itself."""

    def setup(self, agent):
        self.head = torch.nn.Linear(agent.latent_dim, 1)

    def forward(self, batch, agent):
        loss = self.head(agent.encoder(batch.obs[:, 0].float() / 255)).pow(2).mean()
        return loss, {"old_loss": loss.detach()}

    def update_targets(self):
        pass


@pytest.mark.parametrize("agent", ["rainbow", "sac"])
def test_a_loss_on_the_old_contract_is_one_line_naming_the_new_one(agent):
    from mlr_registry.agents.rainbow import Rainbow
    from mlr_registry.agents.sac import SAC
    from mlr_registry.losses.auxiliary import AuxiliaryLoss, check_contract

    class OldSubclass(AuxiliaryLoss):  # subclassing the base class is not enough
        def setup(self, agent):
            pass

        def forward(self, batch, agent):
            raise AssertionError("never called")

    new_contract = (r"setup\(context: LossContext\), forward\(batch, context\) -> LossOutput\(terms, metrics\), "
                    r"target_networks\(\)")
    with pytest.raises(ConfigError, match=r"^auxiliary loss OldSubclass uses the old contract \(setup\(agent\), "
                                          r"forward\(agent\)\); an auxiliary loss now implements " + new_contract):
        check_contract(OldSubclass())
    build = (lambda losses: Rainbow((4, 84, 84), 3, aux_losses=losses, hidden_size=8)) if agent == "rainbow" else (
        lambda losses: SAC((9, 100, 100), 2, aux_losses=losses, hidden_dim=8))
    with pytest.raises(ConfigError, match=r"^auxiliary loss OldContractLoss is not an AuxiliaryLoss; subclass "
                                          r"mlr_registry\.losses\.auxiliary\.AuxiliaryLoss: " + new_contract) as err:
        build([OldContractLoss()])
    assert str(err.value).splitlines()[0].endswith("target_networks() (mlr_registry/losses/auxiliary.py)")


def test_an_agent_on_the_old_priority_contract_is_one_line():
    """Agents once left their priorities in ``agent.last_priorities``; the trainer reads them from
    the update's metrics now, so an agent that still has the attribute would silently train
    without prioritized replay: it is refused, naming the new way."""
    import gin
    from conftest import tiny_trainer

    from mlr_registry.agents.rainbow import Rainbow

    @gin.configurable("agents.old_priorities")  # gin only: the registry would keep it for later tests
    class OldPriorities(Rainbow):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.last_priorities = None

    # the message's one line, then gin's note of the call
    with pytest.raises(ConfigError, match=r"^OldPriorities\.last_priorities is no longer read: an agent returns its "
                                          r"priorities with its metrics, LazyMetrics\(\.\.\., priorities=p\)\n"):
        with tiny_trainer("gin/atari_baseline.gin", bindings=("trainers.atari100k.agent = @agents.old_priorities",)):
            pass
