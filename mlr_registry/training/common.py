"""Run-level helpers every trainer shares: the device, and the run tags that name what ran
(registered component names, the objective, the GPU fast path's switches)."""

from __future__ import annotations

from typing import Any

import torch

from mlr_registry.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable device is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def registered_name(kind: str, obj: Any) -> str:
    """The registry name of ``obj``'s class (its lower-cased class name if unregistered)."""
    from mlr_registry import registry

    by_class = {c.target: c.name for c in registry.components(kind)}
    return by_class.get(type(obj), type(obj).__name__.lower())


def fast_path_tags(agent: Any, replay: Any = None) -> dict[str, str]:
    """What the GPU fast path actually runs, as run tags: the agent's ``fast_path.precision``,
    ``fast_path.compile`` and the reason of any switch that turned itself off, and the replay's
    ``fast_path.replay_compile`` (+ note) where it has one; {} for components without."""
    tags = {}
    fast = getattr(agent, "fast_path", None)
    if fast is not None and hasattr(fast, "describe"):
        tags.update({f"fast_path.{k}": str(v) for k, v in fast.describe().items()})
    fast = getattr(replay, "fast_path", None)
    if fast is not None and hasattr(fast, "describe"):
        tags.update({f"fast_path.replay_{k}": str(v) for k, v in fast.describe().items()
                     if k.startswith("compile")})
    return tags


def objective_of(agent: Any) -> str:
    """The ``objective`` tag: the agent's aux-loss names joined by '+', or 'baseline'."""
    names = [registered_name("loss", loss) for loss in getattr(agent, "aux_losses", [])]
    return "+".join(names) or "baseline"
