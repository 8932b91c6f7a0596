"""BBF's periodic resets with shrink-and-perturb (docs/bbf.md#resets).

At a reset every trainable part of the agent gets a fresh draw of its initialization. The parts
named in ``shrink_perturb`` keep part of what they learned, θ ← shrink·θ + perturb·θ_fresh
(BBF: the encoder and SPR's transition model, 0.5 and 0.5); every other part is replaced by its
fresh draw (BBF: the Q head with its projection, and SPR's predictor). Each target network
follows its online part, with a fresh draw of its own (BBF's ``reset_target``). The optimizer
state starts over (the caller rebuilds it).

A part's fresh draw is a copy re-initialized by its own ``reset_parameters`` (a module that
defines one at its top, e.g. the Impala encoder's Xavier init), else by its children's
(PyTorch's defaults for plain layers).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlr_registry.errors import ConfigError, check_range


def reinitialize(module: nn.Module) -> None:
    """Draw ``module``'s parameters again from its own initializer."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for child in module.children():
        reinitialize(child)


def fresh_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with newly drawn parameters (the original is untouched)."""
    fresh = copy.deepcopy(module)
    reinitialize(fresh)
    return fresh


@torch.no_grad()
def shrink_perturb_(module: nn.Module, shrink: float, perturb: float) -> None:
    """θ ← shrink·θ + perturb·θ_fresh, in place, θ_fresh a new draw of ``module``'s init
    (shrink 0, perturb 1: a plain re-initialization)."""
    params = list(module.parameters())
    if not params:
        return
    fresh = list(fresh_copy(module).parameters())
    torch._foreach_mul_(params, shrink)
    torch._foreach_add_(params, fresh, alpha=perturb)


@dataclass
class ResetSchedule:
    """When to reset, counted in environment steps (BBF's ``reset_every`` / ``no_resets_after``).

    BBF checks after the updates of each step: once ``env_steps`` reaches ``next_reset`` the next
    one is set ``every`` steps later, and the reset happens only if that next one still lies
    within ``until`` (so the network has a whole interval to recover before training ends).
    ``every`` 0 disables resets.
    """

    every: int = 20_000
    until: int = 100_000
    next_reset: int = 0
    resets: int = 0

    def __post_init__(self) -> None:
        check_range("bbf.reset_every", self.every, 0, integer=True)
        check_range("bbf.no_resets_after", self.until, 0, integer=True)
        if not self.next_reset:
            self.next_reset = self.every

    def due(self, env_steps: int) -> bool:
        """Whether to reset now, after the updates of the step that brought the count of stored
        transitions to ``env_steps``. Advances the schedule when a check point is reached."""
        if self.every <= 0 or env_steps < self.next_reset:
            return False
        self.next_reset = env_steps + self.every
        if self.next_reset > self.until:
            return False
        self.resets += 1
        return True


def check_parts(parts: dict[str, nn.Module], names: Sequence[str]) -> None:
    """Every name in ``shrink_perturb`` must be one of the agent's parts (a typo would silently
    re-initialize what was meant to be kept)."""
    unknown = [name for name in names if name not in parts]
    if unknown:
        raise ConfigError(f"bbf.shrink_perturb names {unknown}, which are not parts of this agent; its parts are "
                          f"{sorted(parts)}")


def reset_parts(parts: dict[str, nn.Module], targets: Iterable[tuple[nn.Module, nn.Module]],
                shrink_perturb: Sequence[str], shrink: float, perturb: float) -> None:
    """Reset each online part, and each target (online, target) with the rule of the part its
    online module belongs to (a target of a module outside every part is left alone)."""
    def rule(name: str) -> tuple[float, float]:
        return (shrink, perturb) if name in shrink_perturb else (0.0, 1.0)

    owners = {id(module): name for name, part in parts.items() for module in part.modules()}
    for online, target in targets:
        owner = owners.get(id(online))
        if owner is not None:
            shrink_perturb_(target, *rule(owner))
    for name, part in parts.items():
        shrink_perturb_(part, *rule(name))
