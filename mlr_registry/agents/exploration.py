"""ε-greedy acting, shared by the discrete-action agents (Rainbow, BBF)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mlr_registry.errors import check_range


def epsilon_greedy(obs: torch.Tensor, epsilon: float, num_actions: int, device: torch.device,
                   greedy_actions: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """uint8 ``obs`` (b c h w), or (c h w) for one observation → int64 actions (b) on ``device``:
    each a uniform action with probability ε, else ``greedy_actions(obs)``'s. ε = 1 skips the
    network (uniform actions, the same distribution)."""
    check_range("act.epsilon", epsilon, 0, 1)
    obs = torch.as_tensor(obs, device=device)
    obs = obs[None] if obs.dim() == 3 else obs  # (b c h w)
    b = obs.shape[0]
    if epsilon >= 1.0:
        return torch.randint(0, num_actions, (b,), device=device)
    actions = greedy_actions(obs)  # (b)
    if epsilon > 0:
        explore = torch.rand(b, device=device) < epsilon
        actions = torch.where(explore, torch.randint_like(actions, num_actions), actions)
    return actions
