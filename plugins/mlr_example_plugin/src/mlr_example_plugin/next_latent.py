"""A next-latent auxiliary loss: predict the latent of the next observation from this one's
latent and the action taken, against an EMA target encoder (a small SPR-like objective).

It follows the auxiliary-loss contract of ``mlr_registry.losses.auxiliary`` and nothing else: it
sees the agent only through the ``LossContext`` (encoder, augmentation, latent size, action
spec), declares its target network, and declares its own learning-rate warm-up, so it runs on
both built-in agents (Rainbow: discrete actions, conv latents; SAC: continuous actions, vector
latents).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry import register
from mlr_registry.batch import Batch
from mlr_registry.errors import ConfigError
from mlr_registry.losses.auxiliary import AuxiliaryLoss, LossContext, LossOutput
from mlr_registry.target_network import TargetNetwork


@register("loss", "next_latent")
class NextLatentLoss(AuxiliaryLoss):
    def __init__(self, weight: float = 1.0, hidden: int = 64, target_tau: float = 0.01, lr_warmup: int = 0):
        """weight: factor on the loss; hidden: the predictor's hidden width; target_tau: EMA
        weight of the target encoder (updated when the agent updates targets); lr_warmup:
        updates of warm-up of an agent's own aux optimizer (SAC), 0 = constant lr."""
        super().__init__()
        if weight < 0 or hidden < 1 or not 0 < target_tau <= 1 or lr_warmup < 0:
            raise ConfigError(f"next_latent: weight = {weight} >= 0, hidden = {hidden} >= 1, "
                              f"0 < target_tau = {target_tau} <= 1 and lr_warmup = {lr_warmup} >= 0 expected")
        self.weight, self.hidden, self.target_tau = float(weight), int(hidden), float(target_tau)
        self.lr_warmup = int(lr_warmup)
        self._targets: tuple[TargetNetwork, ...] = ()

    def setup(self, context: LossContext) -> None:
        d, a = int(context.latent_dim), int(context.num_actions)
        self.discrete = bool(context.discrete_actions)
        self.action_in = nn.Embedding(a, d) if self.discrete else nn.Linear(a, d)
        self.predictor = nn.Sequential(nn.Linear(d, self.hidden), nn.ReLU(), nn.Linear(self.hidden, d))
        self.target_encoder = copy.deepcopy(context.encoder).requires_grad_(False)
        self._targets = (TargetNetwork(context.encoder, self.target_encoder, self.target_tau),)

    def forward(self, batch: Batch, context: LossContext) -> LossOutput:
        if batch.obs.shape[1] < 2:
            raise ConfigError(f"next_latent needs 2 steps per sample, the batch holds {batch.obs.shape[1]}")
        b = batch.obs.shape[0]
        z = context.encoder(context.augment(batch.obs[:, 0].float() / 255.0)).reshape(b, -1)  # (b d)
        action = batch.action[:, 0]
        a = self.action_in(action.long()) if self.discrete else self.action_in(action.float())  # (b d)
        pred = self.predictor(z + a)
        with torch.no_grad():
            target = self.target_encoder(context.augment(batch.obs[:, 1].float() / 255.0)).reshape(b, -1)
        cosine = F.cosine_similarity(pred.float(), target.float(), dim=-1)  # (b)
        distance = (1.0 - cosine).mean()
        return LossOutput({"loss": self.weight * distance},
                          {"loss": distance.detach(), "cosine": cosine.detach().mean()})

    def target_networks(self) -> Sequence[TargetNetwork]:
        return self._targets
