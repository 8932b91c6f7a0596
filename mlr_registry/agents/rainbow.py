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
from mlr_registry.agents.distributional import make_support, project_distribution
from mlr_registry.agents.metrics import LazyMetrics
from mlr_registry.agents.noisy import NoisyLinear, reset_noise, set_sampling
from mlr_registry.batch import Batch
from mlr_registry.encoders.nature_cnn import NatureCNN
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.fast_path import FastPath, compile_targets
from mlr_registry.losses.auxiliary import (
    AuxiliaryLoss,
    LossContext,
    attach,
    checked_output,
    load_rng_states,
    loss_names,
    prefixed,
    rng_states,
)
from mlr_registry.registry import register

PRIORITY_EPS = 1e-6  # rlpyt's EPS: the KL priority's clamps


def _constant_lr(loss: AuxiliaryLoss) -> None:
    """Rainbow trains its aux losses under its one constant-lr Adam: a warm-up cannot apply."""
    if loss.lr_warmup:
        raise ConfigError(f"losses.{loss_names([loss])[0]}.lr_warmup = {loss.lr_warmup}: rainbow trains "
                          "auxiliary losses under its one Adam at a constant lr; set it to 0")


def _no_augmentation(x: torch.Tensor) -> torch.Tensor:
    return x


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
        precision: "fp32" (default: the reference's arithmetic), "bf16" (autocast around every
            network forward of update and act, aux losses' included; float32 master weights,
            losses and C51 projection) or "auto" (bf16 on a bf16-capable GPU). Not in the paper:
            the GPU fast path of :mod:`mlr_registry.fast_path`.
        compile: ``torch.compile`` the encoders, Q heads and aux losses' networks in place
            (False by default; True; "auto" = on CUDA only); falls back to eager with a warning
            where unsupported. compile_mode: torch.compile's mode ("default"; "reduce-overhead"
            adds CUDA graphs). compile_scope: "networks" (those modules, in place) or "update"
            (whole-update capture: augmentation, forwards, losses, backward, clipping and the
            Adam step as one compiled phase; noise resets, counters and target copies stay eager).
        channels_last: conv weights (and so activations) in channels-last memory (False by
            default; True; "auto" = on CUDA only): the same values, no NCHW<->NHWC conversions
            around cuDNN's convolutions.
        cudnn_benchmark: cuDNN times its convolution algorithms per input shape and keeps the
            fastest (False by default; True; "auto" = on CUDA only; process-wide).
    """

    discrete_actions = True

    def __init__(self, observation_shape: Sequence[int], num_actions: int,
                 encoder: Callable[..., nn.Module] = NatureCNN,
                 aux_losses: Sequence[AuxiliaryLoss] = (),
                 n_atoms: int = 51, v_min: float = -10.0, v_max: float = 10.0,
                 hidden_size: int = 256, noisy_std: float = 0.1, dueling: bool = True,
                 double_dqn: bool = True, n_step: int = 10, discount: float = 0.99,
                 learning_rate: float = 1e-4, adam_eps: float = 1.5e-4, max_grad_norm: float = 10.0,
                 target_update_period: int = 1, augment: bool = True, target_augmentation: bool = True,
                 grad_scale_head_input: float = 2 ** -0.5, device: str = "cpu", precision: str = "fp32",
                 compile: bool | str = False, compile_mode: str = "default",  # noqa: A002 - gin name
                 compile_scope: str = "networks", channels_last: bool | str = False,
                 cudnn_benchmark: bool | str = False):
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
        latent_dim = self._check_encoder()
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
        self.aux_losses, self.aux_names = attach(aux_losses, self.loss_context, check=_constant_lr)
        self.to(self.device)
        self.aux_targets = [tuple(loss.target_networks()) for loss in self.aux_losses]
        # One Adam over every trainable parameter, aux losses' included.
        self.optimizer = torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=learning_rate,
                                          eps=adam_eps, betas=(0.9, 0.999), weight_decay=0.0)
        self.update_count = 0
        self.last_priorities: torch.Tensor | None = None  # (b) KL priorities of the last update
        # GPU fast path (off by default): bf16 autocast, compiled networks (no RNG inside them).
        self.fast_path = FastPath("rainbow", self.device, precision, compile, compile_mode,
                                  compile_scope=compile_scope, channels_last=channels_last,
                                  cudnn_benchmark=cudnn_benchmark)
        self.fast_path.apply_memory_format(self)  # before anything is compiled or steps
        self.fast_path.compile_modules([self.encoder, self.head, self.target_encoder, self.target_head,
                                        *compile_targets(self.aux_losses)])
        self._learn = self.fast_path.compile_step(self._learn_phase)  # itself unless scope 'update'
        self._act_one = self.fast_path.compile_step(self._greedy_actions)  # no random draw inside
        self.fast_path.protect(self.checkpoint_state, self.load_checkpoint_state)


    def _check_encoder(self) -> int:
        """The encoder's output size, checked against a dummy forward (an image_size mismatch
        would otherwise surface as a shape error deep inside the head)."""
        with torch.no_grad():
            out = self.encoder(torch.zeros(1, *self.observation_shape))
        actual = int(out.shape[-1])
        declared = getattr(self.encoder, "output_dim", actual)
        if out.dim() != 2 or declared != actual:
            raise ConfigError(
                f"encoder {type(self.encoder).__name__} maps an observation of shape "
                f"{self.observation_shape} to {tuple(out.shape[1:])}, but declares output_dim {declared}; "
                "check its image_size against the env's observation size")
        return actual

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
        check_range("act.epsilon", epsilon, 0, 1)
        obs = torch.as_tensor(obs, device=self.device)
        obs = obs[None] if obs.dim() == 3 else obs  # (b c h w)
        b = obs.shape[0]
        if epsilon >= 1.0:
            return torch.randint(0, self.num_actions, (b,), device=self.device)
        self.eval()
        set_sampling(self.head, not greedy)
        # One observation (the training loop's call) runs compiled on the fast path; batches
        # (evaluation, whose size shrinks as games end) run eagerly instead of compiling per size.
        policy = self._act_one if b == 1 else self._greedy_actions
        actions = self.fast_path.run_stateless(policy, obs)  # (b)
        if epsilon > 0:
            explore = torch.rand(b, device=self.device) < epsilon
            actions = torch.where(explore, torch.randint_like(actions, self.num_actions), actions)
        return actions

    def _greedy_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 obs (b c h w) -> int64 (b): argmax_a Σ softmax(logits)·z, the noise as set."""
        with self.fast_path.autocast():
            logits = self.head(self.encoder(obs.float() / 255.0)).float()  # (b A atoms)
        probs = F.softmax(logits, dim=-1)
        return (probs @ self.support).argmax(dim=-1)

    # --- learning --------------------------------------------------------------------------
    def update(self, batch: Batch) -> LazyMetrics:
        """One gradient step on ``batch`` (obs (b t c h w) uint8 with t > n_step; action (b t);
        returns, done_n (b ≥1); weights (b) or None). Priorities go to ``last_priorities``.
        The metrics stay on the device until read (:class:`LazyMetrics`)."""
        return self.fast_path.run(self._update, batch)

    def _update(self, batch: Batch) -> LazyMetrics:
        batch = batch.to(self.device)
        if batch.obs.shape[1] <= self.n_step or batch.returns is None or batch.done_n is None:
            raise ConfigError(f"rainbow.update needs obs with more than n_step = {self.n_step} steps and "
                              f"n-step returns/done_n; got obs {tuple(batch.obs.shape)}")
        self.train()
        reset_noise(self.head)  # one fresh noise sample per update, online net only
        self.optimizer.zero_grad(set_to_none=True)
        tensors, aux_metrics, self.last_priorities = self._learn(batch)
        self.update_count += 1
        if self.update_count % self.target_update_period == 0:
            self.copy_to_target()
        return LazyMetrics(aux_metrics, tensors)  # still on the device: no sync until read

    def _learn_phase(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, Any], torch.Tensor]:
        """The update's tensor work, from the augmentations to Adam's step: (metric tensors, aux
        losses' metrics, KL priorities (b)). One compiled unit under ``compile_scope = 'update'``."""
        b = batch.batch_size
        rows = torch.arange(b, device=self.device)
        weights = batch.weights.float() if batch.weights is not None else torch.ones(b, device=self.device)

        # RL branch: obs at t = 0, its own augmentation → log p(· | s_0, a_0).
        obs0 = self.augment(batch.obs[:, 0].float() / 255.0)
        with self.fast_path.autocast():  # networks in bf16 on the fast path; losses in float32
            logits = self.head(self.encoder(obs0)).float()
        log_probs = F.log_softmax(logits, dim=-1)  # (b A atoms)
        log_p = log_probs[rows, batch.action[:, 0]]  # (b atoms)

        # Bootstrap target at t = n: online argmax (double DQN), target-net distribution, projected.
        with torch.no_grad():
            next_obs = batch.obs[:, self.n_step].float() / 255.0

            def next_view() -> torch.Tensor:  # a fresh augmentation per network, as the reference
                return self.augment(next_obs) if self.target_augmentation else next_obs

            with self.fast_path.autocast():
                target_logits = self.target_head(self.target_encoder(next_view())).float()  # (b A atoms)
            target_probs = F.softmax(target_logits, dim=-1)
            if self.double_dqn:
                with self.fast_path.autocast():
                    online_logits = self.head(self.encoder(next_view())).float()
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
            with self.fast_path.autocast():
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
