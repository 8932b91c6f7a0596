"""Mask-based Latent Reconstruction: the MLR auxiliary objective (Yu et al., NeurIPS 2022).

One update (docs/faithfulness.md#atari-mlr-loss for Atari, docs/faithfulness.md#dmc-mlr-loss for DMC):

1. ``obs = batch.obs[:, :T]`` (T = ``sequence_length`` = K+1 = 16), ``mask = masker(obs)``;
   masked pixels are zeroed on the raw pixels, **before** augmentation.
2. Online: ``encoder(augment(masked))`` → latents ``(b t d)`` → ``decoder(latents, actions)``
   → ``predictor(projector(·))``.
3. Target (no grad): ``target_projector(target_encoder(augment(obs / 255)))`` on the
   **unmasked** frames with their own, independently drawn augmentation.
4. Per (b, t): ``‖p/max(‖p‖, eps) − z/max(‖z‖, eps)‖²`` (= 2 − 2·cos), in float32, times the
   PER importance weight of the sample, averaged over all b·t entries (every timestep, no
   terminal masking), times ``weight``.

The target encoder (and projector) follow the online ones by EMA in :meth:`update_targets`;
the agent decides when to call it (Rainbow: right after this forward, before its optimizer
step, which gives the reference's one-update lag; SAC: every 2nd step).

Atari and DMC differ only in parameters here; the DMC gin file sets ``target_tau = 0.05``,
``projector = "mlp"``, ``predictor = "mlp"``, ``unnormalized_masked_input = False``,
``init = "trunc_normal"`` and ``reinit_encoder_linear = True``.

Ablations (gin/ablations/): ``distance = "mse"`` (plain latent MSE instead of the normalized
distance), ``projector = "none"`` / ``predictor = "none"`` (identity heads), and any registered
decoder (``decoders.mlp``: no temporal context; ``decoders.none``: no decoder). The pixel-target
variant is its own loss, ``losses.pixel_mlr`` (losses/pixel_reconstruction.py), built from the
helpers below (``sequence_window``, ``mask_pixels``, ``importance_weighted``, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.decoders.transformer import TransformerDecoder, trunc_normal_init
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.losses.auxiliary import AuxHost, AuxiliaryLoss, Metrics
from mlr_registry.maskers.cube import CubeMasker
from mlr_registry.registry import register
from mlr_registry.target_network import target_update

PROJECTORS = ("agent", "mlp", "none")
PREDICTORS = ("linear", "mlp", "none")
DISTANCES = ("cosine", "mse")
INITS = ("torch_default", "trunc_normal")


def normalized_squared_distance(p: torch.Tensor, z: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """``(n f), (n f) -> (n)``: ``‖p/max(‖p‖,eps) − z/max(‖z‖,eps)‖²`` summed over features, in
    float32 (``F.normalize`` with ``eps``; equals 2 − 2·cos when both norms exceed eps)."""
    p, z = p.float(), z.float()
    p = p / p.norm(dim=-1, keepdim=True).clamp_min(eps)
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (p - z).pow(2).sum(dim=-1)


def mean_squared_error(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``(n f), (n f) -> (n)``: ``mean_f (p − z)²`` in float32, no normalization (the "mse"
    distance ablation: the latents' scale now matters, so the encoder could shrink it)."""
    return (p.float() - z.float()).pow(2).mean(dim=-1)


# --- shared by the masked-sequence objectives (this loss and losses.pixel_mlr) ---------------

def check_sequence_length(name: str, value: int) -> None:
    """``value`` must be an integer >= 1 (``name`` is the gin parameter, for the message)."""
    check_range(name, value, 1, integer=True)


def check_decoder_factory(name: str, decoder: object) -> None:
    if not callable(decoder):
        raise ConfigError(f"{name} = {decoder!r} must be a decoder factory, e.g. "
                          "@decoders.transformer (without parentheses)")


def build_decoder(factory: Callable[..., nn.Module], agent: AuxHost) -> nn.Module:
    """The decoder sized from the agent ("widths follow the encoder")."""
    return factory(dim=int(agent.latent_dim), num_actions=int(agent.num_actions),
                   discrete_actions=bool(agent.discrete_actions))


