"""BBF, "Bigger, Better, Faster" (Schwarzer et al., ICML 2023): a modern base agent for
auxiliary losses on Atari-100k (docs/bbf.md).

C51 (51 atoms on [−10, 10]) + dueling + double DQN without noisy nets, on BBF's wide Impala
encoder and a 2048-wide head, trained by AdamW with weight decay on shift+intensity augmented
frames. Its target network is an EMA of the online one (τ = 0.005), acts in its place, and
gives SPR's targets. The n-step horizon and the discount are annealed after every reset
(:mod:`~mlr_registry.agents.annealing`), and every 20,000 env steps the network is reset with
shrink-and-perturb (:mod:`~mlr_registry.agents.resets`). Auxiliary losses come by gin (BBF:
``losses.spr``; MLR's loss in its place for MLR on BBF) and are added to the RL loss.
:meth:`BBF.update` reads top to bottom as one gradient step.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.agents.annealing import Annealing
from mlr_registry.agents.augmentation import Augmentation
from mlr_registry.agents.bbf_head import BBFHead
from mlr_registry.agents.distributional import make_support, project_distribution
from mlr_registry.agents.exploration import epsilon_greedy
from mlr_registry.agents.metrics import LazyMetrics
from mlr_registry.agents.n_step import n_step_returns
from mlr_registry.agents.resets import ResetSchedule, check_parts, reset_parts
from mlr_registry.batch import Batch
from mlr_registry.encoders.impala_cnn import ImpalaCNN
from mlr_registry.encoders.output_size import checked_output_dim
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.losses.auxiliary import (
    AuxiliaryLoss,
    LossContext,
    attach,
    checked_output,
    constant_lr,
    load_rng_states,
    prefixed,
    rng_states,
)
from mlr_registry.registry import register
from mlr_registry.target_network import ema_update

PRIORITY_EPS = 1e-10  # BBF: priority = sqrt(loss + 1e-10); the replay's alpha 0.5 takes the root


def adamw(parameters: Sequence[nn.Parameter], lr: float, eps: float, weight_decay: float) -> torch.optim.AdamW:
    """BBF's ``create_scaling_optimizer``: AdamW, decay only on parameters that are not vectors
    (optax's mask ``ndim != 1``: kernels decay, biases do not)."""
    decayed = [p for p in parameters if p.ndim != 1]
    plain = [p for p in parameters if p.ndim == 1]
    return torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=lr, eps=eps, betas=(0.9, 0.999))


