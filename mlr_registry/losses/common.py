"""Helpers shared by the built-in auxiliary losses: distances, the masked-sequence steps of
MLR and its pixel variant (window, masking before augmentation, PER weighting, the decoder and
its clip group), target copies and the seeded maskers' random streams."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.losses.auxiliary import LossContext


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


def check_sequence_length(name: str, value: int) -> None:
    """``value`` must be an integer >= 1 (``name`` is the gin parameter, for the message)."""
    check_range(name, value, 1, integer=True)


def check_decoder_factory(name: str, decoder: object) -> None:
    """``decoder`` must be a factory (``@decoders.transformer``, without parentheses)."""
    if not callable(decoder):
        raise ConfigError(f"{name} = {decoder!r} must be a decoder factory, e.g. "
                          "@decoders.transformer (without parentheses)")


def build_decoder(factory: Callable[..., nn.Module], context: LossContext) -> nn.Module:
    """The decoder sized from the agent's context ("widths follow the encoder")."""
    return factory(dim=int(context.latent_dim), num_actions=int(context.num_actions),
                   discrete_actions=bool(context.discrete_actions))


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


def mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    """``Linear(inp, hidden) ReLU Linear(hidden, out)``."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy without gradients: a target network's starting point."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def agent_target_network(context: LossContext, name: str) -> tuple[nn.Module, nn.Module]:
    """The agent's own target encoder and projector, for a loss whose ``target`` is "agent"
    (SPR and MLR on BBF); ``name`` is the loss's gin name, for the message."""
    if context.target_encoder is None or context.target_projector is None:
        raise ConfigError(f"{name}.target = 'agent' reads the agent's target encoder and projector, "
                          f"but this agent keeps none; use {name}.target = 'own'")
    return context.target_encoder, context.target_projector


def output_size(module: nn.Module, in_features: int) -> int:
    """Width of a projector's output: its ``out_features`` if it says, else one dry run."""
    size = getattr(module, "out_features", None)
    if isinstance(size, int):
        return size
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        return int(module(torch.zeros(1, in_features, device=device)).shape[-1])


def masker_rng_state(masker: object) -> dict[str, torch.Tensor]:
    """A seeded masker's generator states by device (its ``generators``, a
    :class:`~mlr_registry.maskers.seeded.SeededGenerators`); {} for a masker without."""
    generators = getattr(masker, "generators", None)
    return dict(generators.state_dict()) if generators is not None else {}


def load_masker_rng_state(masker: object, state: Mapping[str, torch.Tensor]) -> None:
    """Restore what :func:`masker_rng_state` returned."""
    if state:
        masker.generators.load_state_dict(dict(state))  # type: ignore[attr-defined]
