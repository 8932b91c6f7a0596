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

The target encoder (and projector) follow the online ones by EMA: :meth:`target_networks`
declares them and the agent decides when to update them (Rainbow: right after this forward,
before its optimizer step, which gives the reference's one-update lag; SAC: every 2nd step).

Atari and DMC differ only in parameters here; the DMC gin file sets ``target_tau = 0.05``,
``projector = "mlp"``, ``predictor = "mlp"``, ``unnormalized_masked_input = False``,
``init = "trunc_normal"`` and ``reinit_encoder_linear = True``.

Ablations (gin/ablations/): ``distance = "mse"`` (plain latent MSE instead of the normalized
distance), ``projector = "none"`` / ``predictor = "none"`` (identity heads), and any registered
decoder (``decoders.mlp``: no temporal context; ``decoders.none``: no decoder). The pixel-target
variant is its own loss, ``losses.pixel_mlr`` (losses/pixel_reconstruction.py), built from the
helpers of losses/common.py (``sequence_window``, ``mask_pixels``, ``importance_weighted``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from einops import rearrange
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.decoders.transformer import TransformerDecoder, trunc_normal_init
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.losses.auxiliary import AuxiliaryLoss, LossContext, LossOutput
from mlr_registry.losses.common import (
    agent_target_network,
    build_decoder,
    check_decoder_factory,
    check_sequence_length,
    decoder_clip_groups,
    frozen_copy,
    importance_weighted,
    load_masker_rng_state,
    mask_pixels,
    masker_rng_state,
    mean_squared_error,
    mlp,
    normalized_squared_distance,
    output_size,
    sequence_window,
)
from mlr_registry.maskers.cube import CubeMasker
from mlr_registry.registry import register
from mlr_registry.target_network import TargetNetwork

PROJECTORS = ("agent", "mlp", "none")
PREDICTORS = ("linear", "mlp", "none")
DISTANCES = ("cosine", "mse")
INITS = ("torch_default", "trunc_normal")
TARGETS = ("own", "agent")


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
                 reinit_encoder_linear: bool = False, distance: str = "cosine", lr_warmup: int = 0,
                 target: str = "own") -> None:
        """
        Args:
            masker: a masker instance (gin: ``@maskers.cube()``), ``obs (b t c h w) -> mask
                (b t 1 h w)``. None (default) builds ``CubeMasker()`` here, so gin bindings of
                ``maskers.cube`` apply.
            decoder: a decoder factory (gin: ``@decoders.transformer``, no parentheses), called
                in :meth:`setup` as ``decoder(dim=context.latent_dim, num_actions=...,
                discrete_actions=...)``; its other parameters come from gin.
            weight: factor on the loss. 1 in both papers (Atari: added to the RL loss;
                DMC: its own optimizer).
            sequence_length: K+1 consecutive steps used, from the start of the sampled
                sequence: 16 (``--jumps 15``) in both papers; an ablation axis.
            target_tau: EMA weight on the online networks of :meth:`target_networks`
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
            lr_warmup: updates of the inverse-sqrt warm-up of an agent that gives aux losses
                their own optimizer (SAC; 6000 in the DMC reference's ``MTMSacAgent``,
                docs/faithfulness.md#dmc-optimisation); 0 = a constant lr. Rainbow trains the
                loss at its one constant lr and refuses a warm-up.
            target: "own" (both papers): this loss declares its target encoder and projector
                (``target_tau``); "agent": it reads the agent's target network from the context
                (``target_encoder`` / ``target_projector``, BBF's EMA network, as BBF's SPR
                does) and declares none. Needs ``projector = "agent"``.
        """
        super().__init__()
        check_range("losses.mlr.weight", weight, 0.0)
        check_sequence_length("losses.mlr.sequence_length", sequence_length)
        check_range("losses.mlr.target_tau", target_tau, 0.0, 1.0, low_open=True)
        check_range("losses.mlr.projection_hidden", projection_hidden, 1)
        check_range("losses.mlr.normalize_eps", normalize_eps, 0.0, low_open=True)
        check_range("losses.mlr.lr_warmup", lr_warmup, 0, integer=True)
        for name, value, allowed in (("projector", projector, PROJECTORS),
                                     ("predictor", predictor, PREDICTORS), ("init", init, INITS),
                                     ("distance", distance, DISTANCES), ("target", target, TARGETS)):
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
        if target == "agent" and projector != "agent":
            raise ConfigError(f"losses.mlr.target = 'agent' reads the agent's target projector, which matches only "
                              f"its own projector; set losses.mlr.projector = 'agent' (got {projector!r})")
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
        self.lr_warmup = int(lr_warmup)
        self.target = target
        # The declared targets (encoder, projector); a plain tuple, so the agent's modules they
        # refer to are not registered here (no duplicates in optimizers or state_dicts).
        self._targets: tuple[TargetNetwork, ...] = ()

    def setup(self, context: LossContext) -> None:
        d = int(context.latent_dim)
        self.decoder = build_decoder(self.decoder_factory, context)
        own = self.target == "own"
        if not own:
            agent_target_network(context, "losses.mlr")
        if own:
            self.target_encoder = frozen_copy(context.encoder)
        if self.reinit_encoder_linear:  # after the copy: the two get independent draws (DMC)
            trunc_normal_init(context.encoder)
            if own:
                trunc_normal_init(self.target_encoder)
        if self.projector_kind == "agent":
            if context.projector is None:
                raise ConfigError("losses.mlr.projector = 'agent' but the agent exposes no projector; "
                                  "use losses.mlr.projector = 'mlp'")
            online_projector = context.projector
            if own:
                self.target_projector = frozen_copy(online_projector)
            p = output_size(online_projector, d)
        elif self.projector_kind == "mlp":
            self.projector = mlp(d, self.projection_hidden, d)
            self.target_projector = mlp(d, self.projection_hidden, d).requires_grad_(False)
            online_projector, p = self.projector, d
        else:  # "none"
            self.projector, self.target_projector = nn.Identity(), nn.Identity()
            online_projector, p = self.projector, d
        if self.predictor_kind == "linear":
            self.predictor = nn.Linear(p, p)
        elif self.predictor_kind == "mlp":
            self.predictor = mlp(p, self.projection_hidden, p)
        else:  # "none"
            self.predictor = nn.Identity()
        if self.init == "trunc_normal":
            for module in (self.predictor, getattr(self, "target_projector", None),
                           self.projector if self.projector_kind == "mlp" else None):
                if module is not None:
                    trunc_normal_init(module)
        if own:
            self._targets = (TargetNetwork(context.encoder, self.target_encoder, self.target_tau),
                             TargetNetwork(online_projector, self.target_projector, self.target_tau))

    def forward(self, batch: Batch, context: LossContext) -> LossOutput:
        T = self.sequence_length
        obs, actions = sequence_window(batch, T, "losses.mlr.sequence_length")  # (b t c h w) uint8
        b = obs.shape[0]

        # Online branch: mask raw pixels, then augment (the reference's order).
        _, masked = mask_pixels(obs, self.masker, self.unnormalized_masked_input)  # (b t c h w)
        masked = rearrange(masked, "b t c h w -> (b t) c h w")
        latents = context.encoder(context.augment(masked)).reshape(b * T, -1)  # (n d)
        decoded = self.decoder(rearrange(latents, "(b t) d -> b t d", b=b), actions)  # (b t d)
        projector = context.projector if self.projector_kind == "agent" else self.projector
        pred = self.predictor(projector(rearrange(decoded, "b t d -> (b t) d")))

        # Target branch: unmasked frames, their own augmentation draw, no gradient.
        with torch.no_grad():
            target_in = rearrange(obs, "b t c h w -> (b t) c h w").float() / 255.0
            target_encoder, target_projector = ((self.target_encoder, self.target_projector) if self.target == "own"
                                                else agent_target_network(context, "losses.mlr"))
            target_latents = target_encoder(context.augment(target_in)).reshape(b * T, -1)
            target = target_projector(target_latents)  # (n p)

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
            metrics = {"loss": per_step.mean(), "cosine": 1.0 - 0.5 * nsd.mean()}
        return LossOutput({"loss": loss}, metrics)

    def grad_clip_groups(self) -> list[list[nn.Parameter]]:
        """The decoder's transformer blocks, clipped on their own (docs/faithfulness.md#atari-optimisation). The
        predictor and action embedding are left unclipped; the Atari projector is the agent's
        and is clipped with its stem. A decoder without ``block_parameters()`` is clipped
        whole; one without parameters (``decoders.none``) gives no group."""
        return decoder_clip_groups(self.decoder)

    def target_networks(self) -> Sequence[TargetNetwork]:
        """target ← tau·online + (1−tau)·target for the encoder and the projector.

        tau = 1 is an exact hard copy of parameters and buffers (Atari's ``load_state_dict``);
        tau < 1 averages parameters only (DMC's ``soft_update_params``)."""
        return self._targets

    def rng_state(self) -> dict[str, torch.Tensor]:
        return masker_rng_state(self.masker)

    def load_rng_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_masker_rng_state(self.masker, state)
