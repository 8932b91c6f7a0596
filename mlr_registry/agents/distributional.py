"""C51 (Bellemare et al. 2017): the fixed support and the projection of the n-step Bellman target
onto it (rlpyt ``CategoricalDQN``; docs/faithfulness.md#atari-agent)."""

from __future__ import annotations

import torch


def make_support(v_min: float = -10.0, v_max: float = 10.0, n_atoms: int = 51,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """(atoms) = linspace(v_min, v_max, n_atoms)."""
    return torch.linspace(v_min, v_max, n_atoms, device=device)


def project_distribution(next_probs: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor,
                         gamma_n: float | torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Project the distribution of clamp(r + (1 − done)·γⁿ·z, v_min, v_max) onto ``support``.

    next_probs (b atoms) is the bootstrap distribution at the chosen next action; rewards (b)
    the n-step returns; dones (b) whether an episode ended within the n steps. Returns
    (b atoms), each row summing to the row of ``next_probs``. Mass landing between atoms z_l
    and z_{l+1} is split linearly; mass landing on an atom stays there exactly. Equal to rlpyt's
    dense ``clamp(1 − |Tz − z| / Δz, 0, 1)`` projection, in O(b·atoms) with ``scatter_add``.
    """
    n_atoms = support.shape[0]
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (n_atoms - 1)
    not_done = (~dones.bool()).to(next_probs.dtype)
    rewards = rewards.to(next_probs.dtype)
    tz = (rewards[:, None] + not_done[:, None] * gamma_n * support[None, :]).clamp(v_min, v_max)  # (b atoms)
    pos = (tz - v_min) / delta  # fractional atom index in [0, atoms − 1]
    lower = pos.floor().clamp(0, n_atoms - 1)
    upper_w = pos - lower  # 0 when Tz lands on an atom: all mass to ``lower``
    lower_i = lower.long()
    upper_i = (lower_i + 1).clamp(max=n_atoms - 1)  # only reached with weight 0 at v_max
    out = torch.zeros_like(next_probs)
    out.scatter_add_(1, lower_i, next_probs * (1 - upper_w))
    out.scatter_add_(1, upper_i, next_probs * upper_w)
    return out
