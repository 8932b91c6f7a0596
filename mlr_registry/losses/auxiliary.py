"""The contract between an agent and the auxiliary losses it is given by gin.

An agent (Rainbow, SAC) receives a list of :class:`AuxiliaryLoss` instances. It calls
``setup(agent)`` once, after its own networks exist, so that a loss can size its networks from
the agent's encoder ("widths follow the encoder") and copy what it needs for its targets. On
every update the agent calls ``loss(batch, agent)`` and decides how to optimize the result
(Rainbow adds it to the RL loss under one optimizer; SAC steps it with its own optimizer).

A loss never imports an agent: it sees the agent only through :class:`AuxHost`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.errors import ConfigError

Metrics = dict[str, "float | torch.Tensor"]  # name -> float or 0-d tensor (converted by the agent)


@runtime_checkable
class AuxHost(Protocol):
    """What an agent exposes to auxiliary losses.

    Two more attributes are optional, asked for by the losses that need them (with a ConfigError
    naming the agent where absent): ``observation_shape``, the (c h w) of one observation
    (``losses.pixel_mlr`` sizes its pixel decoder from it; both built-in agents have it), and
    ``crop(obs)``, the agent's random crop of (n c h w) uint8 observations
    (``losses.curl.augmentation = 'crop'``; SAC has it, Rainbow does not).
    """

    encoder: nn.Module  # (n c h w) float -> (n d); the online encoder the losses shape
    projector: nn.Module | None  # (n d) -> (n p) online projector an aux loss may share, or None
    num_actions: int  # discrete: number of actions; continuous: action dimension
    discrete_actions: bool

    @property
    def latent_dim(self) -> int:
        """d, the encoder's output size."""
        ...

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The encoder output before flattening, e.g. (64, 7, 7); (d,) for vector encoders."""
        ...

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The image augmentation the agent trains under, for aux branches: (n c h w) float ->
        (n c h' w') float, independent per image."""
        ...


class AuxiliaryLoss(nn.Module):
    """Base class of auxiliary objectives. Subclasses build networks in :meth:`setup`."""

    weight: float = 1.0

    def setup(self, agent: AuxHost) -> None:
        """Build networks sized from ``agent`` (called once by the agent)."""

    def forward(self, batch: Batch, agent: AuxHost) -> tuple[torch.Tensor, Metrics]:
        """(weighted scalar loss, metrics). The loss already includes ``self.weight``.

        Metric values may be floats or 0-d tensors; the agent converts all of an update's
        tensors with one device→host transfer, and a loss that returns tensors (as the built-in
        ones do) makes no sync of its own, which keeps a compiled update in one piece."""
        raise NotImplementedError

    def grad_clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups the agent clips separately (each to the agent's max norm).

        Parameters of this loss in no group are not clipped (MLR: predictor, action embedding).
        """
        return []

    @torch.no_grad()
    def update_targets(self) -> None:
        """Move EMA targets towards the online networks; the agent decides when to call it."""


def checked_output(loss: nn.Module, output: Any) -> tuple[torch.Tensor, Metrics]:
    """``output`` of ``loss(batch, agent)``, checked against :meth:`AuxiliaryLoss.forward`'s
    contract: a plugin's loss returning something else is named here, not in the agent's sums."""
    if (isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], torch.Tensor)
            and output[0].dim() == 0 and isinstance(output[1], Mapping)):
        return output
    got = (f"a {output.dim()}-d tensor" if isinstance(output, torch.Tensor)
           else f"a tuple of {len(output)}" if isinstance(output, tuple) else type(output).__name__)
    raise ConfigError(f"auxiliary loss {type(loss).__name__} returned {got}; an auxiliary loss returns "
                      "(a 0-d loss tensor, a mapping of metrics), see AuxiliaryLoss.forward")
