"""Target networks: the slowly moving copies (EMA or periodic hard copy) that give the critics'
bootstrap values and the auxiliary losses' regression targets (MLR's and SPR's target encoder
and projector, CURL's key encoder, SAC's target critic).

Each update is one multi-tensor op over the whole module (``torch._foreach_*``): on a GPU a few
kernels instead of one per tensor, and the same numbers as per-tensor ``lerp_`` / ``copy_``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """``target ← tau·online + (1−tau)·target`` over parameters only (buffers stay): the
    reference implementations' ``soft_update_params``. The two modules must have the same
    parameters in the same order."""
    online_params, target_params = list(online.parameters()), list(target.parameters())
    _check_copy("ema_update", "parameters", online_params, target_params)
    if online_params:  # an identity projector has none; the foreach ops refuse empty lists
        torch._foreach_lerp_(target_params, online_params, tau)


@torch.no_grad()
def hard_update(online: nn.Module, target: nn.Module) -> None:
    """``target ← online`` exactly, parameters and buffers (``load_state_dict(state_dict())``
    without its per-tensor copies): Atari's tau = 1 target."""
    online_params, target_params = list(online.parameters()), list(target.parameters())
    online_buffers, target_buffers = list(online.buffers()), list(target.buffers())
    _check_copy("hard_update", "parameters", online_params, target_params)
    _check_copy("hard_update", "buffers", online_buffers, target_buffers)
    source, dest = [*online_params, *online_buffers], [*target_params, *target_buffers]
    if source:
        torch._foreach_copy_(dest, source)


def target_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """The aux losses' target step: tau = 1 an exact copy of parameters and buffers
    (:func:`hard_update`, Atari's ``load_state_dict``), tau < 1 an average of parameters
    (:func:`ema_update`, DMC's ``soft_update_params``)."""
    if tau == 1.0:
        hard_update(online, target)
    else:
        ema_update(online, target, tau)


def _check_copy(caller: str, what: str, online: list[torch.Tensor], target: list[torch.Tensor]) -> None:
    """The same number of tensors with the same shapes (the foreach ops would broadcast a mismatch)."""
    if len(online) != len(target):
        raise ValueError(f"{caller}: the online module has {len(online)} {what}, the target {len(target)}; "
                         "a target must be a copy of its online module")
    for i, (a, b) in enumerate(zip(online, target, strict=True)):
        if a.shape != b.shape:
            raise ValueError(f"{caller}: {what} {i} is {tuple(a.shape)} online but {tuple(b.shape)} in the "
                             "target; a target must be a copy of its online module")


@dataclass(frozen=True)
class TargetNetwork:
    """A declared target: ``target`` follows ``online`` by ``tau`` when its owner's agent calls
    :meth:`update` (the agent decides when: Rainbow right after the loss's forward, SAC on its
    ``target_update_period``). ``exact_at_one``: tau = 1 copies parameters and buffers exactly
    (:func:`target_update`); False averages parameters at any tau (:func:`ema_update`, CURL's key
    encoder). ``online`` is usually the agent's module: the declaration only refers to it."""

    online: nn.Module
    target: nn.Module
    tau: float
    exact_at_one: bool = True

    def update(self) -> None:
        if self.exact_at_one:
            target_update(self.online, self.target, self.tau)
        else:
            ema_update(self.online, self.target, self.tau)
