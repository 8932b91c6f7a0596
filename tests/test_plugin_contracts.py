"""A plugin component that breaks its kind's contract is named in one line, not a traceback
from deep inside the agent (a masker's mask, an auxiliary loss's output, a constructor that does
not take what its owner passes)."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, make_distribution, run_cli

from mlr_registry.errors import ConfigError
from mlr_registry.losses.auxiliary import checked_output
from mlr_registry.losses.mlr import mask_pixels


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
    good = (torch.tensor(1.0), {"x": 1.0})
    assert checked_output(loss, good) is good
    for bad, said in ((torch.tensor(1.0), "a 0-d tensor"), ((torch.ones(3), {}), "a tuple of 2"), (None, "NoneType")):
        with pytest.raises(ConfigError, match=f"auxiliary loss Identity returned {said}; an auxiliary loss "
                                              r"returns \(a 0-d loss tensor, a mapping of metrics\)"):
            checked_output(loss, bad)


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
