"""CURL-style SAC from pixels, the DMC agent of MLR and of its baseline (docs/faithfulness.md#dmc-sac-agent).

The critic owns THE encoder (the one auxiliary losses shape); the actor has its own encoder whose
convs are tied to the critic's (its fc + LayerNorm are its own). Auxiliary losses (MLR, or none
for the baseline) come by gin and are stepped by their own Adam, which also holds the critic
encoder, after the critic step, with the warm-up schedule each loss declares (``lr_warmup``;
MLR: an inverse-square-root warm-up, docs/faithfulness.md#dmc-optimisation).
:meth:`SAC.update` reads top to bottom in the reference's order:
critic, auxiliary losses, actor + temperature (every 2nd step), target EMAs (every 2nd step).

Pixels: every encoder takes float in [0, 1]; this agent divides its uint8 batches by 255 (the
reference divides inside the encoder: the same arithmetic).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.agents.augmentation import center_crop, intensity, random_crop
from mlr_registry.agents.lr_schedule import warmup_schedule
from mlr_registry.agents.metrics import LazyMetrics
from mlr_registry.batch import Batch
from mlr_registry.encoders.pixel_encoder import PixelEncoder, orthogonal_init
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.fast_path import FastPath, compile_targets
from mlr_registry.losses.auxiliary import (
    AuxiliaryLoss,
    LossContext,
    attach,
    checked_output,
    load_rng_states,
    prefixed,
    rng_states,
)
from mlr_registry.registry import register
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
        mu, raw = self.trunk(self.encoder(obs, detach_conv=detach_conv)).float().chunk(2, dim=-1)  # fp32 under autocast
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
        return self.q1(h).squeeze(-1).float(), self.q2(h).squeeze(-1).float()  # fp32 under autocast


def _field(transitions: Any, name: str) -> torch.Tensor:
    return transitions[name] if isinstance(transitions, Mapping) else getattr(transitions, name)


# The aux branch's intensity noise scale (the reference's Intensity(scale=0.05)).
AUX_INTENSITY_SCALE = 0.05


def aux_augmentation(x: torch.Tensor, size: int) -> torch.Tensor:
    """The aux branch's augmentation: an independent random ``size`` crop per image (offsets
    0..h−size inclusive, kornia's ``RandomCrop``), then intensity ×(1 + 0.05·clamp(N(0,1), ±2)).
    (n c h w) float → (n c size size)."""
    return intensity(random_crop(x, size), AUX_INTENSITY_SCALE)


def batch_crop(obs: torch.Tensor, size: int, exclusive: bool) -> torch.Tensor:
    """The SAC batch's random crop, independent per image: offsets 0..h−size−1 when
    ``exclusive`` (cropping the last row and column off first makes the inclusive
    ``random_crop`` draw exactly the reference's range), else 0..h−size."""
    h, w = obs.shape[-2:]
    if h == size and w == size:
        return obs
    if exclusive:
        obs = obs[..., : h - 1, : w - 1]
    return random_crop(obs, size)


@register("agent", "sac")
class SAC(nn.Module):
    """SAC with auxiliary losses (described to them by a ``LossContext``, ``losses/auxiliary.py``).

    Args:
        observation_shape: (c h w) of one observation (9, 100, 100); supplied by the trainer.
        num_actions: action dimension A; supplied by the trainer. Actions lie in [−1, 1].
        device: where the networks live and batches are moved to.
        encoder: factory called as ``encoder(in_channels=c, image_size=image_size)`` (twice:
            critic and actor), returning a module with ``forward(x, detach_conv=False)`` (x in
            [0, 1]), ``output_dim`` and ``copy_conv_weights_from(other)``; default
            :class:`PixelEncoder`, which initializes itself as the reference's ``weight_init``.
        aux_losses: auxiliary objectives (gin passes instances); each is
            ``setup(self.loss_context)`` after the networks are built and initialized (so MLR's
            ``reinit_encoder_linear`` re-draws the critic encoder's fc afterwards,
            docs/faithfulness.md#dmc-initialisation). Metrics are recorded as
            ``<name>_<metric>`` (``mlr_cosine``). Empty: the baseline.
        hidden_dim: width of the actor trunk and both Q MLPs (1024).
        discount: γ (0.99). not_done comes from replay (always 1 on DMC).
        init_temperature: initial α; log α is learned (0.1).
        actor_lr, critic_lr: Adam lrs (1e-3; 2e-4 for cheetah).
        actor_beta, critic_beta: Adam β1 of actor and critic (0.9; β2 0.999).
        alpha_lr, alpha_beta: Adam lr and β1 of log α (1e-4, 0.5).
        actor_log_std_min, actor_log_std_max: log-std range of the policy (−10, 2).
        actor_update_period: actor + α update when ``step % period == 0`` (2 agent steps: the
            reference's ``actor_update_freq`` 2, multiplied by the action repeat in env steps).
        target_update_period: target EMAs when ``step % period == 0`` (2 agent steps).
        critic_tau: EMA weight on the online Q1/Q2 (0.01): target ← τ·online + (1−τ)·target.
        encoder_tau: EMA weight on the online critic encoder for the critic target's (0.05).
        image_size: crop size the networks see (84): random crops when training, the center
            crop (offset (100 − 84)//2 = 8) when acting, random crop + intensity for aux losses.
        crop_offsets_exclusive: the SAC batch's crop offsets are 0..h−size−1 (True, 0..15: the
            reference's numpy ``randint(0, 16)`` never uses 16) or 0..h−size (False).
        aux_lr, aux_lr_scale: the aux optimizer's lr is ``aux_lr_scale·aux_lr`` (the yamls'
            ``auxiliary_task_lr`` 1e-3, or 2e-4 for cheetah, times the hard-coded 0.5).
            Adam betas (0.9, 0.999), no weight decay. Each loss's parameters follow the lr
            schedule the loss declares (``lr_warmup``: the inverse-sqrt warm-up of
            :func:`~mlr_registry.agents.lr_schedule.inverse_sqrt_warmup` over that many updates,
            0 = constant; ``losses.mlr.lr_warmup = 6000`` in gin/dmc_mlr.gin); the critic
            encoder follows the longest warm-up among the losses. The ``aux_lr`` metric is the
            lr of the group that holds the encoder.
        aux_max_grad_norm: grad-norm clip over all aux-optimizer parameters as one, the critic
            encoder included (10; the DMC reference clips its MTM module whole, so the losses'
            ``grad_clip_groups`` do not apply here).
        aux_encoder_extra_adam: CURL QUIRK: CURL's ``encoder_optimizer`` (critic encoder) and
            ``cpc_optimizer`` (W + the same encoder) both step on the contrastive gradient, so
            the encoder takes two Adam steps per aux update. True adds that second Adam over the
            critic encoder (betas (0.9, 0.999), the aux optimizer's current lr), stepped right
            after the aux optimizer on the same (clipped) gradients. False (MLR): one step.
        precision: "fp32" (default: the reference's arithmetic), "bf16" (autocast around every
            network forward of update and act, aux losses' included; float32 master weights,
            Q values, log-probabilities and losses) or "auto" (bf16 on a bf16-capable GPU). Not
            in the paper: the GPU fast path of :mod:`mlr_registry.fast_path`.
        compile: ``torch.compile`` the encoders, Q MLPs, actor trunk and aux losses' networks in
            place (False by default; True; "auto" = on CUDA only; the policy's sampling stays
            eager); falls back to eager with a warning where unsupported. compile_mode:
            torch.compile's mode ("default"; "reduce-overhead" adds CUDA graphs).
            compile_scope: "networks" (those modules, in place) or "update" (whole-update
            capture: the critic, aux, actor + α and target-EMA phases each compiled whole,
            their constant-lr Adam steps included; the aux Adam, whose lr warms up, steps eagerly).
        channels_last: conv weights (and so activations) in channels-last memory (False by
            default; True; "auto" = on CUDA only): the same values, no NCHW<->NHWC conversions
            around cuDNN's convolutions.
        cudnn_benchmark: cuDNN times its convolution algorithms per input shape and keeps the
            fastest (False by default; True; "auto" = on CUDA only; process-wide).
    """

    discrete_actions = False
    projector = None  # SAC exposes no projector: MLR on DMC builds its own MLP (projector="mlp")

    def __init__(self, observation_shape: Sequence[int], num_actions: int, device: str = "cpu",
                 encoder: Callable[..., nn.Module] = PixelEncoder,
                 aux_losses: Sequence[AuxiliaryLoss] = (),
                 hidden_dim: int = 1024, discount: float = 0.99, init_temperature: float = 0.1,
                 actor_lr: float = 1e-3, critic_lr: float = 1e-3, actor_beta: float = 0.9,
                 critic_beta: float = 0.9, alpha_lr: float = 1e-4, alpha_beta: float = 0.5,
                 actor_log_std_min: float = -10.0, actor_log_std_max: float = 2.0,
                 actor_update_period: int = 2, target_update_period: int = 2,
                 critic_tau: float = 0.01, encoder_tau: float = 0.05, image_size: int = 84,
                 crop_offsets_exclusive: bool = True, aux_lr: float = 1e-3, aux_lr_scale: float = 0.5,
                 aux_max_grad_norm: float = 10.0,
                 aux_encoder_extra_adam: bool = False, precision: str = "fp32",
                 compile: bool | str = False, compile_mode: str = "default",  # noqa: A002 - gin name
                 compile_scope: str = "networks", channels_last: bool | str = False,
                 cudnn_benchmark: bool | str = False):
        super().__init__()
        if len(observation_shape) != 3:
            raise ConfigError(f"sac.observation_shape = {tuple(observation_shape)}; expected (c, h, w)")
        c, h, w = (int(s) for s in observation_shape)
        check_range("sac.num_actions", num_actions, 1)
        check_range("sac.hidden_dim", hidden_dim, 1)
        check_range("sac.discount", discount, 0, 1)
        check_range("sac.init_temperature", init_temperature, 0, low_open=True)
        for name, value in (("actor_lr", actor_lr), ("critic_lr", critic_lr), ("alpha_lr", alpha_lr),
                            ("aux_lr", aux_lr), ("aux_lr_scale", aux_lr_scale),
                            ("aux_max_grad_norm", aux_max_grad_norm)):
            check_range(f"sac.{name}", value, 0, low_open=True)
        for name, value in (("actor_beta", actor_beta), ("critic_beta", critic_beta),
                            ("alpha_beta", alpha_beta)):
            check_range(f"sac.{name}", value, 0, 1, high_open=True)
        if not actor_log_std_min < actor_log_std_max:
            raise ConfigError(f"sac.actor_log_std_min = {actor_log_std_min} must be below "
                              f"sac.actor_log_std_max = {actor_log_std_max}")
        check_range("sac.actor_update_period", actor_update_period, 1)
        check_range("sac.target_update_period", target_update_period, 1)
        check_range("sac.critic_tau", critic_tau, 0, 1, low_open=True)
        check_range("sac.encoder_tau", encoder_tau, 0, 1, low_open=True)
        check_range("sac.image_size", image_size, 1, min(h, w))
        if crop_offsets_exclusive and (h, w) != (image_size, image_size) and min(h, w) - 1 < image_size:
            raise ConfigError(f"sac.crop_offsets_exclusive = True needs both observation sides above "
                              f"image_size = {image_size} (got {h}x{w}); set it False or match the sizes")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"sac.device = {device!r} is not a torch device ({exc})") from None
        self.observation_shape = (c, h, w)
        self.num_actions = int(num_actions)
        self.discount = float(discount)
        self.actor_update_period, self.target_update_period = actor_update_period, target_update_period
        self.critic_tau, self.encoder_tau = float(critic_tau), float(encoder_tau)
        self.image_size = int(image_size)
        self.crop_offsets_exclusive = bool(crop_offsets_exclusive)
        self.aux_max_grad_norm = float(aux_max_grad_norm)

        self._build_networks(encoder, c, int(hidden_dim), float(init_temperature),
                             float(actor_log_std_min), float(actor_log_std_max))
        self.loss_context = LossContext(
            encoder=self.critic.encoder, augment=functools.partial(aux_augmentation, size=self.image_size),
            latent_dim=self.latent_dim, latent_shape=self.latent_shape,
            observation_shape=self.observation_shape, num_actions=self.num_actions, discrete_actions=False,
            device=self.device, projector=None,
            crop=functools.partial(batch_crop, size=self.image_size, exclusive=self.crop_offsets_exclusive))
        # metric prefixes: mlr_loss, mlr_cosine
        self.aux_losses, self.aux_names = attach(aux_losses, self.loss_context)
        self.to(self.device)
        self.aux_targets = [target for loss in self.aux_losses for target in loss.target_networks()]

        self._build_optimizers(actor_lr, critic_lr, actor_beta, critic_beta, alpha_lr, alpha_beta,
                               aux_lr_scale * aux_lr, aux_encoder_extra_adam)
        self._build_fast_path(precision, compile, compile_mode, compile_scope, channels_last, cudnn_benchmark)

    def _build_networks(self, encoder: Callable[..., nn.Module], c: int, hidden_dim: int, init_temperature: float,
                        actor_log_std_min: float, actor_log_std_max: float) -> None:
        """Critic, actor, target critic and log α, on the device (in this order: it fixes the
        initial weights' random draws)."""
        # Networks: the critic owns THE encoder; the actor's convs are tied to it.
        critic_encoder = encoder(in_channels=c, image_size=self.image_size)
        actor_encoder = encoder(in_channels=c, image_size=self.image_size)
        latent_dim = self._check_encoder(critic_encoder)
        if not hasattr(actor_encoder, "copy_conv_weights_from"):
            raise ConfigError(f"sac.encoder {type(actor_encoder).__name__} has no copy_conv_weights_from(other); "
                              "SAC ties the actor's convs to the critic's")
        actor_encoder.copy_conv_weights_from(critic_encoder)
        self.critic = Critic(critic_encoder, latent_dim, self.num_actions, hidden_dim)
        self.actor = Actor(actor_encoder, latent_dim, self.num_actions, hidden_dim,
                           actor_log_std_min, actor_log_std_max)
        # A full copy, made before aux setup: MLR's re-init of the critic fc does not reach it.
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.target_entropy = -float(self.num_actions)
        self.to(self.device)

    def _build_optimizers(self, actor_lr: float, critic_lr: float, actor_beta: float, critic_beta: float,
                          alpha_lr: float, alpha_beta: float, aux_lr: float, aux_encoder_extra_adam: bool) -> None:
        """The actor's, critic's and α's Adams; with aux losses the aux Adam (``aux_lr`` already
        scaled by ``aux_lr_scale``), one parameter group per warm-up the losses declare, and its
        schedule."""
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=actor_lr, betas=(actor_beta, 0.999))
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=critic_lr,
                                                 betas=(critic_beta, 0.999))
        self.log_alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=alpha_lr, betas=(alpha_beta, 0.999))
        # The aux Adam holds the aux losses' parameters AND the critic encoder (the reference's
        # MTM.parameters() contains critic.encoder): the encoder is stepped by two Adams.
        self.aux_parameters: list[nn.Parameter] = []
        self.aux_optimizer: torch.optim.Optimizer | None = None
        self.aux_scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.aux_encoder_optimizer: torch.optim.Optimizer | None = None
        if len(self.aux_losses) > 0:
            # Group 0: the losses with the longest warm-up, then the critic encoder; with one
            # loss (or one warm-up) a single group, as the reference's one Adam.
            warmups = [int(loss.lr_warmup) for loss in self.aux_losses]
            order = [max(warmups)] + [w for w in dict.fromkeys(warmups) if w != max(warmups)]
            groups: dict[int, list[nn.Parameter]] = {w: [] for w in order}
            seen: set[int] = set()
            members = [(w, p) for loss, w in zip(self.aux_losses, warmups, strict=True) for p in loss.parameters()]
            members += [(order[0], p) for p in self.critic.encoder.parameters()]
            for warmup, p in members:
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    groups[warmup].append(p)
            group_warmups = [w for w in order if groups[w]]
            self.aux_parameters = [p for w in group_warmups for p in groups[w]]
            self.aux_optimizer = torch.optim.Adam([{"params": groups[w]} for w in group_warmups], lr=aux_lr,
                                                  betas=(0.9, 0.999))
            self.aux_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.aux_optimizer, [warmup_schedule(w) for w in group_warmups])
            if aux_encoder_extra_adam:
                self.aux_encoder_optimizer = torch.optim.Adam(self.critic.encoder.parameters(),
                                                              lr=aux_lr, betas=(0.9, 0.999))

    def _build_fast_path(self, precision: str, compile: bool | str, compile_mode: str,  # noqa: A002 - gin name
                         compile_scope: str, channels_last: bool | str, cudnn_benchmark: bool | str) -> None:
        # GPU fast path (off by default): bf16 autocast; compiled networks (no RNG inside them,
        # so the actor's Gaussian sample stays eager) or compiled update phases.
        self.fast_path = FastPath("sac", self.device, precision, compile, compile_mode,
                                  compile_scope=compile_scope, channels_last=channels_last,
                                  cudnn_benchmark=cudnn_benchmark)
        self.fast_path.apply_memory_format(self)  # before anything is compiled or steps
        self.fast_path.compile_modules([
            self.critic.encoder, self.critic.q1, self.critic.q2, self.actor.encoder, self.actor.trunk,
            self.critic_target.encoder, self.critic_target.q1, self.critic_target.q2,
            *compile_targets(self.aux_losses)])
        step = self.fast_path.compile_step  # each phase itself unless compile_scope = 'update'
        self._critic, self._aux = step(self._critic_phase), step(self._aux_phase)
        self._actor_and_alpha, self._targets = step(self._actor_and_alpha_phase), step(self._targets_phase)
        self._act_one = step(self._policy)  # acting on one observation, the training loop's call
        self._greedy_one = step(self._mean_policy)  # the same for evaluation (compiled when first used)
        self.fast_path.protect(self.checkpoint_state, self.load_checkpoint_state)

    def _check_encoder(self, encoder: nn.Module) -> int:
        """The encoder's output size, checked with a dummy forward at the crop size."""
        with torch.no_grad():
            out = encoder(torch.zeros(1, self.observation_shape[0], self.image_size, self.image_size))
        actual = int(out.shape[-1])
        declared = getattr(encoder, "output_dim", actual)
        if out.dim() != 2 or declared != actual:
            raise ConfigError(f"sac.encoder {type(encoder).__name__} maps ({self.observation_shape[0]}, "
                              f"{self.image_size}, {self.image_size}) to {tuple(out.shape[1:])} but declares "
                              f"output_dim {declared}")
        return actual

    # --- what the aux losses' context holds ----------------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        """The critic's encoder: the one the RL loss and auxiliary losses train."""
        return self.critic.encoder

    @property
    def latent_dim(self) -> int:
        return int(self.critic.encoder.output_dim)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(getattr(self.critic.encoder, "output_shape", (self.latent_dim,)))

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The aux branch's augmentation (:func:`aux_augmentation` at ``image_size``)."""
        return aux_augmentation(x, self.image_size)

    def crop(self, obs: torch.Tensor) -> torch.Tensor:
        """The SAC batch's random crop (:func:`batch_crop` at ``image_size``)."""
        return batch_crop(obs, self.image_size, self.crop_offsets_exclusive)

    # --- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, epsilon: float = 0.0, greedy: bool = False) -> torch.Tensor:
        """Actions in [−1, 1] for uint8 ``obs`` (b c h w) → (b A), or (c h w) → (A).

        Center crop to image_size, /255, actor: greedy → tanh(mu) (evaluation), else a tanh(pi)
        sample (training collection). ``epsilon`` is ignored (the trainer's uniform-random warmup
        replaces ε-greedy for SAC).
        """
        obs = torch.as_tensor(obs, device=self.device)
        single = obs.dim() == 3
        obs = obs[None] if single else obs
        # One observation runs compiled on the fast path (a training sample's Gaussian draw then
        # comes from the backend's RNG, as the update's draws do); batches (evaluation) run
        # eagerly rather than compile once per batch size.
        if greedy:  # no random draw, as the reference's select_action
            policy = self._greedy_one if obs.shape[0] == 1 else self._mean_policy
        else:
            policy = self._act_one if obs.shape[0] == 1 else self._policy
        out = self.fast_path.run_stateless(policy, obs)
        return out[0] if single else out

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 obs (b c h w) -> the center crop in [0, 1], (b c s s)."""
        return center_crop(obs, self.image_size).float() / 255.0

    def _policy(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 obs (b c h w) -> a tanh(pi) sample (b A), from the center crop."""
        with self.fast_path.autocast():
            _, action, _, _ = self.actor(self._features(obs))
        return action

    def _mean_policy(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 obs (b c h w) -> tanh(mu) (b A), from the center crop, without drawing the noise
        that a sample needs (evaluation leaves torch's random streams as they were)."""
        with self.fast_path.autocast():
            mu, _ = self.actor.distribution(self._features(obs))
        return torch.tanh(mu)

    # --- learning --------------------------------------------------------------------------
    def td_target(self, next_obs: torch.Tensor, reward: torch.Tensor, not_done: torch.Tensor) -> torch.Tensor:
        """y = r + not_done·γ·(min(Q1', Q2')(s', a') − α·log π(a'|s')), a' ~ π(s'), Q' from the
        critic target; no gradient. next_obs (b c h w) in [0, 1]; reward, not_done (b)."""
        with torch.no_grad(), self.fast_path.autocast():
            _, next_action, next_log_pi, _ = self.actor(next_obs)
            q1, q2 = self.critic_target(next_obs, next_action)
            target_v = torch.min(q1, q2) - self.alpha * next_log_pi
            return reward + not_done * self.discount * target_v

    def update(self, transitions: Any, sequences: Batch | None, step: int) -> LazyMetrics:
        """One agent update (the reference's order: docs/faithfulness.md#dmc-optimisation).

        transitions: obs, next_obs (b c h w) uint8 uncropped, action (b A), reward (b),
            not_done (b) (attributes or mapping keys). sequences: the aux losses' batch (obs
            (b t c h w) uint8, action (b t A)) or None (no aux step). step: agent updates so far;
            actor/α and the target EMAs run when ``step % period == 0``.
        """
        return self.fast_path.run(self._update, transitions, sequences, step)

    def _update(self, transitions: Any, sequences: Batch | None, step: int) -> LazyMetrics:
        self.train()
        fields = [_field(transitions, name).to(self.device) for name in ("obs", "next_obs", "action", "reward",
                                                                         "not_done")]
        # 1. Critic: MSE of both Q heads to the soft TD target; the full encoder trains.
        self.critic_optimizer.zero_grad(set_to_none=True)
        obs, tensors = self._critic(*fields)

        # 2. Auxiliary losses: their own Adam (critic encoder included), clip, lr schedule. The
        # optimizer steps run eagerly: the lr changes every step of the warmup (a compiled step
        # would recompile for each new value).
        aux_metrics: dict[str, Any] = {}
        if self.aux_optimizer is not None and sequences is not None:
            lr = self.aux_optimizer.param_groups[0]["lr"]
            self.aux_optimizer.zero_grad(set_to_none=True)
            aux_total, aux_metrics, tensors["aux_grad_norm"] = self._aux(sequences.to(self.device))
            aux_metrics["aux_lr"] = float(lr)  # the lr of this step
            self.aux_optimizer.step()
            if self.aux_encoder_optimizer is not None:  # CURL's second encoder step, same lr
                self.aux_encoder_optimizer.param_groups[0]["lr"] = lr
                self.aux_encoder_optimizer.step()
            self.aux_scheduler.step()
            tensors["aux_loss"] = aux_total

        # 3. Actor and temperature, on the same crops, conv features detached (every 2nd step).
        if step % self.actor_update_period == 0:
            self.actor_optimizer.zero_grad(set_to_none=True)
            self.log_alpha_optimizer.zero_grad(set_to_none=True)
            # The actor loss also reaches the critic's Q heads and encoder head. The reference lets
            # those gradients pile onto the critic step's and discards them at the next critic
            # zero_grad, unread; dropping the stale ones first changes nothing, and under CUDA
            # graphs it must: they live in an earlier phase's graph memory, which is reused.
            self.critic_optimizer.zero_grad(set_to_none=True)
            tensors.update(self._actor_and_alpha(obs))

        # 4. Target EMAs (every 2nd step): critic target Q nets and encoder, aux losses' targets.
        if step % self.target_update_period == 0:
            self._targets()

        tensors["alpha"] = self.alpha.detach()
        return LazyMetrics(aux_metrics, tensors)  # still on the device: no sync until read

    # The update's phases: tensor work only, each one compiled unit under compile_scope 'update'.
    def _critic_phase(self, obs: torch.Tensor, next_obs: torch.Tensor, action: torch.Tensor,
                      reward: torch.Tensor, not_done: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Crops, TD target, critic loss, backward, critic Adam step → (cropped obs in [0, 1]
        (b c 84 84) for the actor, metric tensors)."""
        obs = self.crop(obs).float() / 255.0  # (b c 84 84)
        next_obs = self.crop(next_obs).float() / 255.0
        action, reward, not_done = action.float(), reward.float().reshape(-1), not_done.float().reshape(-1)
        target_q = self.td_target(next_obs, reward, not_done)
        with self.fast_path.autocast():  # networks in bf16 on the fast path; Q values and losses fp32
            q1, q2 = self.critic(obs, action)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        critic_loss.backward()
        self.critic_optimizer.step()
        return obs, {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean()}

    def _aux_phase(self, sequences: Batch) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
        """Aux losses, backward, clip → (summed loss, their metrics, pre-clip grad norm)."""
        aux_total = torch.zeros((), device=self.device)
        aux_metrics: dict[str, Any] = {}
        for loss, name in zip(self.aux_losses, self.aux_names, strict=True):
            with self.fast_path.autocast():
                output = checked_output(loss, loss(sequences, self.loss_context))
            aux_total = aux_total + output.total()
            aux_metrics.update(prefixed(name, output.metrics))
        aux_total.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.aux_parameters, self.aux_max_grad_norm)
        return aux_total.detach(), aux_metrics, norm

    def _actor_and_alpha_phase(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Actor loss and step, then the temperature's, on ``obs`` (b c 84 84) in [0, 1]."""
        with self.fast_path.autocast():
            _, pi, log_pi, log_std = self.actor(obs, detach_conv=True)
            actor_q1, actor_q2 = self.critic(obs, pi, detach_conv=True)
        actor_loss = (self.alpha.detach() * log_pi - torch.min(actor_q1, actor_q2)).mean()
        actor_loss.backward()
        self.actor_optimizer.step()
        alpha_loss = (self.alpha * (-log_pi - self.target_entropy).detach()).mean()
        alpha_loss.backward()
        self.log_alpha_optimizer.step()
        return {"actor_loss": actor_loss.detach(), "alpha_loss": alpha_loss.detach(),
                "entropy": -log_pi.detach().mean(), "log_std_mean": log_std.detach().mean()}

    def _targets_phase(self) -> None:
        """The critic target's EMAs, then the targets each aux loss declares."""
        self.soft_update_targets()
        for target in self.aux_targets:
            target.update()

    @torch.no_grad()
    def soft_update_targets(self) -> None:
        """target ← τ·online + (1−τ)·target over parameters only (the reference's
        ``soft_update_params``): Q1/Q2 with critic_tau, the encoder with encoder_tau."""
        pairs = ((self.critic.q1, self.critic_target.q1, self.critic_tau),
                 (self.critic.q2, self.critic_target.q2, self.critic_tau),
                 (self.critic.encoder, self.critic_target.encoder, self.encoder_tau))
        for online, target, tau in pairs:
            ema_update(online, target, tau)

    # --- checkpoints -----------------------------------------------------------------------
    def aux_rng_state(self) -> dict[str, torch.Tensor]:
        """The aux losses' own random streams (seeded maskers), keyed ``"<loss index>|<device>"``."""
        return rng_states(self.aux_losses)

    def load_aux_rng_state(self, states: dict[str, torch.Tensor]) -> None:
        load_rng_states(self.aux_losses, states)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything to resume learning: networks (actor, critic, critic target, log α, aux
        losses and their targets), the four optimizers and the aux lr schedule."""
        state: dict[str, Any] = {
            "model": self.state_dict(), "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "log_alpha_optimizer": self.log_alpha_optimizer.state_dict()}
        if self.aux_optimizer is not None:
            state["aux_optimizer"] = self.aux_optimizer.state_dict()
            state["aux_scheduler"] = self.aux_scheduler.state_dict()
        if self.aux_encoder_optimizer is not None:
            state["aux_encoder_optimizer"] = self.aux_encoder_optimizer.state_dict()
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.log_alpha_optimizer.load_state_dict(state["log_alpha_optimizer"])
        if self.aux_optimizer is not None:
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])
            self.aux_scheduler.load_state_dict(state["aux_scheduler"])
        if self.aux_encoder_optimizer is not None:
            self.aux_encoder_optimizer.load_state_dict(state["aux_encoder_optimizer"])
