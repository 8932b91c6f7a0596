"""n-step targets computed by the agent from a sequence's per-step rewards and dones, for agents
whose horizon and discount change during training (BBF anneals both; docs/bbf.md#n-step-targets).

A Rainbow agent reads ``batch.returns`` instead: the replay computes them at one fixed n and γ.
"""

from __future__ import annotations

import torch


def n_step_returns(reward: torch.Tensor, done: torch.Tensor, n: int, gamma: float | torch.Tensor,
                   bootstrap_one_step_early: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(b T) rewards and dones of steps 0.. → (returns (b), terminal (b) bool, bootstrap step).

    returns = Σ_{k<n} γ^k r_k, each term kept while no transition before k has ended the
    episode. ``terminal``: whether the bootstrap term is dropped. The bootstrap observation is
    ``obs[:, step]``, discounted by γ^n.

    ``bootstrap_one_step_early`` (BBF's replay, faithful): the bootstrap observation is the one
    n − 1 steps ahead and only dones of transitions 0..n−2 make the sample terminal (a done on the
    n-th transition is missed), as BBF's ``subsequence_replay_buffer`` indexes them. False: the
    observation n steps ahead, and a done on any of the n transitions is terminal.
    """
    r, d = reward[:, :n].float(), done[:, :n].float()  # (b n)
    alive = torch.cumprod(torch.cat([torch.ones_like(d[:, :1]), 1.0 - d[:, :-1]], dim=1), dim=1)  # (b n)
    discounts = torch.as_tensor(gamma, dtype=r.dtype, device=r.device) ** torch.arange(n, device=r.device)  # (n)
    returns = (r * alive * discounts).sum(dim=1)  # (b)
    step = n - 1 if bootstrap_one_step_early else n
    terminal = d[:, :step].sum(dim=1) > 0  # (b)
    return returns, terminal, step
