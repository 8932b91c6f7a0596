"""Factorised-Gaussian noisy linear layers (Fortunato et al. 2018), as SPR/MLR's Q head uses them
(docs/faithfulness.md#atari-agent)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.errors import check_range


def _scaled_noise(buffer: torch.Tensor) -> torch.Tensor:
    """f(ε) = sign(ε)·√|ε| with ε ~ N(0, 1), shaped like ``buffer``."""
    eps = torch.randn_like(buffer)
    return eps.sign() * eps.abs().sqrt()


class NoisyLinear(nn.Module):
    """y = x (μ_w + σ_w ⊙ ε_out ε_inᵀ)ᵀ + μ_b + σ_b ⊙ ε_out, with factorised noise.

    Init: μ ~ U(±1/√in) (weights and biases), σ_w = std_init/√in, σ_b = std_init/√out.
    The noise lives in the buffers ``epsilon_in`` (in) and ``epsilon_out`` (out), so copies
    (target networks, ``load_state_dict``) carry the current sample; it changes only in
    :meth:`reset_noise`.

    Noise is used when ``self.training or self.sampling``, unless ``noise_override`` is a bool,
    which then decides (the reference's rule): an agent keeps its modules in eval mode while
    acting and turns ``sampling`` on for training-time acting and off for evaluation.
    """

    def __init__(self, in_features: int, out_features: int, std_init: float = 0.1):
        super().__init__()
        check_range("noisy_linear.in_features", in_features, 1)
        check_range("noisy_linear.out_features", out_features, 1)
        check_range("noisy_linear.std_init", std_init, 0)
        self.in_features, self.out_features, self.std_init = in_features, out_features, std_init
        self.sampling = True
        self.noise_override: bool | None = None
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("epsilon_in", torch.zeros(in_features))
        self.register_buffer("epsilon_out", torch.zeros(out_features))
        self.reset_parameters()
        self.reset_noise()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        mu_range = 1.0 / math.sqrt(self.in_features)
        self.weight_mu.uniform_(-mu_range, mu_range)
        self.bias_mu.uniform_(-mu_range, mu_range)
        self.weight_sigma.fill_(self.std_init / math.sqrt(self.in_features))
        self.bias_sigma.fill_(self.std_init / math.sqrt(self.out_features))

    @torch.no_grad()
    def reset_noise(self) -> None:
        self.epsilon_in.copy_(_scaled_noise(self.epsilon_in))
        self.epsilon_out.copy_(_scaled_noise(self.epsilon_out))

    @property
    def uses_noise(self) -> bool:
        if self.noise_override is not None:
            return self.noise_override
        return self.training or self.sampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_noise:
            return self.forward_mu(x)
        noise = torch.outer(self.epsilon_out, self.epsilon_in)  # (out in), factorised
        weight = torch.addcmul(self.weight_mu, self.weight_sigma, noise)
        bias = torch.addcmul(self.bias_mu, self.bias_sigma, self.epsilon_out)
        return F.linear(x, weight, bias)

    def forward_mu(self, x: torch.Tensor) -> torch.Tensor:
        """The noiseless layer (μ only), whatever the mode: MLR's projector path
        (docs/faithfulness.md#atari-mlr-loss)."""
        return F.linear(x, self.weight_mu, self.bias_mu)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, std_init={self.std_init}"


def reset_noise(module: nn.Module) -> None:
    """Draw fresh noise in every NoisyLinear inside ``module``."""
    for m in module.modules():
        if isinstance(m, NoisyLinear):
            m.reset_noise()


def set_sampling(module: nn.Module, sampling: bool) -> None:
    """Set ``sampling`` on every NoisyLinear inside ``module`` (noise in eval mode or not)."""
    for m in module.modules():
        if isinstance(m, NoisyLinear):
            m.sampling = sampling
