"""Rainbow's Q head as SPR builds it: a noisy, dueling C51 head, and the projector MLR reads
from its first layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.agents.noisy import NoisyLinear


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward, gradient × ``scale`` backward (rlpyt's ``scale_grad``)."""
    return x * scale + x.detach() * (1 - scale)


class C51Head(nn.Module):
    """Noisy C51 Q head: latent (n d) → logits (n A atoms) (SPR's
    ``DQNDistributionalDuelingHeadModel``).

    Dueling: value NoisyLinear(d→h) ReLU NoisyLinear(h→atoms); advantage NoisyLinear(d→h) ReLU
    NoisyLinear(h→A·atoms) + ``advantage_bias`` (atoms, init 0); logits = V + (Adv − mean_a Adv).
    Without dueling: NoisyLinear(d→h) ReLU NoisyLinear(h→A·atoms) (``value_fc1`` is then unused
    and absent). The input's gradient is scaled by ``grad_scale``.
    """

    def __init__(self, latent_dim: int, num_actions: int, n_atoms: int, hidden_size: int,
                 noisy_std: float, dueling: bool, grad_scale: float):
        super().__init__()
        self.num_actions, self.n_atoms = num_actions, n_atoms
        self.dueling, self.grad_scale = dueling, grad_scale
        self.adv_fc1 = NoisyLinear(latent_dim, hidden_size, noisy_std)
        self.adv_fc2 = NoisyLinear(hidden_size, num_actions * n_atoms, noisy_std)
        if dueling:
            self.value_fc1 = NoisyLinear(latent_dim, hidden_size, noisy_std)
            self.value_fc2 = NoisyLinear(hidden_size, n_atoms, noisy_std)
            self.advantage_bias = nn.Parameter(torch.zeros(n_atoms))

    def first_layers(self) -> list[NoisyLinear]:
        """The layers MLR's projector shares: [value_fc1, adv_fc1] (dueling) or [adv_fc1]."""
        return [self.value_fc1, self.adv_fc1] if self.dueling else [self.adv_fc1]

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = scale_grad(latent, self.grad_scale)
        adv = self.adv_fc2(F.relu(self.adv_fc1(x))).view(-1, self.num_actions, self.n_atoms)  # (n A atoms)
        if not self.dueling:
            return adv
        adv = adv + self.advantage_bias
        value = self.value_fc2(F.relu(self.value_fc1(x))).view(-1, 1, self.n_atoms)  # (n 1 atoms)
        return value + (adv - adv.mean(dim=1, keepdim=True))


class QHeadProjector(nn.Module):
    """MLR's projector (SPR's ``QL1Head`` with ``q_l1_type=[value, advantage]``; docs/faithfulness.md#atari-mlr-loss):
    latent (n d) → concat(value_fc1_μ(x), adv_fc1_μ(x)) (n 2h). The SAME layer objects as the
    head, μ weights only, no ReLU, no gradient scaling."""

    def __init__(self, layers: Sequence[NoisyLinear]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.out_features = sum(layer.out_features for layer in layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([layer.forward_mu(x) for layer in self.layers], dim=-1)
