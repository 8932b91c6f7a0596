"""The contract between an agent and the auxiliary losses it is given by gin.

An agent (Rainbow, SAC) receives a list of :class:`AuxiliaryLoss` instances and describes itself
to them with one :class:`LossContext`, never with itself:

1. ``loss.setup(context)`` once, after the agent's networks exist and sit on ``context.device``:
   the loss builds its networks, sized from the context ("widths follow the encoder"). Modules
   built there are moved to the device by the agent afterwards; a tensor drawn directly (a
   ``nn.Parameter(torch.rand(...))``) should be drawn on ``context.device``.
2. ``loss(batch, context) -> LossOutput`` on every update. The agent sums ``terms`` (each
   already weighted) into what it optimizes (Rainbow: with the RL loss under one Adam; SAC: the
   aux Adam) and records each metric as ``<name>_<metric>``, ``name`` being the loss's
   registered name (``mlr``, ``spr``, ...), so two losses never overwrite each other's metrics.
3. ``loss.target_networks()``: the loss's declared :class:`TargetNetwork` objects, updated by
   the agent on its schedule (Rainbow: right after this loss's forward; SAC: every
   ``target_update_period`` steps).
4. ``loss.lr_warmup``: the loss's learning-rate schedule, read by agents that give aux losses
   their own optimizer (SAC: the inverse-sqrt warm-up of :mod:`mlr_registry.agents.lr_schedule`
   over that many updates, 0 = constant lr). Rainbow trains aux losses under its one constant-lr
   Adam and refuses a warm-up.
5. ``loss.grad_clip_groups()``: parameter groups Rainbow clips separately (the Atari
   reference's per-module clipping). SAC clips all parameters of its aux optimizer as one
   (the DMC reference's ``clip_grad_norm_(mtm.parameters())``), so the groups do not apply there.
6. ``loss.rng_state()`` / ``loss.load_rng_state(state)``: the loss's own random streams (a
   seeded masker's generators), saved with the trainer's checkpoints.

A loss never imports an agent and never sees one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.errors import ConfigError
from mlr_registry.target_network import TargetNetwork

Metrics = Mapping[str, "float | torch.Tensor"]  # name -> float or 0-d tensor (converted by the agent)

NEW_CONTRACT = ("setup(context: LossContext), forward(batch, context) -> LossOutput(terms, metrics), "
                "target_networks() (mlr_registry/losses/auxiliary.py)")


@dataclass(frozen=True)
class LossContext:
    """What an agent gives its auxiliary losses (built once by the agent).

    ``encoder``: the online encoder the losses shape, (n c h w) float -> (n d).
    ``augment``: the agent's augmentation for aux branches, (n c h w) float -> (n c h' w') float,
    independent per image. ``latent_shape``: the encoder output before flattening, e.g.
    (64, 7, 7), or (d,). ``observation_shape``: (c h w) of one stored observation.
    ``num_actions``: discrete: the number of actions; continuous: the action dimension.
    ``projector``: an online projector (n d) -> (n p) a loss may share (Rainbow: the Q-head's
    first layers), or None. ``crop``: the agent's random crop of (n c h w) uint8 observations
    (SAC's batch crop), or None. ``target_encoder`` / ``target_projector``: the agent's own
    target copies of ``encoder`` / ``projector``, when it keeps ones a loss may read instead of
    declaring its own (BBF's EMA target network), else None. ``latent``: set per update by an
    agent that shares its RL branch's online latent of ``obs[:, 0]`` (b d) with the losses (BBF,
    as its SPR rolls out from the Q network's own encoding), else None.
    """

    encoder: nn.Module
    augment: Callable[[torch.Tensor], torch.Tensor]
    latent_dim: int
    latent_shape: tuple[int, ...]
    observation_shape: tuple[int, int, int]
    num_actions: int
    discrete_actions: bool
    device: torch.device
    projector: nn.Module | None = None
    crop: Callable[[torch.Tensor], torch.Tensor] | None = None
    target_encoder: nn.Module | None = None
    target_projector: nn.Module | None = None
    latent: torch.Tensor | None = None


class LossOutput(NamedTuple):
    """``terms``: named 0-d loss tensors, each already weighted, summed by the agent.
    ``metrics``: name -> float or 0-d tensor, recorded by the agent as ``<loss name>_<name>``."""

    terms: Mapping[str, torch.Tensor]
    metrics: Metrics = {}

    def total(self) -> torch.Tensor:
        """The sum of the terms, in their order."""
        values = list(self.terms.values())
        total = values[0]
        for value in values[1:]:
            total = total + value
        return total


class AuxiliaryLoss(nn.Module):
    """Base class of auxiliary objectives. Subclasses build networks in :meth:`setup`."""

    weight: float = 1.0
    lr_warmup: int = 0  # updates of the inverse-sqrt warm-up an own aux optimizer applies; 0: none

    def setup(self, context: LossContext) -> None:
        """Build networks sized from ``context`` (called once by the agent)."""

    def forward(self, batch: Batch, context: LossContext) -> LossOutput:
        """The loss terms (each including ``self.weight``) and metrics of one update.

        Metric values may be floats or 0-d tensors; the agent converts all of an update's
        tensors with one device→host transfer, and a loss that returns tensors (as the built-in
        ones do) makes no sync of its own, which keeps a compiled update in one piece."""
        raise NotImplementedError

    def target_networks(self) -> Sequence[TargetNetwork]:
        """The targets this loss declares (built in :meth:`setup`); the agent updates them."""
        return ()

    def grad_clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups Rainbow clips separately (each to its max norm); SAC clips its whole
        aux optimizer instead. Parameters of this loss in no group are not clipped by Rainbow
        (MLR: predictor, action embedding)."""
        return []

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The state of this loss's own random generators, keyed by device ({} when it draws
        from torch's global RNG only, which the checkpoint holds anyway)."""
        return {}

    def load_rng_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`rng_state` returned."""


def loss_names(losses: Sequence[nn.Module]) -> list[str]:
    """Each loss's metric prefix: its registered name (``mlr``), else its lower-cased class name;
    a name that repeats gets ``_2``, ``_3``... from its second occurrence on."""
    from mlr_registry import registry

    by_class = {c.target: c.name for c in registry.components("loss")}
    names: list[str] = []
    seen: dict[str, int] = {}
    for loss in losses:
        base = by_class.get(type(loss), type(loss).__name__.lower())
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def check_contract(loss: object) -> None:
    """A loss written against the previous contract (``setup(agent)``, ``forward(batch, agent)``
    returning a tuple, ``update_targets()``) is named in one line."""
    if not isinstance(loss, AuxiliaryLoss):
        raise ConfigError(f"auxiliary loss {type(loss).__name__} is not an AuxiliaryLoss; subclass "
                          f"mlr_registry.losses.auxiliary.AuxiliaryLoss: {NEW_CONTRACT}")
    old = [name for name in ("update_targets",) if callable(getattr(type(loss), name, None))]
    old += [f"{method}({param})" for method in ("setup", "forward")
            for param in inspect.signature(getattr(loss, method)).parameters if param == "agent"]
    if old:
        raise ConfigError(f"auxiliary loss {type(loss).__name__} uses the old contract ({', '.join(old)}); "
                          f"an auxiliary loss now implements {NEW_CONTRACT}")


def checked_output(loss: nn.Module, output: Any) -> LossOutput:
    """``output`` of ``loss(batch, context)``, checked against :meth:`AuxiliaryLoss.forward`'s
    contract: a plugin's loss returning something else is named here, not in the agent's sums."""
    if isinstance(output, LossOutput):
        terms = output.terms
        if (isinstance(terms, Mapping) and terms and isinstance(output.metrics, Mapping)
                and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in terms.values())):
            return output
        raise ConfigError(f"auxiliary loss {type(loss).__name__} returned LossOutput terms "
                          f"{ {k: type(v).__name__ for k, v in dict(terms).items()} }; terms must be a non-empty "
                          "mapping of 0-d tensors")
    if (isinstance(output, tuple) and len(output) == 2 and isinstance(output[0], torch.Tensor)
            and isinstance(output[1], Mapping)):
        raise ConfigError(f"auxiliary loss {type(loss).__name__} returned (loss, metrics), the old contract; "
                          "return LossOutput(terms={'loss': ...}, metrics={...}): " + NEW_CONTRACT)
    got = (f"a {output.dim()}-d tensor" if isinstance(output, torch.Tensor)
           else f"a tuple of {len(output)}" if isinstance(output, tuple) else type(output).__name__)
    raise ConfigError(f"auxiliary loss {type(loss).__name__} returned {got}; an auxiliary loss returns "
                      "LossOutput(terms, metrics), see AuxiliaryLoss.forward")


def prefixed(name: str, metrics: Metrics) -> dict[str, Any]:
    """``{"cosine": x}`` of loss ``mlr`` -> ``{"mlr_cosine": x}``."""
    return {f"{name}_{key}": value for key, value in metrics.items()}


def attach(losses: Sequence[nn.Module], context: LossContext,
           check: Callable[[AuxiliaryLoss], None] | None = None) -> tuple[nn.ModuleList, list[str]]:
    """What both agents do with the losses gin gives them: check each against the contract, name
    them (:func:`loss_names`), apply the agent's own ``check`` to each, then ``setup(context)``.
    Returns the losses as a ModuleList (for the agent's state dict) and their metric prefixes; the
    agent then moves the new modules to its device."""
    for loss in losses:
        check_contract(loss)
    modules = nn.ModuleList(losses)
    names = loss_names(modules)
    if check is not None:
        for loss in modules:
            check(loss)
    for loss in modules:
        loss.setup(context)
    return modules, names


def constant_lr(agent: str, optimizer: str) -> Callable[[AuxiliaryLoss], None]:
    """The ``check`` for :func:`attach` of an agent that trains its auxiliary losses under its
    one ``optimizer`` at a constant lr (Rainbow, BBF): a loss's warm-up is refused."""
    def check(loss: AuxiliaryLoss) -> None:
        if loss.lr_warmup:
            raise ConfigError(f"losses.{loss_names([loss])[0]}.lr_warmup = {loss.lr_warmup}: {agent} trains "
                              f"auxiliary losses under its one {optimizer} at a constant lr; set it to 0")
    return check


def rng_states(losses: Sequence[AuxiliaryLoss]) -> dict[str, torch.Tensor]:
    """Every loss's :meth:`~AuxiliaryLoss.rng_state`, keyed ``"<loss index>|<device>"`` (the
    checkpoints' format)."""
    return {f"{i}|{device}": state for i, loss in enumerate(losses) for device, state in loss.rng_state().items()}


def load_rng_states(losses: Sequence[AuxiliaryLoss], states: Mapping[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_states` returned."""
    by_loss: dict[int, dict[str, torch.Tensor]] = {}
    for key, state in states.items():
        index, device = key.split("|", 1)
        by_loss.setdefault(int(index), {})[device] = state
    for index, state in by_loss.items():
        losses[index].load_rng_state(state)
