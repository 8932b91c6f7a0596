"""BBF's Q head: one wide hidden layer (the "projection", which SPR's loss also reads) and a
dueling C51 output, without noisy nets (docs/bbf.md#the-head)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.initialization import XavierLinear


class BBFHead(nn.Module):
    """latent (n d) → logits (n A atoms), as BBF's ``RainbowDQNNetwork`` computes its Q values.

    ``projection``: Linear(d → hidden) (2048 in BBF). The Q path applies a ReLU after it; SPR's
    loss uses it without the ReLU, as BBF's ``encode_project``. Dueling: ``advantage``
    Linear(hidden → A·atoms) and ``value`` Linear(hidden → atoms), logits = V + (Adv − mean_a
    Adv); without dueling, ``advantage`` alone. Every weight Xavier-uniform, every bias zero
    (flax ``Dense`` with BBF's initializer).
    """

    def __init__(self, latent_dim: int, num_actions: int, n_atoms: int, hidden_size: int, dueling: bool):
        super().__init__()
        self.num_actions, self.n_atoms, self.dueling = num_actions, n_atoms, dueling
        self.projection = XavierLinear(latent_dim, hidden_size)
        self.advantage = XavierLinear(hidden_size, num_actions * n_atoms)
        self.value = XavierLinear(hidden_size, n_atoms) if dueling else None

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.projection(latent))  # (n hidden)
        adv = self.advantage(x).view(-1, self.num_actions, self.n_atoms)  # (n A atoms)
        if self.value is None:
            return adv
        value = self.value(x).view(-1, 1, self.n_atoms)  # (n 1 atoms)
        return value + (adv - adv.mean(dim=1, keepdim=True))
