"""The SAC batch that :class:`~mlr_registry.replay.transition_replay.TransitionReplay` samples:
single uncropped transitions with their replay slots."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Transitions:
    """A SAC batch of single transitions (uncropped; ``obs``/``next_obs`` may share storage)."""

    obs: torch.Tensor  # (b c h w) uint8
    action: torch.Tensor  # (b a) float32
    reward: torch.Tensor  # (b) float32
    next_obs: torch.Tensor  # (b c h w) uint8
    not_done: torch.Tensor  # (b) float32: 0 only after a true terminal (never on DMC)
    indices: torch.Tensor  # (b) int64 replay slots

    @property
    def batch_size(self) -> int:
        return int(self.obs.shape[0])

    def to(self, device: torch.device | str) -> Transitions:
        return Transitions(**{f.name: getattr(self, f.name).to(device, non_blocking=True)
                              for f in dataclasses.fields(self)})
