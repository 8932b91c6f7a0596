"""Pieces every trainer shares: device choice, seeding, tags, and windowed metric averages."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mlr_registry.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable device is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def registered_name(kind: str, obj: Any) -> str:
    """The registry name of ``obj``'s class (its lower-cased class name if unregistered)."""
    from mlr_registry import registry

    by_class = {c.target: c.name for c in registry.components(kind)}
    return by_class.get(type(obj), type(obj).__name__.lower())


def objective_of(agent: Any) -> str:
    """The ``objective`` tag: the agent's aux-loss names joined by '+', or 'baseline'."""
    names = [registered_name("loss", loss) for loss in getattr(agent, "aux_losses", [])]
    return "+".join(names) or "baseline"


class MetricWindow:
    """Averages metrics between log points and measures throughput over the same window."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._t0 = time.perf_counter()
        self._steps0 = 0
        self._updates0 = 0

    def add(self, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] += float(value)
            self._counts[key] += 1

    def __bool__(self) -> bool:
        """True when metrics were added since the last flush."""
        return bool(self._sums)

    def flush(self, env_steps: int, updates: int, prefix: str = "train/") -> dict[str, float]:
        """Means since the last flush plus env steps/s and updates/s; resets the window."""
        now = time.perf_counter()
        elapsed = max(now - self._t0, 1e-9)
        out = {f"{prefix}{k}": self._sums[k] / self._counts[k] for k in self._sums}
        out["throughput/env_steps_per_s"] = (env_steps - self._steps0) / elapsed
        out["throughput/updates_per_s"] = (updates - self._updates0) / elapsed
        self._sums.clear()
        self._counts.clear()
        self._t0, self._steps0, self._updates0 = now, env_steps, updates
        return out
