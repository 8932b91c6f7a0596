"""Windowed metric averages and throughput between log points."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch


class MetricWindow:
    """Averages metrics between log points and measures throughput over the same window.

    Metrics an agent left on the device (:class:`mlr_registry.agents.metrics.LazyMetrics` not
    yet read) are summed there, in float64, one stacked tensor per set of metric names, and
    brought to the host when the window is flushed or saved: the training loop makes no
    device→host transfer for metrics between log points.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._device_sums: dict[tuple[str, ...], list[Any]] = {}  # names -> [float64 sums (n), adds]
        self._t0 = time.perf_counter()
        self._steps0 = 0
        self._updates0 = 0

    def add(self, metrics: Mapping[str, float]) -> None:
        pending = metrics.pending() if callable(getattr(metrics, "pending", None)) else None
        if pending is None:
            self._add_floats(metrics)
            return
        names = tuple(k for k, v in pending.items() if isinstance(v, torch.Tensor))
        self._add_floats({k: v for k, v in pending.items() if not isinstance(v, torch.Tensor)})
        if names:
            values = torch.stack([pending[k].reshape(()).to(torch.float64) for k in names])  # (n)
            entry = self._device_sums.get(names)
            if entry is None:
                self._device_sums[names] = [values, 1]
            else:
                entry[0] = entry[0] + values
                entry[1] += 1

    def _add_floats(self, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] += float(value)
            self._counts[key] += 1

    def _collect(self) -> None:
        """Move the device sums into the host sums (one transfer per set of names)."""
        for names, (sums, count) in self._device_sums.items():
            for key, value in zip(names, sums.tolist(), strict=True):
                self._sums[key] += value
                self._counts[key] += count
        self._device_sums.clear()

    def state_dict(self) -> dict[str, Any]:
        """Sums, counts and the step/update marks of the open window (throughput's clock is not
        saved: after a resume the first window's rates count from the resume). Device sums are
        collected first, so an uninterrupted run and a resumed one sum in the same order."""
        self._collect()
        return {"sums": dict(self._sums), "counts": dict(self._counts), "steps0": self._steps0,
                "updates0": self._updates0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = defaultdict(float, {k: float(v) for k, v in state["sums"].items()})
        self._counts = defaultdict(int, {k: int(v) for k, v in state["counts"].items()})
        self._steps0, self._updates0 = int(state["steps0"]), int(state["updates0"])
        self._t0 = time.perf_counter()

    def __bool__(self) -> bool:
        """True when metrics were added since the last flush."""
        return bool(self._sums) or bool(self._device_sums)

    def flush(self, env_steps: int, updates: int, prefix: str = "train/") -> dict[str, float]:
        """Means since the last flush plus env steps/s and updates/s; resets the window."""
        self._collect()
        now = time.perf_counter()
        elapsed = max(now - self._t0, 1e-9)
        out = {f"{prefix}{k}": self._sums[k] / self._counts[k] for k in self._sums}
        out["throughput/env_steps_per_s"] = (env_steps - self._steps0) / elapsed
        out["throughput/updates_per_s"] = (updates - self._updates0) / elapsed
        self._sums.clear()
        self._counts.clear()
        self._t0, self._steps0, self._updates0 = now, env_steps, updates
        return out
