"""The check every agent makes of its encoder before building on its output size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlr_registry.errors import ConfigError


def checked_output_dim(encoder: nn.Module, observation_shape: Sequence[int]) -> int:
    """The encoder's output size d, checked with a dummy forward on one observation (c h w): an
    image_size that does not match the env's frames would otherwise surface as a shape error
    deep inside the head."""
    with torch.no_grad():
        out = encoder(torch.zeros(1, *observation_shape))
    actual = int(out.shape[-1])
    declared = getattr(encoder, "output_dim", actual)
    if out.dim() != 2 or declared != actual:
        raise ConfigError(
            f"encoder {type(encoder).__name__} maps an observation of shape {tuple(observation_shape)} to "
            f"{tuple(out.shape[1:])}, but declares output_dim {declared}; check its image_size against the "
            "env's observation size")
    return actual
