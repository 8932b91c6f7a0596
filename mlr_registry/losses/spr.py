"""Self-Predictive Representations: the SPR auxiliary objective (Schwarzer et al., ICLR 2021).

MLR's Atari code is built on SPR's and keeps its (unused) SPR loss
(docs/faithfulness.md#atari-mlr-loss): ``model_spr_weight=5``, ``jumps=5``, the ``TransitionModel`` of
``models.py`` and the nonterminal masking of ``algos.py``. This module turns that loss back on,
alone (the paper's SPR column) or next to MLR.

One update, with K = ``jumps`` (5):

1. Online: ``z_0 = encoder(augment(obs_0 / 255))`` viewed as the conv map ``(b C H W)``
   (64×7×7), then ``z_k = transition_model(z_{k−1}, a_{k−1})`` for k = 1..K with the batch's
   actions, then ``predictor(projector(z_k))`` (projector = the agent's, i.e. the Q-head's first
   value/advantage layers on Atari, SPR's ``q_l1`` classifier; predictor ``Linear(p, p)``).
2. Target (no grad): ``target_projector(target_encoder(augment(obs_k / 255)))`` on the real
   frames k = 1..K, each with its own augmentation draw.
3. Per (b, k): ``‖p/max(‖p‖,eps) − z/max(‖z‖,eps)‖²`` (= 2 − 2·cos), zeroed once a transition
   0..k ended an episode (SPR's ``1 − sign(cumsum(done))``), **summed over k**, times the PER
   importance weight, averaged over b, times ``weight``.

Loss scale: ``1·Σ_k ‖·‖²`` is exactly SPR's code (``model_spr_weight = 5`` on the mean over the
K = 5 steps) and SPR's paper (λ = 2 on Σ_k −cos, up to a constant), so ``weight = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.encoders.nature_cnn import renormalize
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.initialization import XavierLinear, xavier_uniform_
from mlr_registry.losses.auxiliary import AuxiliaryLoss, LossContext, LossOutput
from mlr_registry.losses.common import agent_target_network, frozen_copy, normalized_squared_distance, output_size
from mlr_registry.registry import register
from mlr_registry.target_network import TargetNetwork

NORMS = ("bn", "ln", "in", "none")
PREDICTORS = ("linear", "none")
TARGETS = ("own", "agent")
INITS = ("torch", "xavier")


def _norm(channels: int, kind: str) -> nn.Module:
    """SPR's ``init_normalization`` (2-d): BatchNorm, LayerNorm as GroupNorm(1), InstanceNorm as
    GroupNorm(C), or identity."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return nn.GroupNorm(1, channels)
    if kind == "in":
        return nn.GroupNorm(channels, channels)
    return nn.Identity()


