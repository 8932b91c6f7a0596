"""The example plugin's auxiliary loss (``losses.next_latent``, plugins/mlr_example_plugin) runs
on both agents through the loss contract alone: beside MLR on SAC with its own warm-up, twice on
Rainbow with its metrics kept apart. Run in a subprocess, so that this test's registration of the
plugin does not leak into other tests' registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = r"""
import functools, json, torch
from mlr_registry import registry
from mlr_registry.agents.rainbow import Rainbow
from mlr_registry.agents.sac import SAC
from mlr_registry.batch import Batch
from mlr_registry.encoders.nature_cnn import NatureCNN
from mlr_registry.encoders.pixel_encoder import PixelEncoder
from mlr_registry.errors import ConfigError
from mlr_registry.losses.mlr import MLRLoss
from mlr_registry.maskers.cube import CubeMasker
from mlr_example_plugin.next_latent import NextLatentLoss

registry.load_all()
out = {"registered": registry.lookup("loss", "next_latent").target is NextLatentLoss}
g = torch.Generator().manual_seed(0)

# Rainbow: discrete actions, conv latents; two copies, each with its own metric names.
torch.manual_seed(0)
agent = Rainbow((4, 84, 84), 3, encoder=functools.partial(NatureCNN, channels=(8, 16, 16)), hidden_size=16,
                n_step=2, aux_losses=[NextLatentLoss(), NextLatentLoss(target_tau=1.0)])
batch = Batch(obs=torch.randint(0, 256, (4, 4, 4, 84, 84), dtype=torch.uint8, generator=g),
              action=torch.randint(0, 3, (4, 4), generator=g), reward=torch.zeros(4, 4),
              done=torch.zeros(4, 4, dtype=torch.bool), returns=torch.rand(4, 4, generator=g),
              done_n=torch.zeros(4, 4, dtype=torch.bool), indices=torch.arange(4))
second = agent.aux_losses[1]
with torch.no_grad():  # a target that differs from the online encoder before the update
    for p in second.target_encoder.parameters():
        p.add_(1.0)
encoder_before = [p.clone() for p in agent.encoder.parameters()]
m = dict(agent.update(batch))
out["rainbow"] = {k: v for k, v in m.items() if k.startswith("next_latent")}
out["rainbow_hard_copy"] = all(torch.equal(a, b) for a, b in zip(encoder_before, second.target_encoder.parameters()))
out["rainbow_encoder_stepped"] = not all(torch.equal(a, b) for a, b in zip(encoder_before, agent.encoder.parameters()))
try:
    Rainbow((4, 84, 84), 3, aux_losses=[NextLatentLoss(lr_warmup=10)])
except ConfigError as exc:
    out["rainbow_warmup_error"] = str(exc).splitlines()[0]

# SAC: continuous actions, vector latents; beside MLR, with its own warm-up of 2 updates.
torch.manual_seed(0)
mlr = MLRLoss(masker=CubeMasker(patch_size=10, block_size=4), sequence_length=4, target_tau=0.05,
              projector="mlp", predictor="mlp", unnormalized_masked_input=False, lr_warmup=6000)
plugin = NextLatentLoss(lr_warmup=2)
agent = SAC((9, 100, 100), 2, encoder=functools.partial(PixelEncoder, num_filters=8, feature_dim=8),
            hidden_dim=16, aux_losses=[mlr, plugin], aux_lr=1e-3, aux_lr_scale=1.0)
transitions = {"obs": torch.randint(0, 256, (4, 9, 100, 100), dtype=torch.uint8, generator=g),
               "next_obs": torch.randint(0, 256, (4, 9, 100, 100), dtype=torch.uint8, generator=g),
               "action": torch.rand(4, 2, generator=g) * 2 - 1, "reward": torch.rand(4, generator=g),
               "not_done": torch.ones(4)}
sequences = Batch(obs=torch.randint(0, 256, (4, 4, 9, 100, 100), dtype=torch.uint8, generator=g),
                  action=torch.rand(4, 4, 2, generator=g) * 2 - 1, reward=torch.zeros(4, 4),
                  done=torch.zeros(4, 4, dtype=torch.bool))
key_before = [p.clone() for p in plugin.target_encoder.parameters()]
lrs = []
for step in range(3):
    lrs.append([group["lr"] for group in agent.aux_optimizer.param_groups])
    m = dict(agent.update(transitions, sequences, step))
out["sac"] = {k: v for k, v in m.items() if k.startswith(("next_latent", "mlr"))}
out["sac_lrs"] = lrs
out["sac_target_moved"] = not all(torch.equal(a, b) for a, b in zip(key_before, plugin.target_encoder.parameters()))
print(json.dumps(out))
"""


def test_example_plugin_loss_runs_on_rainbow_and_sac():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins/mlr_example_plugin/src")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["registered"]
    assert set(out["rainbow"]) == {"next_latent_loss", "next_latent_cosine", "next_latent_2_loss",
                                   "next_latent_2_cosine"}
    assert all(0.0 <= out["rainbow"][k] <= 2.0 for k in ("next_latent_loss", "next_latent_2_loss"))
    # tau = 1: its declared target is the encoder as it was before the optimizer step
    assert out["rainbow_hard_copy"] and out["rainbow_encoder_stepped"]
    assert out["rainbow_warmup_error"] == ("losses.next_latent.lr_warmup = 10: rainbow trains auxiliary losses "
                                           "under its one Adam at a constant lr; set it to 0")
    assert set(out["sac"]) == {"mlr_loss", "mlr_cosine", "next_latent_loss", "next_latent_cosine"}
    # group 0: MLR and the encoder on MLR's 6000-update warm-up; group 1: the plugin's 2 updates
    warm = [5e-4 + (1 - 5e-4) * k / 6000 for k in range(3)]
    own = [5e-4, 5e-4 + (1 - 5e-4) / 2, 1.0]
    for (lr0, lr1), w, o in zip(out["sac_lrs"], warm, own, strict=True):
        assert abs(lr0 - 1e-3 * w) < 1e-12 and abs(lr1 - 1e-3 * o) < 1e-12
    assert out["sac_target_moved"]  # updated on SAC's even steps
