"""CURL: Contrastive Unsupervised Representations for RL (Laskin, Srinivas & Abbeel, ICML 2020).

The comparison method of the MLR paper's DMC tables, on the same SAC agent as MLR. The reference
is CURL's ``curl_sac.py`` (copied unchanged into MLR's ``DMControl/src/curl_sac.py``):

1. Observations: the first step ``obs[:, 0]`` of each sequence the trainer samples for aux
   losses (CURL draws its contrastive batch from replay like the SAC batch; with
   ``replays.transition.sequence_length = 1`` each "sequence" is one uniformly drawn transition).
2. Anchor ``q = encoder(crop(obs))``, grad on (the critic's encoder, the one SAC trains).
3. Positive ``k = key_encoder(crop'(obs))`` with an independent crop, no grad; the key encoder
   is an EMA of the online encoder (CURL: ``critic_target.encoder``, τ = ``encoder_tau`` 0.05).
4. ``logits = q W kᵀ`` (b b), minus each row's max; cross-entropy with labels ``arange(b)``:
   the other samples' keys are the negatives.

W starts as ``torch.rand(d, d)`` (uniform [0, 1)) as in CURL and is learned with the encoder by
the agent's aux optimizer. CURL's crop is the SAC batch's (offsets 0..15 of 100 → 84, no
intensity); this loss calls the crop of the agent's :class:`LossContext` for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.losses.auxiliary import AuxiliaryLoss, LossContext, LossOutput
from mlr_registry.losses.common import frozen_copy
from mlr_registry.registry import register
from mlr_registry.target_network import TargetNetwork

AUGMENTATIONS = ("crop", "augment")


def bilinear_logits(query: torch.Tensor, key: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``(b d) query, (b d) key, (d d) W -> (b b) logits`` = q W kᵀ minus each row's max (CURL's
    ``compute_logits``; the shift leaves the cross-entropy and its gradient unchanged and keeps
    exp() in range)."""
    logits = query @ (W @ key.T)  # (b b)
    return logits - logits.max(dim=1, keepdim=True).values


@register("loss", "curl")
class CURLLoss(AuxiliaryLoss):
    """The CURL loss; owns W and the EMA key encoder."""

    def __init__(self, weight: float = 1.0, target_tau: float = 0.05, augmentation: str = "crop",
                 lr_warmup: int = 0) -> None:
        """
        Args:
            weight: factor on the cross-entropy (1: CURL steps the bare InfoNCE loss).
            target_tau: EMA weight on the online encoder of :meth:`target_networks` (key ←
                tau·online + (1−tau)·key, parameters only, CURL's ``soft_update_params``). CURL's
                key encoder IS ``critic_target.encoder`` (``encoder_tau`` 0.05, every 2nd step);
                this loss keeps its own copy, made from the same encoder at setup and moved
                with the same tau at the same steps by the SAC agent (``target_update_period``),
                so it equals the critic target's encoder as long as the two taus agree.
            augmentation: how anchor and positive views are drawn from the uint8 observations:
                "crop" (default) = the agent's ``crop`` (SAC's training random crop, CURL's
                ``random_crop``: offsets 0..15 with ``sac.crop_offsets_exclusive``), two
                independent draws; "augment" = the agent's aux augmentation ``augment``
                (SAC: crop + intensity, MLR's aux branch), for agents without ``crop``.
            lr_warmup: as ``losses.mlr.lr_warmup``; 0 (CURL's encoder and CPC Adams have no
                schedule).
        """
        super().__init__()
        check_range("losses.curl.weight", weight, 0.0)
        check_range("losses.curl.target_tau", target_tau, 0.0, 1.0, low_open=True)
        check_range("losses.curl.lr_warmup", lr_warmup, 0, integer=True)
        if augmentation not in AUGMENTATIONS:
            raise ConfigError(f"losses.curl.augmentation = {augmentation!r}; expected one of "
                              f"{', '.join(AUGMENTATIONS)}")
        self.weight = float(weight)
        self.target_tau = float(target_tau)
        self.augmentation = augmentation
        self.lr_warmup = int(lr_warmup)
        self._targets: tuple[TargetNetwork, ...] = ()

    def setup(self, context: LossContext) -> None:
        if self.augmentation == "crop" and context.crop is None:
            raise ConfigError("losses.curl.augmentation = 'crop' uses the agent's crop(obs), which this agent "
                              "does not have; set losses.curl.augmentation = 'augment'")
        d = int(context.latent_dim)
        self.W = nn.Parameter(torch.rand(d, d, device=context.device))  # CURL: torch.rand(z_dim, z_dim)
        self.key_encoder = frozen_copy(context.encoder)
        self._targets = (TargetNetwork(context.encoder, self.key_encoder, self.target_tau, exact_at_one=False),)

    def views(self, obs: torch.Tensor, context: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b c h w)`` uint8 → two independently augmented float views in [0, 1]."""
        if self.augmentation == "crop" and context.crop is not None:
            return context.crop(obs).float() / 255.0, context.crop(obs).float() / 255.0
        x = obs.float() / 255.0
        return context.augment(x), context.augment(x)

    def forward(self, batch: Batch, context: LossContext) -> LossOutput:
        obs = batch.obs[:, 0]  # (b c h w) uint8: one observation per sampled sequence
        b = obs.shape[0]
        if b < 2:
            raise ConfigError(f"losses.curl needs at least 2 observations per batch (the others are the "
                              f"negatives); got {b}: raise trainers.dmc.aux_batch_size")
        anchor, positive = self.views(obs, context)
        query = context.encoder(anchor)  # (b d), grad into the encoder
        with torch.no_grad():
            key = self.key_encoder(positive)  # (b d)
        logits = bilinear_logits(query, key, self.W)  # (b b)
        labels = torch.arange(b, device=logits.device)
        cross_entropy = F.cross_entropy(logits, labels)
        loss = self.weight * cross_entropy
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return LossOutput({"loss": loss}, {"loss": cross_entropy.detach(), "accuracy": accuracy})

    def target_networks(self) -> Sequence[TargetNetwork]:
        """key ← tau·online + (1−tau)·key over parameters (CURL's ``soft_update_params``)."""
        return self._targets
