"""Target networks: the slowly moving copies (EMA or periodic hard copy) that give the critics'
bootstrap values and the auxiliary losses' regression targets (MLR's and SPR's target encoder
and projector, CURL's key encoder, SAC's target critic).

Each update is one multi-tensor op over the whole module (``torch._foreach_*``): on a GPU a few
kernels instead of one per tensor, and the same numbers as per-tensor ``lerp_`` / ``copy_``.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """``target ← tau·online + (1−tau)·target`` over parameters only (buffers stay): the
    reference implementations' ``soft_update_params``. The two modules must have the same
    parameters in the same order."""
    online_params, target_params = list(online.parameters()), list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError(f"ema_update: the online module has {len(online_params)} parameters, the target "
                         f"{len(target_params)}; a target must be a copy of its online module")
    if online_params:  # an identity projector has none; the foreach ops refuse empty lists
        torch._foreach_lerp_(target_params, online_params, tau)


@torch.no_grad()
def hard_update(online: nn.Module, target: nn.Module) -> None:
    """``target ← online`` exactly, parameters and buffers (``load_state_dict(state_dict())``
    without its per-tensor copies): Atari's tau = 1 target."""
    source = [*online.parameters(), *online.buffers()]
    dest = [*target.parameters(), *target.buffers()]
    if len(source) != len(dest):
        raise ValueError(f"hard_update: the online module has {len(source)} parameters and buffers, the "
                         f"target {len(dest)}; a target must be a copy of its online module")
    if source:
        torch._foreach_copy_(dest, source)