class ResidualBlock(nn.Module):
    """SPR's ``ResidualBlock``: relu(x + norm(conv(norm(relu(conv(x)))))), 3×3 convs, same size."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), _norm(channels, norm),
            nn.Conv2d(channels, channels, 3, padding=1), _norm(channels, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.block(x))


class TransitionModel(nn.Module):
    """SPR's latent dynamics: ``(n C H W) latent, (n) action -> (n C H W) next latent``.

    ``concat(latent, one_hot(action) as A constant planes)`` → Conv3×3(C+A → hidden, pad 1) →
    ReLU → norm → ``blocks`` residual blocks → Conv3×3(hidden → C, pad 1) → (+ latent if
    ``residual``) → ReLU → per-sample min-max renormalization (if ``renormalize``). SPR's defaults
    (``--dynamics-blocks 0 --residual-tm 0 --norm-type bn --renormalize 1``, hidden = C = 64) give
    two convs with BatchNorm between them. Zero padding, PyTorch default init, as SPR's
    ``Conv2dSame``. (SPR's reward predictor is not built: its weight is 0 in SPR and MLR.)
    """

    def __init__(self, channels: int, num_actions: int, hidden: int, blocks: int = 0, norm: str = "bn",
                 residual: bool = False, renormalize: bool = True, renormalize_eps: float = 0.0,
                 init: str = "torch"):
        super().__init__()
        self.num_actions, self.init = num_actions, init
        self.residual, self.renormalize, self.renormalize_eps = residual, renormalize, renormalize_eps
        layers: list[nn.Module] = [nn.Conv2d(channels + num_actions, hidden, 3, padding=1), nn.ReLU(),
                                   _norm(hidden, norm)]
        layers += [ResidualBlock(hidden, norm) for _ in range(blocks)]
        layers.append(nn.Conv2d(hidden, channels, 3, padding=1))
        self.network = nn.Sequential(*layers)
        if init == "xavier":  # "torch" keeps the layers' own default draws, made just above
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """A new draw of the initialization: ``init`` "xavier" (BBF's flax convs) or PyTorch's
        defaults ("torch", SPR's)."""
        for layer in self.network.modules():
            if layer is not self.network and hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        if self.init == "xavier":
            xavier_uniform_(self.network)

    def forward(self, latent: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        n, _, h, w = latent.shape
        planes = F.one_hot(action.long(), self.num_actions).to(latent.dtype)  # (n A)
        planes = planes[:, :, None, None].expand(n, self.num_actions, h, w)  # (n A h w)
        out = self.network(torch.cat([latent, planes], dim=1))  # (n C h w)
        if self.residual:
            out = out + latent
        out = F.relu(out)
        return renormalize(out, self.renormalize_eps) if self.renormalize else out


@register("loss", "spr")
class SPRLoss(AuxiliaryLoss):
    """The SPR loss; owns the transition model, predictor, target encoder and target projector.

    Needs an agent with a spatial latent (``latent_shape`` = (C, H, W)), discrete actions and a
    ``projector`` (the Rainbow agent).
    """

    def __init__(self, weight: float = 1.0, jumps: int = 5, target_tau: float = 1.0,
                 transition_hidden: int | None = None, transition_blocks: int = 0, norm: str = "bn",
                 residual: bool = False, renormalize: bool = True, renormalize_eps: float = 0.0,
                 predictor: str = "linear", use_importance_weights: bool = True,
                 normalize_eps: float = 1e-3, lr_warmup: int = 0, target: str = "own",
                 share_latent: bool = False, init: str = "torch") -> None:
        """
        Args:
            weight: factor on ``Σ_k`` of the per-step distance. 1 reproduces SPR: its code puts
                ``model_spr_weight = 5`` on the MEAN over K = 5 steps (= 1 × the sum), and its
                paper's λ = 2 multiplies Σ_k −cos, while Σ_k ‖·‖² = Σ_k (2 − 2·cos): the same
                gradient. Added to the RL loss under the agent's one optimizer (Atari).
            jumps: K, the number of predicted future steps (5, SPR ``--jumps 5``). The batch must
                hold K+1 steps (the Atari replay holds ``sequence_length + n_step`` = 26).
            target_tau: EMA weight on the online encoder and projector of :meth:`target_networks`
                (target ← tau·online + (1−tau)·target). SPR with augmentation runs
                ``--momentum-tau 1``: the target is a hard copy of the online networks, refreshed
                right after this forward (a one-update lag, as in SPR's ``do_spr_loss``). SPR's
                paper writes this as τ = 0 (its τ weighs the old target). 0.01 is SPR's
                no-augmentation setting.
            transition_hidden: channels inside the transition model; None = the latent's C (64,
                SPR's ``hidden_size`` = conv channels).
            transition_blocks: residual blocks between the two convs (0, ``--dynamics-blocks``).
            norm: normalization after the first conv and inside blocks: "bn" (SPR default),
                "ln", "in" or "none".
            residual: add the input latent before the last ReLU (False, ``--residual-tm 0``).
            renormalize: min-max renormalize each predicted latent as the encoder's output is
                (True, ``--renormalize 1``).
            renormalize_eps: added to max − min there (0 as SPR: a constant map gives NaN).
            predictor: "linear" = ``Linear(p, p)`` (SPR ``--final-classifier linear``) or "none".
            use_importance_weights: multiply each sample's loss by the PER weight ``batch.weights``
                (SPR does); ignored when the batch has no weights.
            normalize_eps: eps of the L2 normalization (1e-3, SPR's ``spr_loss``).
            lr_warmup: as ``losses.mlr.lr_warmup`` (an agent with an aux optimizer of its own);
                0 = a constant lr, as SPR.
            target: "own": this loss declares its target encoder and projector (``target_tau``,
                SPR); "agent": it reads the agent's target network from the context instead
                (``target_encoder`` / ``target_projector``; BBF, whose SPR targets come from its
                one EMA target network) and declares none.
            share_latent: roll out from the online latent the agent's RL branch computed
                (``context.latent``, BBF) instead of encoding ``obs[:, 0]`` again with its own
                augmentation draw (False, SPR here).
            init: "torch" (PyTorch's default layers, SPR) or "xavier" (Xavier-uniform kernels,
                zero biases: BBF's transition model and predictor).
        """
        super().__init__()
        check_range("losses.spr.weight", weight, 0.0)
        check_range("losses.spr.lr_warmup", lr_warmup, 0, integer=True)
        for name, value, low in (("jumps", jumps, 1), ("transition_blocks", transition_blocks, 0)):
            check_range(f"losses.spr.{name}", value, low, integer=True)
        if transition_hidden is not None:
            if isinstance(transition_hidden, bool) or not isinstance(transition_hidden, int):
                raise ConfigError(f"losses.spr.transition_hidden = {transition_hidden!r} must be an integer or None")
            check_range("losses.spr.transition_hidden", transition_hidden, 1)
        check_range("losses.spr.target_tau", target_tau, 0.0, 1.0, low_open=True)
        check_range("losses.spr.renormalize_eps", renormalize_eps, 0.0)
        check_range("losses.spr.normalize_eps", normalize_eps, 0.0, low_open=True)
        for name, value, allowed in (("norm", norm, NORMS), ("predictor", predictor, PREDICTORS),
                                     ("target", target, TARGETS), ("init", init, INITS)):
            if value not in allowed:
                raise ConfigError(f"losses.spr.{name} = {value!r}; expected one of {', '.join(allowed)}")
        self.weight = float(weight)
        self.jumps = jumps
        self.target_tau = float(target_tau)
        self.transition_hidden = transition_hidden
        self.transition_blocks = transition_blocks
        self.norm = norm
        self.residual = bool(residual)
        self.renormalize = bool(renormalize)
        self.renormalize_eps = float(renormalize_eps)
        self.predictor_kind = predictor
        self.use_importance_weights = bool(use_importance_weights)
        self.normalize_eps = float(normalize_eps)
        self.lr_warmup = int(lr_warmup)
        self.target, self.share_latent, self.init = target, bool(share_latent), init
        # The declared targets (encoder, projector); a plain tuple, so the agent's modules they
        # refer to are not registered here (no duplicates in optimizers or state_dicts).
        self._targets: tuple[TargetNetwork, ...] = ()
        self._latent_shape: tuple[int, int, int] = (0, 0, 0)

    def setup(self, context: LossContext) -> None:
        shape = tuple(int(s) for s in context.latent_shape)
        if len(shape) != 3 or shape[0] * shape[1] * shape[2] != int(context.latent_dim):
            raise ConfigError(f"losses.spr needs a spatial latent (C, H, W) whose size is the encoder's "
                              f"output_dim; the agent's encoder gives latent_shape {shape} and latent_dim "
                              f"{context.latent_dim}")
        if not context.discrete_actions:
            raise ConfigError("losses.spr feeds actions as one-hot planes and needs discrete actions")
        if context.projector is None:
            raise ConfigError("losses.spr uses the agent's projector (SPR's q_l1 head), but the agent exposes none")
        self._latent_shape = shape  # type: ignore[assignment]
        c = shape[0]
        self.transition_model = TransitionModel(
            c, int(context.num_actions), self.transition_hidden or c, self.transition_blocks, self.norm,
            self.residual, self.renormalize, self.renormalize_eps, self.init)
        projector = context.projector
        p = output_size(projector, int(context.latent_dim))
        linear = XavierLinear if self.init == "xavier" else nn.Linear
        self.predictor = linear(p, p) if self.predictor_kind == "linear" else nn.Identity()
        if self.target == "agent":
            agent_target_network(context, "losses.spr")
            return
        self.target_encoder = frozen_copy(context.encoder)
        self.target_projector = frozen_copy(projector)
        self._targets = (TargetNetwork(context.encoder, self.target_encoder, self.target_tau),
                         TargetNetwork(projector, self.target_projector, self.target_tau))

    def rollout(self, latent: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``(b C H W)`` latent at t = 0, ``(b K)`` actions a_0..a_{K−1} → ``(b K C H W)`` predicted
        latents z_1..z_K (the loop runs over the K steps, each step vectorized over b)."""
        steps = []
        for k in range(actions.shape[1]):
            latent = self.transition_model(latent, actions[:, k])
            steps.append(latent)
        return torch.stack(steps, dim=1)

    @staticmethod
    def nonterminal_mask(done: torch.Tensor) -> torch.Tensor:
        """``(b K+1)`` dones of steps 0..K → ``(b K)`` float mask of the terms k = 1..K: 1 while no
        transition 0..k has ended an episode (SPR's ``1 − sign(cumsum(done))`` taken at k, so a
        done at step j zeroes every term k ≥ j; term j's frame is the episode's last, SPR drops
        it too)."""
        return (done.long().cumsum(dim=1)[:, 1:] == 0).float()

    def forward(self, batch: Batch, context: LossContext) -> LossOutput:
        K = self.jumps
        if batch.obs.shape[1] < K + 1:
            raise ConfigError(f"losses.spr.jumps = {K} needs {K + 1} steps per sample, but the batch holds "
                              f"only {batch.obs.shape[1]}; sample longer sequences from replay")
        obs = batch.obs[:, :K + 1]  # (b K+1 c h w) uint8
        b = obs.shape[0]
        C, H, W = self._latent_shape
        encoder, projector = context.encoder, context.projector
        assert projector is not None  # checked in setup

        # Online: encode t = 0 (its own augmentation draw, or the agent's latent), roll the dynamics.
        if self.share_latent:
            if context.latent is None:
                raise ConfigError("losses.spr.share_latent = True, but the agent shares no latent with its "
                                  "losses (context.latent); set losses.spr.share_latent = False")
            z0 = context.latent.view(b, C, H, W)
        else:
            z0 = encoder(context.augment(obs[:, 0].float() / 255.0)).view(b, C, H, W)
        predicted = self.rollout(z0, batch.action[:, :K])  # (b K C H W)
        pred = self.predictor(projector(rearrange(predicted, "b k c h w -> (b k) (c h w)")))  # (n p)

        # Target: the real frames t = 1..K through the target encoder and projector.
        with torch.no_grad():
            frames = rearrange(obs[:, 1:], "b k c h w -> (b k) c h w").float() / 255.0
            target_encoder, target_projector = (agent_target_network(context, "losses.spr")
                                                if self.target == "agent" else
                                                (self.target_encoder, self.target_projector))
            target = target_projector(target_encoder(context.augment(frames)))  # (n p)

        dist = rearrange(normalized_squared_distance(pred, target, self.normalize_eps),
                         "(b k) -> b k", b=b)  # (b K) float32
        mask = self.nonterminal_mask(batch.done[:, :K + 1].to(dist.device))  # (b K)
        per_sample = (dist * mask).sum(dim=1)  # (b)
        weighted = per_sample
        if self.use_importance_weights and batch.weights is not None:
            weighted = per_sample * batch.weights.to(per_sample)
        loss = self.weight * weighted.mean()

        with torch.no_grad():  # cosine over the kept terms: 1 − L/2
            kept = mask.sum()
            metrics = {"loss": per_sample.mean(),
                       "cosine": 1.0 - 0.5 * (dist * mask).sum() / kept.clamp_min(1.0),
                       "kept_fraction": kept / mask.numel()}
        return LossOutput({"loss": loss}, metrics)

    def grad_clip_groups(self) -> list[list[nn.Parameter]]:
        """The transition model, clipped on its own (SPR clips ``dynamics_model`` separately from
        the stem); the predictor is not clipped, as in SPR."""
        return [list(self.transition_model.parameters())]

    def target_networks(self) -> Sequence[TargetNetwork]:
        """target ← tau·online + (1−tau)·target for the encoder and the projector; tau = 1 copies
        parameters and buffers exactly (rlpyt's ``update_state_dict``), tau < 1 averages
        parameters."""
        return self._targets
