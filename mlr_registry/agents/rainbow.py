"""SPR-style Rainbow, the Atari agent of MLR and of its "Baseline" (docs/faithfulness.md#atari-agent).

C51 (51 atoms on [−10, 10]) + dueling + noisy nets (σ0 = 0.1) + 10-step double DQN, trained on
shift+intensity augmented frames, with a target network hard-copied from the online one after
every update. Auxiliary losses (MLR's latent reconstruction, or none for the Baseline) come by
gin and are added to the RL loss under one Adam optimizer (docs/faithfulness.md#atari-optimisation).
:meth:`Rainbow.update` reads top to bottom as one gradient step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.agents.augmentation import Augmentation
from mlr_registry.agents.c51_head import C51Head, QHeadProjector, scale_grad  # noqa: F401 - re-exported
from mlr_registry.agents.distributional import make_support, project_distribution
from mlr_registry.agents.exploration import epsilon_greedy
from mlr_registry.agents.metrics import LazyMetrics
from mlr_registry.agents.noisy import reset_noise, set_sampling
from mlr_registry.batch import Batch
from mlr_registry.encoders.nature_cnn import NatureCNN
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

PRIORITY_EPS = 1e-6  # rlpyt's EPS: the KL priority's clamps


def _no_augmentation(x: torch.Tensor) -> torch.Tensor:
    return x


@register("agent", "rainbow")
class Rainbow(nn.Module):
    """SPR-style Rainbow with auxiliary losses (described to them by a ``LossContext``,
    ``losses/auxiliary.py``).

    Args:
        observation_shape: (c h w) of one observation; supplied by the trainer.
        num_actions: size of the (minimal) action set; supplied by the trainer.
        encoder: factory called as ``encoder(in_channels=c)``, returning an (n c h w) → (n d)
            module with ``output_dim`` (and ``output_shape``); default :class:`NatureCNN`.
        aux_losses: auxiliary objectives (gin passes instances); each is
            ``setup(self.loss_context)`` after the networks exist and is optimized with the RL
            loss by the one Adam at a constant lr (a loss's ``lr_warmup`` must be 0); its
            metrics are recorded as ``<name>_<metric>`` (``mlr_cosine``). Empty: the paper's
            "Baseline".
        n_atoms, v_min, v_max: C51 support (51 atoms on [−10, 10]).
        hidden_size: width of both head streams (256, ``dqn_hidden_size``).
        noisy_std: σ0 of all four noisy head layers (0.1).
        dueling: dueling head (on); the projector is then 2·hidden_size wide, else hidden_size.
        double_dqn: the online net picks the bootstrap action, the target net evaluates it (on).
        n_step: bootstrap horizon n (10); the batch must hold obs up to index n.
        discount: γ (0.99); the bootstrap is discounted by γⁿ (returns come n-step from replay).
        learning_rate, adam_eps: Adam's lr (1e-4, set_config) and eps (1.5e-4); betas
            (0.9, 0.999), no weight decay.
        max_grad_norm: clip norm, applied separately to encoder + Q head and to each group an
            aux loss names in ``grad_clip_groups`` (10; docs/faithfulness.md#atari-optimisation).
        target_update_period: hard-copy the online Q network (encoder, head, noise buffers)
            to the target network every this many updates (1: after every update, tau 1).
        augment: shift (replicate pad 4 + random crop) and intensity on every training branch
            (on); acting and evaluation never augment.
        target_augmentation: augment the bootstrap observation too (on); the online argmax and
            the target net each draw their own augmentation, as the reference's two separate
            forward calls do.
        grad_scale_head_input: gradient scale on the head input (2^-0.5, SPR's head).
        device: where the networks live and batches are moved to.

    How it executes (precision, compilation, memory format) is not this class's business: the
    trainer applies :class:`~mlr_registry.execution.Execution` to it, using what it declares
    here: :meth:`networks`, ``compiled_phases``, ``acting_phases`` and ``rollback_state``.
    """

    discrete_actions = True
    compiled_phases = ("_learn_phase",)  # an update's tensor work, from augmentation to Adam's step
    acting_phases = ("_greedy_actions",)  # no random draw inside
    rollback_state = ("checkpoint_state", "load_checkpoint_state")

    def __init__(self, observation_shape: Sequence[int], num_actions: int,
                 encoder: Callable[..., nn.Module] = NatureCNN,
                 aux_losses: Sequence[AuxiliaryLoss] = (),
                 n_atoms: int = 51, v_min: float = -10.0, v_max: float = 10.0,
                 hidden_size: int = 256, noisy_std: float = 0.1, dueling: bool = True,
                 double_dqn: bool = True, n_step: int = 10, discount: float = 0.99,
                 learning_rate: float = 1e-4, adam_eps: float = 1.5e-4, max_grad_norm: float = 10.0,
                 target_update_period: int = 1, augment: bool = True, target_augmentation: bool = True,
                 grad_scale_head_input: float = 2 ** -0.5, device: str = "cpu"):
        super().__init__()
        if len(observation_shape) != 3:
            raise ConfigError(f"rainbow.observation_shape = {tuple(observation_shape)}; expected (c, h, w)")
        check_range("rainbow.num_actions", num_actions, 1)
        check_range("rainbow.n_atoms", n_atoms, 2)
        if not v_min < v_max:
            raise ConfigError(f"rainbow.v_min = {v_min} must be below rainbow.v_max = {v_max}")
        check_range("rainbow.hidden_size", hidden_size, 1)
        check_range("rainbow.noisy_std", noisy_std, 0)
        check_range("rainbow.n_step", n_step, 1)
        check_range("rainbow.discount", discount, 0, 1)
        check_range("rainbow.learning_rate", learning_rate, 0, low_open=True)
        check_range("rainbow.adam_eps", adam_eps, 0, low_open=True)
        check_range("rainbow.max_grad_norm", max_grad_norm, 0, low_open=True)
        check_range("rainbow.target_update_period", target_update_period, 1)
        check_range("rainbow.grad_scale_head_input", grad_scale_head_input, 0, low_open=True)
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self.num_actions = int(num_actions)
        self.double_dqn, self.n_step, self.discount = double_dqn, n_step, discount
        self.max_grad_norm, self.target_update_period = max_grad_norm, target_update_period
        self.use_augmentation, self.target_augmentation = augment, target_augmentation
        self.device = torch.device(device)
        self._augmentation = Augmentation()

        # Online Q network: encoder → C51 head; the projector shares the head's first layers.
        self.encoder = encoder(in_channels=self.observation_shape[0])
        latent_dim = checked_output_dim(self.encoder, self.observation_shape)
        self.head = C51Head(latent_dim, self.num_actions, n_atoms, hidden_size, noisy_std, dueling,
                            grad_scale_head_input)
        self.projector = QHeadProjector(self.head.first_layers())
        # Target Q network: a stop-grad copy, refreshed by hard copy.
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("support", make_support(v_min, v_max, n_atoms), persistent=False)

        self.to(self.device)  # the losses' setup sees the networks on the device
        self.loss_context = LossContext(
            encoder=self.encoder, augment=self._augmentation if augment else _no_augmentation,
            latent_dim=self.latent_dim, latent_shape=self.latent_shape,
            observation_shape=self.observation_shape,  # type: ignore[arg-type]
            num_actions=self.num_actions, discrete_actions=True, device=self.device, projector=self.projector)
        # metric prefixes: mlr_loss, mlr_cosine
        self.aux_losses, self.aux_names = attach(aux_losses, self.loss_context, check=constant_lr("rainbow", "Adam"))
        self.to(self.device)
        self.aux_targets = [tuple(loss.target_networks()) for loss in self.aux_losses]
        # One Adam over every trainable parameter, aux losses' included.
        self.optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=learning_rate,
                                          eps=adam_eps, betas=(0.9, 0.999), weight_decay=0.0)
        self.update_count = 0

    # --- what the aux losses' context holds ----------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return int(self.head.adv_fc1.in_features)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(getattr(self.encoder, "output_shape", (self.latent_dim,)))

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Shift + intensity, independent per image (identity when ``augment`` is off)."""
        return self._augmentation(x) if self.use_augmentation else x

    def networks(self) -> list[nn.Module]:
        """The networks whose forward draws no random number (the noise is resampled outside)."""
        return [self.encoder, self.head, self.target_encoder, self.target_head]

    def stem_parameters(self) -> list[nn.Parameter]:
        """Encoder + Q head (the projector's layers and ``advantage_bias`` included): one clip group."""
        return list(self.encoder.parameters()) + list(self.head.parameters())

    # --- acting ----------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor, epsilon: float = 0.0, greedy: bool = False) -> torch.Tensor:
        """ε-greedy on the expected Q = Σ softmax(logits)·z of un-augmented ``obs``.

        obs: uint8 (b c h w), or (c h w) for one observation (treated as b = 1).
        greedy=False (training): noisy-net noise ON, with the sample of the last update (acting
        never resamples it). greedy=True (evaluation): noise OFF (μ only). Returns int64 actions
        (b) on the agent's device. ε = 1 skips the network (uniform actions, same distribution).
        """
        def noisy_greedy(obs: torch.Tensor) -> torch.Tensor:
            self.eval()
            set_sampling(self.head, not greedy)
            return self._greedy_actions(obs)

        return epsilon_greedy(obs, epsilon, self.num_actions, self.device, noisy_greedy)

    def _greedy_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 obs (b c h w) -> int64 (b): argmax_a Σ softmax(logits)·z, the noise as set."""
        logits = self.head(self.encoder(obs.float() / 255.0))  # (b A atoms)
        probs = F.softmax(logits, dim=-1)
        return (probs @ self.support).argmax(dim=-1)

    # --- learning --------------------------------------------------------------------------
    def update(self, batch: Batch) -> LazyMetrics:
        """One gradient step on ``batch`` (obs (b t c h w) uint8 with t > n_step; action (b t);
        returns, done_n (b ≥1); weights (b) or None). The metrics stay on the device until read
        (:class:`LazyMetrics`); their ``priorities`` are the KL priorities (b) for the replay."""
        batch = batch.to(self.device)
        if batch.obs.shape[1] <= self.n_step or batch.returns is None or batch.done_n is None:
            raise ConfigError(f"rainbow.update needs obs with more than n_step = {self.n_step} steps and "
                              f"n-step returns/done_n; got obs {tuple(batch.obs.shape)}")
        self.train()
        reset_noise(self.head)  # one fresh noise sample per update, online net only
        self.optimizer.zero_grad(set_to_none=True)
        tensors, aux_metrics, priorities = self._learn_phase(batch)
        self.update_count += 1
        if self.update_count % self.target_update_period == 0:
            self.copy_to_target()
        return LazyMetrics(aux_metrics, tensors, priorities=priorities)  # still on the device: no sync until read

    def _learn_phase(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, Any], torch.Tensor]:
        """The update's tensor work, from the augmentations to Adam's step: (metric tensors, aux
        losses' metrics, KL priorities (b))."""
        b = batch.batch_size
        rows = torch.arange(b, device=self.device)
        weights = batch.weights.float() if batch.weights is not None else torch.ones(b, device=self.device)

        # RL branch: obs at t = 0, its own augmentation → log p(· | s_0, a_0).
        obs0 = self.augment(batch.obs[:, 0].float() / 255.0)
        logits = self.head(self.encoder(obs0))  # (b A atoms)
        log_probs = F.log_softmax(logits, dim=-1)  # (b A atoms)
        log_p = log_probs[rows, batch.action[:, 0]]  # (b atoms)

        # Bootstrap target at t = n: online argmax (double DQN), target-net distribution, projected.
        with torch.no_grad():
            next_obs = batch.obs[:, self.n_step].float() / 255.0

            def next_view() -> torch.Tensor:  # a fresh augmentation per network, as the reference
                return self.augment(next_obs) if self.target_augmentation else next_obs

            target_logits = self.target_head(self.target_encoder(next_view()))  # (b A atoms)
            target_probs = F.softmax(target_logits, dim=-1)
            if self.double_dqn:
                online_logits = self.head(self.encoder(next_view()))
                online_probs = F.softmax(online_logits, dim=-1)
                next_action = (online_probs @ self.support).argmax(dim=-1)  # (b)
            else:
                next_action = (target_probs @ self.support).argmax(dim=-1)
            target = project_distribution(target_probs[rows, next_action], batch.returns[:, 0],
                                          batch.done_n[:, 0], self.discount ** self.n_step, self.support)

        cross_entropy = -(target * log_p).sum(dim=-1)  # (b)
        rl_loss = (weights * cross_entropy).mean()
        # KL(target || p) as the reference computes it for the priorities: the target clamped to
        # [EPS, 1] first (rlpyt's EPS = 1e-6; the cross-entropy above uses it unclamped), then the
        # KL clamped to [EPS, 1/EPS], as rlpyt.
        clamped = target.clamp(PRIORITY_EPS, 1)
        kl = (clamped * (clamped.log() - log_p.detach())).sum(dim=-1)
        priorities = kl.clamp(PRIORITY_EPS, 1 / PRIORITY_EPS)  # PER priority before ^alpha

        # Auxiliary losses; their targets move before the optimizer step (one-update lag).
        total_loss = rl_loss
        aux_metrics: dict[str, Any] = {}
        for loss, name, targets in zip(self.aux_losses, self.aux_names, self.aux_targets, strict=True):
            output = checked_output(loss, loss(batch, self.loss_context))
            for target in targets:
                target.update()
            total_loss = total_loss + output.total()
            aux_metrics.update(prefixed(name, output.metrics))

        total_loss.backward()
        tensors = {"rl_loss": rl_loss.detach(), "total_loss": total_loss.detach(),
                   "mean_q": (log_p.detach().exp() @ self.support).mean(), "priority_mean": priorities.mean(),
                   "grad_norm": torch.nn.utils.clip_grad_norm_(self.stem_parameters(), self.max_grad_norm)}
        for i, loss in enumerate(self.aux_losses):
            for j, group in enumerate(loss.grad_clip_groups()):
                tensors[f"grad_norm_aux{i}_{j}"] = torch.nn.utils.clip_grad_norm_(group, self.max_grad_norm)
        self.optimizer.step()
        return tensors, aux_metrics, priorities

    @torch.no_grad()
    def copy_to_target(self) -> None:
        """Hard copy (tau 1) of the online encoder and head, noise buffers included: the same
        tensors ``load_state_dict(state_dict())`` would copy, in one multi-tensor copy (every
        update by default; per-tensor copies were ~70 ops, each a kernel launch on a GPU)."""
        online, target = [], []
        for src, dst in ((self.encoder, self.target_encoder), (self.head, self.target_head)):
            src_state, dst_state = src.state_dict(keep_vars=True), dst.state_dict(keep_vars=True)
            online += [src_state[k] for k in dst_state]
            target += list(dst_state.values())
        torch._foreach_copy_(target, online)

    # --- checkpoints -----------------------------------------------------------------------
    def aux_rng_state(self) -> dict[str, torch.Tensor]:
        """The aux losses' own random streams (seeded maskers), keyed ``"<loss index>|<device>"``."""
        return rng_states(self.aux_losses)

    def load_aux_rng_state(self, states: dict[str, torch.Tensor]) -> None:
        load_rng_states(self.aux_losses, states)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything to resume learning: networks (online, target, aux losses), optimizer, count."""
        return {"model": self.state_dict(), "optimizer": self.optimizer.state_dict(),
                "update_count": self.update_count}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.update_count = int(state["update_count"])