@register("agent", "bbf")
class BBF(nn.Module):
    """BBF with auxiliary losses (described to them by a ``LossContext``, ``losses/auxiliary.py``).

    Args:
        observation_shape, num_actions: supplied by the trainer, as for ``agents.rainbow``.
        encoder: factory ``encoder(in_channels=c)`` → (n c h w) → (n d) module with
            ``output_dim`` and ``output_shape``; default :class:`ImpalaCNN` (width scale 4).
        aux_losses: auxiliary objectives (BBF: ``[losses.spr]`` reading this agent's target
            network and latent); each ``lr_warmup`` must be 0. Their declared targets follow by
            EMA after the optimizer step, as this agent's own.
        n_atoms, v_min, v_max: C51 support (51 atoms on [−10, 10]).
        hidden_size: width of the head's projection (2048, BBF's ``hidden_dim``).
        dueling, double_dqn: dueling head and double-DQN bootstrap (both on).
        max_update_horizon, update_horizon, min_discount, discount, anneal_period: the
            annealing of n (10 → 3) and γ (0.97 → 0.997) over 10,000 updates after each reset
            (:class:`~mlr_registry.agents.annealing.Annealing`). The replay's sequences must hold
            ``max_update_horizon`` steps beyond the first.
        learning_rate, adam_eps, weight_decay: AdamW (1e-4, 1.5e-4, 0.1 on non-vector params).
        target_tau: EMA step of the target network after every update (0.005).
        target_action_selection: act (training and evaluation) with the target network (on).
        reset_every, no_resets_after: resets every 20,000 env steps while the next one still
            falls within 100,000 (:class:`~mlr_registry.agents.resets.ResetSchedule`); 0: none.
        shrink_perturb: the parts that keep shrink·θ + perturb·θ_fresh at a reset ("encoder",
            and e.g. "aux_losses.0.transition_model"); every other part ("head",
            "aux_losses.<i>.<module>") is drawn afresh. :meth:`parts` lists them.
        shrink_factor, perturb_factor: 0.5 and 0.5.
        augment: shift (replicate pad 4) + intensity (0.05) on every training branch (on).
        bootstrap_one_step_early: QUIRK of BBF's replay, faithful default: bootstrap from the
            observation n − 1 steps ahead, still with γ^n, and miss a done on the n-th
            transition (:func:`~mlr_registry.agents.n_step.n_step_returns`). False: n steps.
        device: where the networks live and batches are moved to.
    """

    discrete_actions = True
    compiled_phases = ("_learn_phase",)
    acting_phases = ("_greedy_actions",)
    rollback_state = ("checkpoint_state", "load_checkpoint_state")

    def __init__(self, observation_shape: Sequence[int], num_actions: int,
                 encoder: Callable[..., nn.Module] = ImpalaCNN, aux_losses: Sequence[AuxiliaryLoss] = (),
                 n_atoms: int = 51, v_min: float = -10.0, v_max: float = 10.0, hidden_size: int = 2048,
                 dueling: bool = True, double_dqn: bool = True, max_update_horizon: int = 10,
                 update_horizon: int = 3, min_discount: float = 0.97, discount: float = 0.997,
                 anneal_period: int = 10_000, learning_rate: float = 1e-4, adam_eps: float = 1.5e-4,
                 weight_decay: float = 0.1, target_tau: float = 0.005, target_action_selection: bool = True,
                 reset_every: int = 20_000, no_resets_after: int = 100_000,
                 shrink_perturb: Sequence[str] = ("encoder",), shrink_factor: float = 0.5,
                 perturb_factor: float = 0.5, augment: bool = True, bootstrap_one_step_early: bool = True,
                 device: str = "cpu"):
        super().__init__()
        if len(observation_shape) != 3:
            raise ConfigError(f"bbf.observation_shape = {tuple(observation_shape)}; expected (c, h, w)")
        check_range("bbf.num_actions", num_actions, 1)
        check_range("bbf.n_atoms", n_atoms, 2)
        if not v_min < v_max:
            raise ConfigError(f"bbf.v_min = {v_min} must be below bbf.v_max = {v_max}")
        check_range("bbf.hidden_size", hidden_size, 1, integer=True)
        for name, value in (("learning_rate", learning_rate), ("adam_eps", adam_eps), ("target_tau", target_tau)):
            check_range(f"bbf.{name}", value, 0, 1, low_open=True)
        check_range("bbf.weight_decay", weight_decay, 0)
        check_range("bbf.shrink_factor", shrink_factor, 0, 1)
        check_range("bbf.perturb_factor", perturb_factor, 0, 1)
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self.num_actions = int(num_actions)
        self.annealing = Annealing(max_update_horizon, update_horizon, min_discount, discount, anneal_period)
        self.double_dqn, self.target_tau = double_dqn, float(target_tau)
        self.target_action_selection = target_action_selection
        self.use_augmentation, self.bootstrap_one_step_early = augment, bootstrap_one_step_early
        self.resets = ResetSchedule(reset_every, no_resets_after)
        self.shrink_perturb = tuple(shrink_perturb)
        self.shrink_factor, self.perturb_factor = float(shrink_factor), float(perturb_factor)
        self.device = torch.device(device)
        self._augmentation = Augmentation()

        # Online network: encoder → head (projection, ReLU, dueling C51); target: its EMA copy.
        self.encoder = encoder(in_channels=self.observation_shape[0])
        latent_dim = checked_output_dim(self.encoder, self.observation_shape)
        self.head = BBFHead(latent_dim, self.num_actions, n_atoms, hidden_size, dueling)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("support", make_support(v_min, v_max, n_atoms), persistent=False)

        self.to(self.device)
        self.loss_context = LossContext(
            encoder=self.encoder, augment=self.augment, latent_dim=latent_dim,
            latent_shape=tuple(getattr(self.encoder, "output_shape", (latent_dim,))),
            observation_shape=self.observation_shape,  # type: ignore[arg-type]
            num_actions=self.num_actions, discrete_actions=True, device=self.device,
            projector=self.head.projection, target_encoder=self.target_encoder,
            target_projector=self.target_head.projection)
        self.aux_losses, self.aux_names = attach(aux_losses, self.loss_context, check=constant_lr("bbf", "AdamW"))
        self.to(self.device)
        check_parts(self.parts(), self.shrink_perturb)
        self.optimizer = adamw(self._trainable(), float(learning_rate), float(adam_eps), float(weight_decay))
        self.update_count = 0
        self.cycle_updates = 0  # updates since the last reset: the annealing's clock

    @property
    def max_update_horizon(self) -> int:
        """The longest n the annealing uses: the replay's sequences must carry it."""
        return self.annealing.max_update_horizon

    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Shift + intensity, independent per image (identity when ``augment`` is off)."""
        return self._augmentation(x) if self.use_augmentation else x

    def networks(self) -> list[nn.Module]:
        return [self.encoder, self.head, self.target_encoder, self.target_head]

    def parts(self) -> dict[str, nn.Module]:
        """What a reset treats as one unit: "encoder", "head" and each trainable module an aux
        loss owns ("aux_losses.0.transition_model", ...)."""
        parts: dict[str, nn.Module] = {"encoder": self.encoder, "head": self.head}
        for i, loss in enumerate(self.aux_losses):
            for name, module in loss.named_children():
                if any(p.requires_grad for p in module.parameters()):
                    parts[f"aux_losses.{i}.{name}"] = module
        return parts

    def target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) of this agent and of every target its losses declare."""
        pairs = [(self.encoder, self.target_encoder), (self.head, self.target_head)]
        return pairs + [(t.online, t.target) for loss in self.aux_losses for t in loss.target_networks()]

    # --- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, epsilon: float = 0.0, greedy: bool = False) -> torch.Tensor:
        """ε-greedy on the expected Q of un-augmented uint8 ``obs`` (b c h w) or (c h w), by the
        target network (``target_action_selection``) or the online one. ``greedy`` changes
        nothing here (no noisy nets); the trainer sets ε. Returns int64 actions (b)."""
        return epsilon_greedy(obs, epsilon, self.num_actions, self.device, self._greedy_actions)

    def _greedy_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 obs (b c h w) → int64 (b): argmax_a Σ softmax(logits)·z."""
        encoder, head = ((self.target_encoder, self.target_head) if self.target_action_selection
                         else (self.encoder, self.head))
        probs = F.softmax(head(encoder(obs.float() / 255.0)), dim=-1)  # (b A atoms)
        return (probs @ self.support).argmax(dim=-1)

    # --- learning --------------------------------------------------------------------------
    def update(self, batch: Batch) -> LazyMetrics:
        """One gradient step on ``batch`` (obs (b t c h w) uint8 with t > max_update_horizon;
        action, reward, done (b t); weights (b) or None). The metrics stay on the device;
        their ``priorities`` (b) are the per-sample cross-entropies for the replay."""
        batch = batch.to(self.device)
        n, gamma = self.annealing.horizon(self.cycle_updates), self.annealing.gamma(self.cycle_updates)
        if batch.obs.shape[1] <= self.annealing.max_update_horizon:
            raise ConfigError(f"bbf.update needs obs with more than max_update_horizon = "
                              f"{self.annealing.max_update_horizon} steps; got obs {tuple(batch.obs.shape)}: "
                              "bind the replay's n_step to the agent's max_update_horizon")
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        # γ as a tensor: it changes every update, and a compiled phase would specialize on a float
        tensors, aux_metrics, priorities = self._learn_phase(batch, n, torch.tensor(gamma, device=self.device))
        self.update_count += 1
        self.cycle_updates += 1
        for online, target in self.target_pairs():  # after the step, as BBF's train()
            ema_update(online, target, self.target_tau)
        schedule = {"update_horizon": float(n), "discount": gamma, "resets": float(self.resets.resets)}
        return LazyMetrics(aux_metrics, tensors, schedule, priorities=priorities)

    def _learn_phase(self, batch: Batch, n: int, gamma: torch.Tensor
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any], torch.Tensor]:
        """The update's tensor work, from the augmentations to AdamW's step: (metric tensors, aux
        losses' metrics, priorities (b))."""
        b = batch.batch_size
        rows = torch.arange(b, device=self.device)
        weights = batch.weights.float() if batch.weights is not None else torch.ones(b, device=self.device)

        # RL branch: obs at t = 0 → log p(· | s_0, a_0); its latent is shared with the losses.
        latent = self.encoder(self.augment(batch.obs[:, 0].float() / 255.0))  # (b d)
        log_p = F.log_softmax(self.head(latent), dim=-1)[rows, batch.action[:, 0]]  # (b atoms)

        # Bootstrap: one augmented view of the bootstrap obs for both networks (BBF's next_states).
        with torch.no_grad():
            returns, terminal, step = n_step_returns(batch.reward, batch.done, n, gamma,
                                                     self.bootstrap_one_step_early)
            next_obs = self.augment(batch.obs[:, step].float() / 255.0)
            target_probs = F.softmax(self.target_head(self.target_encoder(next_obs)), dim=-1)  # (b A atoms)
            select = F.softmax(self.head(self.encoder(next_obs)), dim=-1) if self.double_dqn else target_probs
            next_action = (select @ self.support).argmax(dim=-1)  # (b)
            target = project_distribution(target_probs[rows, next_action], returns, terminal, gamma ** n,
                                          self.support)

        cross_entropy = -(target * log_p).sum(dim=-1)  # (b)
        rl_loss = (weights * cross_entropy).mean()
        total_loss = rl_loss
        aux_metrics: dict[str, Any] = {}
        context = dataclasses.replace(self.loss_context, latent=latent)
        for loss, name in zip(self.aux_losses, self.aux_names, strict=True):
            output = checked_output(loss, loss(batch, context))
            total_loss = total_loss + output.total()
            aux_metrics.update(prefixed(name, output.metrics))

        total_loss.backward()
        grads = [p.grad for p in self._trainable() if p.grad is not None]
        tensors = {"rl_loss": rl_loss.detach(), "total_loss": total_loss.detach(),
                   "mean_q": (log_p.detach().exp() @ self.support).mean(),
                   "grad_norm": torch.nn.utils.get_total_norm(grads)}  # reported; BBF clips nothing
        self.optimizer.step()
        return tensors, aux_metrics, cross_entropy.detach() + PRIORITY_EPS

    # --- resets ----------------------------------------------------------------------------
    def set_step(self, env_step: int) -> None:
        """Called by the trainer after the updates of env step ``env_step`` (0-based): reset when
        the schedule says so, counted in stored transitions as BBF's ``training_steps``."""
        if self.resets.due(env_step + 1):
            self.reset()

    def reset(self) -> None:
        """Shrink-and-perturb the listed parts, draw the others afresh, targets alike (each its
        own draw), a fresh AdamW state, and restart the annealing."""
        reset_parts(self.parts(), self.target_pairs(), self.shrink_perturb, self.shrink_factor,
                    self.perturb_factor)
        self.optimizer.state.clear()  # moments and step counts start over, as a new optimizer's
        self.cycle_updates = 0

    # --- checkpoints -----------------------------------------------------------------------
    def aux_rng_state(self) -> dict[str, torch.Tensor]:
        return rng_states(self.aux_losses)

    def load_aux_rng_state(self, states: dict[str, torch.Tensor]) -> None:
        load_rng_states(self.aux_losses, states)

    def checkpoint_state(self) -> dict[str, Any]:
        """Networks, optimizer, update counts and the reset schedule."""
        return {"model": self.state_dict(), "optimizer": self.optimizer.state_dict(),
                "update_count": self.update_count, "cycle_updates": self.cycle_updates,
                "resets": dataclasses.asdict(self.resets)}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.update_count, self.cycle_updates = int(state["update_count"]), int(state["cycle_updates"])
        self.resets = ResetSchedule(**state["resets"])
