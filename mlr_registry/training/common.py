"""Run-level helpers every trainer shares: the device, the thread count, and the run tags that
name what ran (registered component names, the objective)."""

from __future__ import annotations

import os
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


def objective_of(agent: Any) -> str:
    """The ``objective`` tag: the agent's aux-loss names joined by '+', or 'baseline'."""
    names = [registered_name("loss", loss) for loss in getattr(agent, "aux_losses", [])]
    return "+".join(names) or "baseline"


# Environment variables through which a user (or a sweep, per trial) sets the thread count;
# torch reads them when it is imported.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def set_threads(name: str, threads: int, device: torch.device) -> int:
    """Set torch's intra-op threads for the run (the trainer does it, before it builds anything)
    and return how many it uses. ``threads`` > 0: that many. 0 (the default): the user's
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` where set (torch read it at import), else one
    thread on a CPU ``device``; a GPU run keeps torch's default (its CPU side is the env and
    small copies, and its measured figures were taken that way). torch's own default, one per
    core, thrashes wherever the cores are busy with anything else (the env, evaluation workers,
    other jobs; docs/performance.md#cpu-threads has the figures). Bind ``threads`` to the core
    count where they are free (a full-width run on an idle machine)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"{name} = {threads!r} must be an integer >= 0 "
                          "(0 = OMP_NUM_THREADS if set, else 1 on a CPU; N = N threads)")
    user_set = any(os.environ.get(var, "").strip() for var in THREAD_ENV_VARS)
    if threads == 0 and (user_set or device.type != "cpu"):
        return torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    return torch.get_num_threads()
