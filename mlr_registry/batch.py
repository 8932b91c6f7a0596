"""The batch that replay gives to agents and agents give to auxiliary losses.

Shapes in einops notation; ``t`` is the number of consecutive steps sampled.
Atari: t = K+1 + n_step (16 + 10 = 26): steps 0..K feed MLR, step 0 and step n feed the RL loss.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Batch:
    obs: torch.Tensor  # (b t c h w) uint8: stacked observation at each step
    action: torch.Tensor  # (b t) int64 (discrete) or (b t a) float: action taken AT obs[:, t]
    reward: torch.Tensor  # (b t) float: reward received after action[:, t] (clipped on Atari)
    done: torch.Tensor  # (b t) bool: the transition at step t ended an episode (or a life)
    returns: torch.Tensor | None = None  # (b k) n-step discounted return from step t < k = K+1
    done_n: torch.Tensor | None = None  # (b k) bool: a done within the n steps from t
    weights: torch.Tensor | None = None  # (b) importance-sampling weights (prioritized replay)
    indices: torch.Tensor | None = None  # (b) int64 replay indices of the sequence starts

    @property
    def batch_size(self) -> int:
        return int(self.obs.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device`` (non-blocking where the source is pinned)."""
        moved = {f.name: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                 for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}
        return Batch(**moved)
