"""An update's metrics, left on the training device until someone reads them.

``agent.update`` returns a :class:`LazyMetrics`: a read-only mapping of metric name to float,
like a dict, whose values are still 0-d tensors (and a few Python numbers, such as SAC's aux
lr). Reading any value converts all of them with one device→host transfer (:func:`to_floats`),
so a caller that indexes it (tests, a plugin trainer) sees plain floats. The built-in trainers
never read it per update: :class:`mlr_registry.training.metric_window.MetricWindow` sums the pending
tensors on the device and converts once per log interval. On a GPU an update then ends without
waiting for the GPU, and the host prepares the next batch while the GPU still computes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch


def to_floats(*parts: Mapping[str, Any]) -> dict[str, float]:
    """Merge metric dicts whose values are 0-d tensors or numbers into floats, with one
    device→host transfer for all the tensors (a ``.item()`` each would sync once per metric)."""
    merged = {k: v for part in parts for k, v in part.items()}
    keys = [k for k, v in merged.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in merged.items() if not isinstance(v, torch.Tensor)}
    if keys:
        values = torch.stack([merged[k].detach().float().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, values, strict=True))
    return {k: out[k] for k in merged}


class LazyMetrics(Mapping[str, float]):
    """Metric name → float, converted from device tensors on first read (then cached).

    Args:
        *parts: dicts of name → 0-d tensor or number, merged in order (a later part's key wins).
        priorities: what an update hands a prioritized replay besides its metrics: one new
            priority per batch entry (b), or None. Not a metric: never converted or logged.
    """

    def __init__(self, *parts: Mapping[str, Any], priorities: torch.Tensor | None = None):
        self._values: dict[str, Any] = {k: v for part in parts for k, v in part.items()}
        self._floats: dict[str, float] | None = None
        self.priorities = priorities

    def pending(self) -> dict[str, Any] | None:
        """The unconverted values (tensors detached), or None once they have been read."""
        if self._floats is not None:
            return None
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in self._values.items()}

    def _read(self) -> dict[str, float]:
        if self._floats is None:
            self._floats = to_floats(self._values)
            self._values = {}
        return self._floats

    def __getitem__(self, key: str) -> float:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:  # keys need no transfer
        return iter(self._floats if self._floats is not None else self._values)

    def __len__(self) -> int:
        return len(self._floats if self._floats is not None else self._values)

    def __repr__(self) -> str:
        return f"LazyMetrics({self._read()!r})"
