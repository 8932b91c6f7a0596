"""Ablation decoder: no decoder at all.

``decoders.none`` returns the online latents unchanged, so MLR becomes masked latent prediction
without a decoder: the projector and predictor must map each masked frame's own latent to the
target latent of the same, unmasked frame, with no access to the other frames or the actions.
It measures how much of MLR's gain needs the predictive latent decoder
(docs/faithfulness.md#atari-transformer-decoder) rather than the masking and the latent target alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mlr_registry.errors import check_range
from mlr_registry.registry import register


@register("decoder", "none")
class NoDecoder(nn.Module):
    """``decoder(latents (b t d), actions) -> latents``: the identity, no parameters."""

    def __init__(self, dim: int, num_actions: int, discrete_actions: bool = True) -> None:
        """
        Args:
            dim: the encoder's latent size d, supplied by the loss; only checked against the
                latents' width.
            num_actions: supplied by the loss; unused (this decoder ignores the actions).
            discrete_actions: supplied by the loss; unused.
        """
        super().__init__()
        for name, value in (("dim", dim), ("num_actions", num_actions)):
            check_range(f"decoders.none.{name}", value, 1, integer=True)
        self.dim = dim
        self.num_actions = num_actions
        self.discrete_actions = bool(discrete_actions)

    def block_parameters(self) -> Iterator[nn.Parameter]:
        """No parameters, so no clip group (the loss drops empty groups)."""
        return iter(())

    def forward(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 3 or latents.shape[-1] != self.dim:
            raise ValueError(f"decoder expects latents (b t {self.dim}), got {tuple(latents.shape)}")
        return latents
