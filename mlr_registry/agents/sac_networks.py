"""The networks of CURL-style SAC from pixels (the reference's ``Actor`` and ``Critic``): a
tanh-Gaussian actor and a twin-Q critic, each over its own pixel encoder, and the critic
target's EMA."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.encoders.pixel_encoder import orthogonal_init
from mlr_registry.errors import ConfigError
from mlr_registry.target_network import ema_update

LOG_PROB_EPS = 1e-6  # the reference's squash correction eps


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


def tanh_gaussian(mu: torch.Tensor, log_std: torch.Tensor,
                  noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b A) mean, log-std and standard-normal noise → (tanh(mu), tanh(pi), log π(tanh(pi))) with
    pi = mu + noise·std; log π is the diagonal Gaussian log-density of pi minus
    Σ log(relu(1 − tanh(pi)²) + 1e-6) (the reference's ``gaussian_logprob`` + ``squash``), shape (b)."""
    pi = mu + noise * log_std.exp()
    log_pi = (-0.5 * noise.pow(2) - log_std).sum(-1) - 0.5 * math.log(2 * math.pi) * noise.shape[-1]
    squashed = torch.tanh(pi)
    log_pi = log_pi - torch.log(F.relu(1 - squashed.pow(2)) + LOG_PROB_EPS).sum(-1)
    return torch.tanh(mu), squashed, log_pi


class Actor(nn.Module):
    """obs (b c h w) in [0, 1] → tanh-Gaussian policy: encoder → Linear(d, h) ReLU Linear(h, h)
    ReLU Linear(h, 2A) → mu, log_std; log_std = tanh(raw) mapped affinely into
    [log_std_min, log_std_max]."""

    def __init__(self, encoder: nn.Module, latent_dim: int, num_actions: int, hidden_dim: int,
                 log_std_min: float, log_std_max: float):
        super().__init__()
        self.encoder = encoder
        self.trunk = _mlp(latent_dim, hidden_dim, 2 * num_actions)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        orthogonal_init(self.trunk)

    def distribution(self, obs: torch.Tensor, detach_conv: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(b A) mu (pre-tanh) and log_std."""
        mu, raw = self.trunk(self.encoder(obs, detach_conv=detach_conv)).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw) + 1)
        return mu, log_std

    def forward(self, obs: torch.Tensor,
                detach_conv: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tanh(mu), tanh(pi) sampled, log π (b), log_std (b A))."""
        mu, log_std = self.distribution(obs, detach_conv)
        mean_action, action, log_pi = tanh_gaussian(mu, log_std, torch.randn_like(mu))
        return mean_action, action, log_pi, log_std


class Critic(nn.Module):
    """Twin Q: encoder → concat(feature, action) → Q1, Q2, each Linear(d+A, h) ReLU Linear(h, h)
    ReLU Linear(h, 1)."""

    def __init__(self, encoder: nn.Module, latent_dim: int, num_actions: int, hidden_dim: int):
        super().__init__()
        self.encoder = encoder
        self.q1 = _mlp(latent_dim + num_actions, hidden_dim, 1)
        self.q2 = _mlp(latent_dim + num_actions, hidden_dim, 1)
        orthogonal_init(self.q1)
        orthogonal_init(self.q2)

    def forward(self, obs: torch.Tensor, action: torch.Tensor,
                detach_conv: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """obs (b c h w), action (b A) → Q1, Q2 (b)."""
        h = torch.cat([self.encoder(obs, detach_conv=detach_conv), action], dim=-1)
        return self.q1(h).squeeze(-1), self.q2(h).squeeze(-1)


def check_encoder(encoder: nn.Module, in_channels: int, image_size: int) -> int:
    """The encoder's output size, checked with a dummy forward at the crop size."""
    with torch.no_grad():
        out = encoder(torch.zeros(1, in_channels, image_size, image_size))
    actual = int(out.shape[-1])
    declared = getattr(encoder, "output_dim", actual)
    if out.dim() != 2 or declared != actual:
        raise ConfigError(f"sac.encoder {type(encoder).__name__} maps ({in_channels}, {image_size}, {image_size}) "
                          f"to {tuple(out.shape[1:])} but declares output_dim {declared}")
    return actual


def actor_and_critics(encoder: Callable[..., nn.Module], in_channels: int, image_size: int, num_actions: int,
                      hidden_dim: int, log_std_min: float, log_std_max: float) -> tuple[Critic, Actor, Critic]:
    """(critic, actor, critic target), built in this order (it fixes the initial weights' random
    draws): the critic owns THE encoder; the actor's convs are tied to it; the target is a full,
    stop-grad copy of the critic."""
    critic_encoder = encoder(in_channels=in_channels, image_size=image_size)
    actor_encoder = encoder(in_channels=in_channels, image_size=image_size)
    latent_dim = check_encoder(critic_encoder, in_channels, image_size)
    if not hasattr(actor_encoder, "copy_conv_weights_from"):
        raise ConfigError(f"sac.encoder {type(actor_encoder).__name__} has no copy_conv_weights_from(other); "
                          "SAC ties the actor's convs to the critic's")
    actor_encoder.copy_conv_weights_from(critic_encoder)
    critic = Critic(critic_encoder, latent_dim, num_actions, hidden_dim)
    actor = Actor(actor_encoder, latent_dim, num_actions, hidden_dim, log_std_min, log_std_max)
    return critic, actor, copy.deepcopy(critic).requires_grad_(False)



@torch.no_grad()
def soft_update_critic(critic: Critic, target: Critic, critic_tau: float, encoder_tau: float) -> None:
    """target ← τ·online + (1−τ)·target over parameters only (the reference's
    ``soft_update_params``): Q1, then Q2 with ``critic_tau``, then the encoder with ``encoder_tau``."""
    pairs = ((critic.q1, target.q1, critic_tau), (critic.q2, target.q2, critic_tau),
             (critic.encoder, target.encoder, encoder_tau))
    for online, moving, tau in pairs:
        ema_update(online, moving, tau)