def sequence_window(batch: Batch, length: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``length`` steps: obs ``(b t c h w)`` uint8 and actions ``(b t)`` or ``(b t a)``.
    ``name`` is the loss's sequence_length parameter, for the error message."""
    if batch.obs.shape[1] < length:
        raise ConfigError(f"{name} = {length} but the batch holds only "
                          f"{batch.obs.shape[1]} steps; sample longer sequences from replay")
    return batch.obs[:, :length], batch.action[:, :length]


def mask_pixels(obs: torch.Tensor, masker: Callable[[torch.Tensor], torch.Tensor],
                unnormalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``obs (b t c h w) uint8 -> (mask (b t 1 h w) bool, masked (b t c h w) float)``: masked
    pixels are zeroed on the raw pixels, before any augmentation; ``masked`` is
    in [0, 255] when ``unnormalized`` (the Atari quirk), else in [0, 1]."""
    mask = masker(obs)  # True = zeroed
    expected = (*obs.shape[:2], 1, *obs.shape[3:])
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != expected:
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ConfigError(f"masker {type(masker).__name__} returned {got} for observations {tuple(obs.shape)}; "
                          f"a masker returns a bool mask (b t 1 h w) = {expected}, True where pixels are zeroed")
    masked = obs.masked_fill(mask, 0).float()
    if not unnormalized:
        masked = masked / 255.0
    return mask, masked


def importance_weighted(per_sample: torch.Tensor, batch: Batch, use: bool) -> torch.Tensor:
    """``per_sample (b ...)`` times the PER importance weight of its sequence,
    when ``use`` and the batch has weights; unchanged otherwise."""
    if not use or batch.weights is None:
        return per_sample
    w = batch.weights.to(per_sample)
    return per_sample * w.reshape(-1, *([1] * (per_sample.dim() - 1)))


def decoder_clip_groups(decoder: nn.Module) -> list[list[nn.Parameter]]:
    """The decoder's ``block_parameters()`` (its transformer blocks: docs/faithfulness.md#atari-optimisation), or
    all its parameters when it has no such method; no group when that is empty."""
    blocks = getattr(decoder, "block_parameters", decoder.parameters)
    group = list(blocks())
    return [group] if group else []


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


def _frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def _output_size(module: nn.Module, in_features: int) -> int:
    """Width of a projector's output: its ``out_features`` if it says, else one dry run."""
    size = getattr(module, "out_features", None)
    if isinstance(size, int):
        return size
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        return int(module(torch.zeros(1, in_features, device=device)).shape[-1])


@register("loss", "mlr")
class MLRLoss(AuxiliaryLoss):
    """The MLR loss; owns the decoder, predictor, target encoder and target projector (and the
    projector itself when ``projector = "mlp"``)."""

    def __init__(self, masker: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 decoder: Callable[..., nn.Module] = TransformerDecoder, weight: float = 1.0,
                 sequence_length: int = 16, target_tau: float = 1.0, projector: str = "agent",
                 projection_hidden: int = 100, predictor: str = "linear",
                 unnormalized_masked_input: bool = True, use_importance_weights: bool = True,
                 normalize_eps: float = 1e-3, init: str = "torch_default",
                 reinit_encoder_linear: bool = False, distance: str = "cosine") -> None:
        """
        Args:
            masker: a masker instance (gin: ``@maskers.cube()``), ``obs (b t c h w) -> mask
                (b t 1 h w)``. None (default) builds ``CubeMasker()`` here, so gin bindings of
                ``maskers.cube`` apply.
            decoder: a decoder factory (gin: ``@decoders.transformer``, no parentheses), called
                in :meth:`setup` as ``decoder(dim=agent.latent_dim, num_actions=...,
                discrete_actions=...)``; its other parameters come from gin.
            weight: factor on the loss. 1 in both papers (Atari: added to the RL loss;
                DMC: its own optimizer).
            sequence_length: K+1 consecutive steps used, from the start of the sampled
                sequence: 16 (``--jumps 15``) in both papers; an ablation axis.
            target_tau: EMA weight on the online networks in :meth:`update_targets`
                (target ← tau·online + (1−tau)·target). Atari 1 = hard copy; DMC 0.05
                (0.1 walker).
            projector: "agent" = the agent's own ``projector`` online (Atari: the Q-head's first
                value/advantage layers, mu weights, 512-d) and a deep copy of it as the
                target projector; "mlp" = this loss's ``Linear(d, projection_hidden) ReLU
                Linear(projection_hidden, d)`` and an independently initialized target
                projector of the same shape (DMC, docs/faithfulness.md#dmc-mlr-loss); "none" = the
                identity on both sides (ablation: the loss compares decoded latents with
                target-encoder latents directly; on Atari MLR then no longer shapes the Q-head).
            projection_hidden: hidden width of the "mlp" projector and predictor (DMC
                ``latent_dim`` = 100).
            predictor: "linear" = ``Linear(p, p)`` (Atari); "mlp" = ``Linear(p,
                projection_hidden) ReLU Linear(projection_hidden, p)`` (DMC); "none" = the
                identity (ablation: the online and target branches become symmetric but for
                the decoder). p is the projector's output width (d with projector "none").
            unnormalized_masked_input: the Atari DTYPE QUIRK (docs/faithfulness.md#atari-masking): the
                masked online branch gets ``mask·raw pixels`` in [0, 255], NOT divided by 255,
                while the target branch gets [0, 1]. True (default) reproduces the released
                Atari code; False divides both by 255 (clean behaviour; DMC).
            use_importance_weights: multiply each sample's loss by the PER importance weight
                ``batch.weights`` (Atari); ignored when the batch has no weights.
            normalize_eps: the eps of the L2 normalization (1e-3 in both references).
            init: "torch_default" (Atari) or "trunc_normal" (DMC: trunc-normal std 0.02 cut at
                ±0.02, bias 0) for this loss's own Linear layers (projector, target projector,
                predictor). The decoder has its own ``init`` parameter.
            reinit_encoder_linear: the DMC reference's MTM init also re-initializes the
                Linear/LayerNorm layers of the shared online encoder and of the target encoder,
                each with an independent draw (docs/faithfulness.md#dmc-initialisation). Requires init="trunc_normal".
            distance: "cosine" (both papers): ``‖p/‖p‖ − z/‖z‖‖²`` = 2 − 2·cos per step;
                "mse" (ablation): ``mean_f (p − z)²``, no normalization, in float32. The
                ``mlr_cosine`` metric is the cosine similarity either way.
        """
        super().__init__()
        check_range("losses.mlr.weight", weight, 0.0)
        check_sequence_length("losses.mlr.sequence_length", sequence_length)
        check_range("losses.mlr.target_tau", target_tau, 0.0, 1.0, low_open=True)
        check_range("losses.mlr.projection_hidden", projection_hidden, 1)
        check_range("losses.mlr.normalize_eps", normalize_eps, 0.0, low_open=True)
        for name, value, allowed in (("projector", projector, PROJECTORS),
                                     ("predictor", predictor, PREDICTORS), ("init", init, INITS),
                                     ("distance", distance, DISTANCES)):
            if value not in allowed:
                raise ConfigError(f"losses.mlr.{name} = {value!r}; expected one of {', '.join(allowed)}")
        for name, value, example in (("masker", masker, "@maskers.cube()"),
                                     ("decoder", decoder, "@decoders.transformer")):
            if value is not None and (isinstance(value, (str, int, float)) or not callable(value)):
                raise ConfigError(f"losses.mlr.{name} = {value!r} is a {type(value).__name__}; "
                                  f"expected a {name}, e.g. losses.mlr.{name} = {example}")
        if reinit_encoder_linear and init != "trunc_normal":
            raise ConfigError("losses.mlr.reinit_encoder_linear = True re-initializes the encoder with this "
                              f"loss's init scheme; set losses.mlr.init = 'trunc_normal' (got {init!r})")
        check_decoder_factory("losses.mlr.decoder", decoder)
        self.masker = masker if masker is not None else CubeMasker()
        self.decoder_factory = decoder
        self.weight = float(weight)
        self.sequence_length = sequence_length
        self.target_tau = float(target_tau)
        self.projector_kind = projector
        self.projection_hidden = int(projection_hidden)
        self.predictor_kind = predictor
        self.unnormalized_masked_input = bool(unnormalized_masked_input)
        self.use_importance_weights = bool(use_importance_weights)
        self.normalize_eps = float(normalize_eps)
        self.init = init
        self.reinit_encoder_linear = bool(reinit_encoder_linear)
        self.distance = distance
        # (online encoder, online projector): the modules the targets track. A plain tuple, so
        # the agent's modules are not registered here (no duplicates in optimizers/state_dicts).
        self._online: tuple[nn.Module, nn.Module] | None = None

    def setup(self, agent: AuxHost) -> None:
        d = int(agent.latent_dim)
        self.decoder = build_decoder(self.decoder_factory, agent)
        self.target_encoder = _frozen_copy(agent.encoder)
        if self.reinit_encoder_linear:  # after the copy: the two get independent draws (DMC)
            trunc_normal_init(agent.encoder)
            trunc_normal_init(self.target_encoder)
        if self.projector_kind == "agent":
            if getattr(agent, "projector", None) is None:
                raise ConfigError("losses.mlr.projector = 'agent' but the agent exposes no projector; "
                                  "use losses.mlr.projector = 'mlp'")
            online_projector = agent.projector
            self.target_projector = _frozen_copy(online_projector)
            p = _output_size(online_projector, d)
        elif self.projector_kind == "mlp":
            self.projector = _mlp(d, self.projection_hidden, d)
            self.target_projector = _mlp(d, self.projection_hidden, d).requires_grad_(False)
            online_projector, p = self.projector, d
        else:  # "none"
            self.projector, self.target_projector = nn.Identity(), nn.Identity()
            online_projector, p = self.projector, d
        if self.predictor_kind == "linear":
            self.predictor = nn.Linear(p, p)
        elif self.predictor_kind == "mlp":
            self.predictor = _mlp(p, self.projection_hidden, p)
        else:  # "none"
            self.predictor = nn.Identity()
        if self.init == "trunc_normal":
            for module in (self.predictor, self.target_projector,
                           self.projector if self.projector_kind == "mlp" else None):
                if module is not None:
                    trunc_normal_init(module)
        # Place the new networks beside the agent's encoder.
        param = next(agent.encoder.parameters(), None)
        if param is not None:
            for name in ("decoder", "target_encoder", "target_projector", "predictor", "projector"):
                module = getattr(self, name, None)
                if isinstance(module, nn.Module):
                    module.to(param.device)
        self._online = (agent.encoder, online_projector)

    def _online_projector(self, agent: AuxHost) -> nn.Module:
        return agent.projector if self.projector_kind == "agent" else self.projector

    def forward(self, batch: Batch, agent: AuxHost) -> tuple[torch.Tensor, Metrics]:
        if self._online is None:
            raise RuntimeError("MLRLoss.setup(agent) must be called before the loss is used")
        T = self.sequence_length
        obs, actions = sequence_window(batch, T, "losses.mlr.sequence_length")  # (b t c h w) uint8
        b = obs.shape[0]

        # Online branch: mask raw pixels, then augment (the reference's order).
        _, masked = mask_pixels(obs, self.masker, self.unnormalized_masked_input)  # (b t c h w)
        masked = rearrange(masked, "b t c h w -> (b t) c h w")
        latents = agent.encoder(agent.augment(masked)).reshape(b * T, -1)  # (n d)
        decoded = self.decoder(rearrange(latents, "(b t) d -> b t d", b=b), actions)  # (b t d)
        pred = self.predictor(self._online_projector(agent)(rearrange(decoded, "b t d -> (b t) d")))

        # Target branch: unmasked frames, their own augmentation draw, no gradient.
        with torch.no_grad():
            target_in = rearrange(obs, "b t c h w -> (b t) c h w").float() / 255.0
            target_latents = self.target_encoder(agent.augment(target_in)).reshape(b * T, -1)
            target = self.target_projector(target_latents)  # (n p)

        if self.distance == "cosine":
            distance = normalized_squared_distance(pred, target, self.normalize_eps)
        else:
            distance = mean_squared_error(pred, target)
        per_step = rearrange(distance, "(b t) -> b t", b=b)  # (b t) float32
        weighted = importance_weighted(per_step, batch, self.use_importance_weights)
        loss = self.weight * weighted.mean()

        with torch.no_grad():  # cosine = 1 − L/2 (exact when both norms exceed eps)
            nsd = per_step if self.distance == "cosine" else normalized_squared_distance(
                pred, target, self.normalize_eps)
            metrics = {"mlr_loss": per_step.mean(), "mlr_cosine": 1.0 - 0.5 * nsd.mean()}
        return loss, metrics

    def grad_clip_groups(self) -> list[list[nn.Parameter]]:
        """The decoder's transformer blocks, clipped on their own (docs/faithfulness.md#atari-optimisation). The
        predictor and action embedding are left unclipped; the Atari projector is the agent's
        and is clipped with its stem. A decoder without ``block_parameters()`` is clipped
        whole; one without parameters (``decoders.none``) gives no group."""
        if self._online is None:
            raise RuntimeError("MLRLoss.setup(agent) must be called before grad_clip_groups()")
        return decoder_clip_groups(self.decoder)

    @torch.no_grad()
    def update_targets(self) -> None:
        """target ← tau·online + (1−tau)·target for the encoder and the projector.

        tau = 1 is an exact hard copy of parameters and buffers (Atari's ``load_state_dict``);
        tau < 1 averages parameters only (DMC's ``soft_update_params``)."""
        if self._online is None:
            raise RuntimeError("MLRLoss.setup(agent) must be called before update_targets()")
        encoder, projector = self._online
        for online, target in ((encoder, self.target_encoder), (projector, self.target_projector)):
            target_update(online, target, self.target_tau)
