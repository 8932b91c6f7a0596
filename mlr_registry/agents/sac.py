"""CURL-style SAC from pixels, the DMC agent of MLR and of its baseline (docs/faithfulness.md#dmc-sac-agent).

The critic owns THE encoder (the one auxiliary losses shape); the actor has its own encoder whose
convs are tied to the critic's (its fc + LayerNorm are its own). Auxiliary losses (MLR, or none
for the baseline) come by gin and train under their own Adam, which also holds the critic encoder
(:mod:`~mlr_registry.agents.sac_aux`). :meth:`SAC.update` reads top to bottom in the reference's
order: critic, auxiliary losses, actor + temperature (every 2nd step), target EMAs (every 2nd step).
Every encoder takes float pixels in [0, 1]: this agent divides its uint8 batches by 255 (the
reference divides inside the encoder: the same arithmetic).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.agents.augmentation import aux_augmentation, batch_crop, center_crop
from mlr_registry.agents.metrics import LazyMetrics
from mlr_registry.agents.sac_arguments import check_arguments
from mlr_registry.agents.sac_aux import aux_backward, aux_optimizers, step_aux_optimizers
from mlr_registry.agents.sac_networks import Actor, Critic, actor_and_critics, soft_update_critic, tanh_gaussian  # noqa: F401
from mlr_registry.batch import Batch
from mlr_registry.encoders.pixel_encoder import PixelEncoder
from mlr_registry.losses.auxiliary import AuxiliaryLoss, LossContext, attach, load_rng_states, rng_states
from mlr_registry.registry import register


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
        aux_lr, aux_lr_scale: the aux Adam's lr is ``aux_lr_scale·aux_lr`` (the yamls'
            ``auxiliary_task_lr`` 1e-3, or 2e-4 for cheetah, times the hard-coded 0.5); betas
            (0.9, 0.999), no weight decay. Each loss's parameters follow the warm-up it declares
            (``lr_warmup``: :func:`~mlr_registry.agents.lr_schedule.inverse_sqrt_warmup` over that
            many updates, 0 = constant; ``losses.mlr.lr_warmup = 6000`` in gin/dmc_mlr.gin), the
            critic encoder the longest. The ``aux_lr`` metric is the encoder's group's lr.
        aux_max_grad_norm: grad-norm clip over all aux-optimizer parameters as one, the critic
            encoder included (10; the DMC reference clips its MTM module whole, so the losses'
            ``grad_clip_groups`` do not apply here).
        aux_encoder_extra_adam: CURL QUIRK: CURL's ``encoder_optimizer`` (critic encoder) and
            ``cpc_optimizer`` (W + the same encoder) both step on the contrastive gradient. True
            adds that second Adam over the critic encoder (betas (0.9, 0.999), the aux Adam's lr),
            stepped right after the aux Adam on the same clipped gradients. False (MLR): one step.
    """

    discrete_actions = False
    # How it executes (precision, compilation, memory format) is not this class's business: the
    # trainer's Execution (mlr_registry/execution/) uses what it declares: networks(), the update's
    # phases (tensor work only; the aux Adam, whose lr warms up, steps outside), acting, rollback.
    compiled_phases = ("_critic_phase", "_aux_phase", "_actor_and_alpha_phase", "_targets_phase")
    acting_phases = ("_policy", "_mean_policy")
    rollback_state = ("checkpoint_state", "load_checkpoint_state")
    projector = None  # SAC exposes no projector: MLR on DMC builds its own MLP (projector="mlp")

    def __init__(self, observation_shape: Sequence[int], num_actions: int, device: str = "cpu",
                 encoder: Callable[..., nn.Module] = PixelEncoder, aux_losses: Sequence[AuxiliaryLoss] = (),
                 hidden_dim: int = 1024, discount: float = 0.99, init_temperature: float = 0.1,
                 actor_lr: float = 1e-3, critic_lr: float = 1e-3, actor_beta: float = 0.9, critic_beta: float = 0.9,
                 alpha_lr: float = 1e-4, alpha_beta: float = 0.5, actor_log_std_min: float = -10.0,
                 actor_log_std_max: float = 2.0, actor_update_period: int = 2, target_update_period: int = 2,
                 critic_tau: float = 0.01, encoder_tau: float = 0.05, image_size: int = 84,
                 crop_offsets_exclusive: bool = True, aux_lr: float = 1e-3, aux_lr_scale: float = 0.5,
                 aux_max_grad_norm: float = 10.0, aux_encoder_extra_adam: bool = False):
        super().__init__()
        (c, h, w), self.device = check_arguments(
            observation_shape, device, num_actions=num_actions, hidden_dim=hidden_dim, discount=discount,
            init_temperature=init_temperature, actor_lr=actor_lr, critic_lr=critic_lr, alpha_lr=alpha_lr,
            aux_lr=aux_lr, aux_lr_scale=aux_lr_scale, aux_max_grad_norm=aux_max_grad_norm, actor_beta=actor_beta,
            critic_beta=critic_beta, alpha_beta=alpha_beta, actor_log_std_min=actor_log_std_min,
            actor_log_std_max=actor_log_std_max, actor_update_period=actor_update_period,
            target_update_period=target_update_period, critic_tau=critic_tau, encoder_tau=encoder_tau,
            image_size=image_size, crop_offsets_exclusive=crop_offsets_exclusive)
        self.observation_shape, self.num_actions = (c, h, w), int(num_actions)
        self.discount, self.aux_max_grad_norm = float(discount), float(aux_max_grad_norm)
        self.actor_update_period, self.target_update_period = actor_update_period, target_update_period
        self.critic_tau, self.encoder_tau = float(critic_tau), float(encoder_tau)
        self.image_size, self.crop_offsets_exclusive = int(image_size), bool(crop_offsets_exclusive)

        # Critic, actor, critic target (a full copy made before the aux setup: MLR's re-init of the
        # critic fc does not reach it) and log α, on the device.
        self.critic, self.actor, self.critic_target = actor_and_critics(
            encoder, c, self.image_size, self.num_actions, int(hidden_dim), float(actor_log_std_min),
            float(actor_log_std_max))
        self.log_alpha = nn.Parameter(torch.tensor(math.log(float(init_temperature))))
        self.target_entropy = -float(self.num_actions)
        self.to(self.device)
        # What the aux losses' context holds; augment: random crop + intensity; crop: the SAC batch's.
        self.latent_dim = int(self.critic.encoder.output_dim)
        self.latent_shape = tuple(getattr(self.critic.encoder, "output_shape", (self.latent_dim,)))
        self.augment = functools.partial(aux_augmentation, size=self.image_size)
        self.crop = functools.partial(batch_crop, size=self.image_size, exclusive=self.crop_offsets_exclusive)
        self.loss_context = LossContext(
            encoder=self.critic.encoder, augment=self.augment, latent_dim=self.latent_dim,
            latent_shape=self.latent_shape, observation_shape=self.observation_shape, num_actions=self.num_actions,
            discrete_actions=False, device=self.device, projector=None, crop=self.crop)
        # metric prefixes: mlr_loss, mlr_cosine
        self.aux_losses, self.aux_names = attach(aux_losses, self.loss_context)
        self.to(self.device)
        self.aux_targets = [target for loss in self.aux_losses for target in loss.target_networks()]

        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=actor_lr, betas=(actor_beta, 0.999))
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=critic_lr, betas=(critic_beta, 0.999))
        self.log_alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=alpha_lr, betas=(alpha_beta, 0.999))
        # The aux Adam holds the aux losses' parameters AND the critic encoder (the reference's
        # MTM.parameters() contains critic.encoder): the encoder is stepped by two Adams.
        self.aux_parameters, self.aux_optimizer, self.aux_scheduler, self.aux_encoder_optimizer = aux_optimizers(
            self.aux_losses, self.critic.encoder, aux_lr_scale * aux_lr, aux_encoder_extra_adam)

    @property
    def encoder(self) -> nn.Module:
        """The critic's encoder: the one the RL loss and auxiliary losses train."""
        return self.critic.encoder

    def networks(self) -> list[nn.Module]:
        """The networks whose forward draws no random number (the policy's sample is outside)."""
        return [self.critic.encoder, self.critic.q1, self.critic.q2, self.actor.encoder, self.actor.trunk,
                self.critic_target.encoder, self.critic_target.q1, self.critic_target.q2]

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

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
        out = self._mean_policy(obs) if greedy else self._policy(obs)  # greedy: no random draw, as the reference
        return out[0] if single else out

    def _policy(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 obs (b c h w) -> a tanh(pi) sample (b A), from the center crop in [0, 1]."""
        _, action, _, _ = self.actor(center_crop(obs, self.image_size).float() / 255.0)
        return action

    def _mean_policy(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 obs (b c h w) -> tanh(mu) (b A), from the center crop in [0, 1], without drawing
        the noise that a sample needs (evaluation leaves torch's random streams as they were)."""
        mu, _ = self.actor.distribution(center_crop(obs, self.image_size).float() / 255.0)
        return torch.tanh(mu)

    # --- learning --------------------------------------------------------------------------
    def td_target(self, next_obs: torch.Tensor, reward: torch.Tensor, not_done: torch.Tensor) -> torch.Tensor:
        """y = r + not_done·γ·(min(Q1', Q2')(s', a') − α·log π(a'|s')), a' ~ π(s'), Q' from the
        critic target; no gradient. next_obs (b c h w) in [0, 1]; reward, not_done (b)."""
        with torch.no_grad():
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
        self.train()
        fields = [(transitions[name] if isinstance(transitions, Mapping) else getattr(transitions, name)).to(
            self.device) for name in ("obs", "next_obs", "action", "reward", "not_done")]
        # 1. Critic: MSE of both Q heads to the soft TD target; the full encoder trains.
        self.critic_optimizer.zero_grad(set_to_none=True)
        obs, tensors = self._critic_phase(*fields)

        # 2. Auxiliary losses: their own Adam (critic encoder included), clip, lr schedule; the
        # Adam steps outside the phase (its lr changes at every step of the warm-up).
        aux_metrics: dict[str, Any] = {}
        if self.aux_optimizer is not None and sequences is not None:
            self.aux_optimizer.zero_grad(set_to_none=True)
            aux_total, aux_metrics, tensors["aux_grad_norm"] = self._aux_phase(sequences.to(self.device))
            aux_metrics["aux_lr"] = step_aux_optimizers(self.aux_optimizer, self.aux_scheduler,
                                                        self.aux_encoder_optimizer)
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
            tensors.update(self._actor_and_alpha_phase(obs))

        # 4. Target EMAs (every 2nd step): critic target Q nets and encoder, aux losses' targets.
        if step % self.target_update_period == 0:
            self._targets_phase()

        tensors["alpha"] = self.alpha.detach()
        return LazyMetrics(aux_metrics, tensors)  # still on the device: no sync until read

    # The update's phases: tensor work only.
    def _critic_phase(self, obs: torch.Tensor, next_obs: torch.Tensor, action: torch.Tensor,
                      reward: torch.Tensor, not_done: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Crops, TD target, critic loss, backward, critic Adam step → (cropped obs in [0, 1]
        (b c 84 84) for the actor, metric tensors)."""
        obs = self.crop(obs).float() / 255.0  # (b c 84 84)
        next_obs = self.crop(next_obs).float() / 255.0
        action, reward, not_done = action.float(), reward.float().reshape(-1), not_done.float().reshape(-1)
        target_q = self.td_target(next_obs, reward, not_done)
        q1, q2 = self.critic(obs, action)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        critic_loss.backward()
        self.critic_optimizer.step()
        return obs, {"critic_loss": critic_loss.detach(), "q_mean": q1.detach().mean()}

    def _aux_phase(self, sequences: Batch) -> tuple[torch.Tensor, dict[str, Any], torch.Tensor]:
        """Aux losses, backward, clip (:func:`aux_backward`) → (summed loss, metrics, pre-clip norm)."""
        return aux_backward(self.aux_losses, self.aux_names, sequences, self.loss_context, self.aux_parameters,
                            self.aux_max_grad_norm)

    def _actor_and_alpha_phase(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Actor loss and step, then the temperature's, on ``obs`` (b c 84 84) in [0, 1]."""
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
        """The critic target's EMAs (:func:`soft_update_critic`), then each aux loss's targets."""
        soft_update_critic(self.critic, self.critic_target, self.critic_tau, self.encoder_tau)
        for target in self.aux_targets:
            target.update()

    # --- checkpoints -----------------------------------------------------------------------
    def aux_rng_state(self) -> dict[str, torch.Tensor]:
        """The aux losses' own random streams (seeded maskers), keyed ``"<loss index>|<device>"``."""
        return rng_states(self.aux_losses)

    def load_aux_rng_state(self, states: dict[str, torch.Tensor]) -> None:
        load_rng_states(self.aux_losses, states)

    def _stateful(self) -> dict[str, Any]:
        """The optimizers and the aux lr schedule, by checkpoint key (the aux ones only when built)."""
        named = {"actor_optimizer": self.actor_optimizer, "critic_optimizer": self.critic_optimizer,
                 "log_alpha_optimizer": self.log_alpha_optimizer, "aux_optimizer": self.aux_optimizer,
                 "aux_scheduler": self.aux_scheduler, "aux_encoder_optimizer": self.aux_encoder_optimizer}
        return {key: value for key, value in named.items() if value is not None}

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything to resume learning: networks (actor, critic, critic target, log α, aux
        losses and their targets) as ``"model"``, the four optimizers and the aux lr schedule."""
        return {"model": self.state_dict(), **{key: value.state_dict() for key, value in self._stateful().items()}}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        for key, value in self._stateful().items():
            value.load_state_dict(state[key])
