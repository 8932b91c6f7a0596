"""Ablation decoder: a per-step MLP, i.e. the predictive latent decoder without temporal context.

The transformer decoder (``decoders.transformer``, docs/faithfulness.md#atari-transformer-decoder) fills in a
masked frame's latent from the other frames of the sequence and from the actions. This decoder
keeps its width and its MLP sublayers but removes the attention: every state token goes through
``depth`` pre-LN residual MLP blocks ``x += MLP(LN(x))`` on its own, so the output at step t
depends on the latent (and, if used, the action) at step t only. Comparing the two isolates
what the paper credits to the decoder: using the context of the sequence.

Actions, when used, are embedded as in the transformer (``Linear(one_hot(a_t))`` or
``Linear(a_t)``) and **added** to the state token of the same step (a per-step decoder cannot
have separate action tokens). No positional embedding is added: each step is decoded alone by
the same function.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.decoders.transformer import INITS, trunc_normal_init
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.registry import register


class MLPBlock(nn.Module):
    """``x + MLP(LN(x))``: the transformer block's MLP sublayer (GELU, hidden = dim·mlp_ratio)
    without its attention sublayer."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (... d) -> (... d)
        return x + self.mlp(self.norm(x))


@register("decoder", "mlp")
class MLPDecoder(nn.Module):
    """``decoder(latents (b t d), actions (b t) int64 | (b t a) float) -> (b t d)``, each step
    independently (no mixing over t)."""

    def __init__(self, dim: int, num_actions: int, discrete_actions: bool = True, depth: int = 2,
                 mlp_ratio: float = 2.0, use_actions: bool = True, init: str = "torch_default") -> None:
        """
        Args:
            dim: token width = the encoder's latent size d; supplied by the loss at setup (do
                not bind it in gin).
            num_actions: number of discrete actions, or the continuous action dimension;
                supplied by the loss.
            discrete_actions: actions are indices (one-hot embedded) rather than vectors;
                supplied by the loss.
            depth: number of residual MLP blocks; 2 = as many MLP sublayers as the paper's
                2-block transformer.
            mlp_ratio: hidden width / dim of each block's MLP; 2 as in the transformer (Atari
                6272, DMC 100), so the per-step compute matches the transformer's MLPs.
            use_actions: add the step's action embedding to its state token. False decodes
                from the masked latent alone.
            init: "torch_default" (Atari) or "trunc_normal" (DMC: Linear weights trunc-normal
                std 0.02 cut at ±0.02, bias 0; LayerNorm 1/0), as ``decoders.transformer.init``.
        """
        super().__init__()
        for name, value in (("dim", dim), ("num_actions", num_actions), ("depth", depth)):
            check_range(f"decoders.mlp.{name}", value, 1, integer=True)
        check_range("decoders.mlp.mlp_ratio", mlp_ratio, 0.0, low_open=True)
        hidden = int(dim * mlp_ratio)
        if hidden < 1:
            raise ConfigError(f"decoders.mlp: mlp_ratio = {mlp_ratio} gives an empty MLP at dim {dim}")
        if init not in INITS:
            raise ConfigError(f"decoders.mlp: init = {init!r}; expected one of {', '.join(INITS)}")
        self.dim = dim
        self.num_actions = num_actions
        self.discrete_actions = bool(discrete_actions)
        self.use_actions = bool(use_actions)
        self.action_embedding = nn.Linear(num_actions, dim) if self.use_actions else None
        self.blocks = nn.ModuleList(MLPBlock(dim, hidden) for _ in range(depth))
        if init == "trunc_normal":
            trunc_normal_init(self)

    def block_parameters(self) -> Iterator[nn.Parameter]:
        """The MLP blocks' parameters: clipped on their own by MLR, like the transformer's
        blocks (docs/faithfulness.md#atari-optimisation); the action embedding is not in the group."""
        return self.blocks.parameters()

    def forward(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 3 or latents.shape[-1] != self.dim:
            raise ValueError(f"decoder expects latents (b t {self.dim}), got {tuple(latents.shape)}")
        b, t, _ = latents.shape
        x = latents
        if self.action_embedding is not None:
            if self.discrete_actions:
                if actions.shape != (b, t):
                    raise ValueError(f"decoder expects discrete actions (b t) = {(b, t)}, "
                                     f"got {tuple(actions.shape)}")
                action_in = F.one_hot(actions.long(), self.num_actions)
            else:
                if actions.shape != (b, t, self.num_actions):
                    raise ValueError(f"decoder expects continuous actions (b t a) = {(b, t, self.num_actions)}, "
                                     f"got {tuple(actions.shape)}")
                action_in = actions
            x = x + self.action_embedding(action_in.to(self.action_embedding.weight.dtype)).to(x.dtype)
        for block in self.blocks:
            x = block(x)  # (b t d), acting on the last axis only
        return x
