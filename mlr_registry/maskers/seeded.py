"""The random stream a masker draws from: torch's global RNG by default (what the references
do), or, when the masker is built with a ``seed``, a ``torch.Generator`` of its own per device.

The trainers checkpoint and restore those generators through :meth:`state_dict` /
:meth:`load_state_dict` (found as ``masker.generators``), so a resumed run masks as the
uninterrupted one would. A plugin masker that wants its own seeded stream can hold one too.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class SeededGenerators:
    """``generators(device)`` -> the device's generator, made and seeded on first use, or None
    (draw from torch's global RNG) when ``seed`` is None."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._by_device: dict[torch.device, torch.Generator] = {}

    def __call__(self, device: torch.device | str) -> torch.Generator | None:
        if self.seed is None:
            return None
        device = torch.device(device)
        if device not in self._by_device:
            self._by_device[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._by_device[device]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state of every generator made so far, by device name ('cpu', 'cuda:0')."""
        return {str(device): generator.get_state() for device, generator in self._by_device.items()}

    def load_state_dict(self, states: Mapping[str, torch.Tensor]) -> None:
        for device, state in states.items():
            device = torch.device(device)
            self._by_device.setdefault(device, torch.Generator(device=device)).set_state(state)
