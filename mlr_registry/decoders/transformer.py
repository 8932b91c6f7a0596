"""MLR's predictive latent decoder: a small bidirectional transformer over state and action tokens.

It reconstructs the latents of the masked frames from their context (docs/faithfulness.md#atari-transformer-decoder
for Atari, docs/faithfulness.md#dmc-mlr-loss for DMC; ``vit_modules.Block`` in the official code):

- state tokens: the online encoder's latents of the masked frames, ``s_t + pe[t]``;
- action tokens: ``Linear(one_hot(a_t))`` (discrete) or ``Linear(a_t)`` (continuous),
  plus the **same** ``pe[t]`` (a timestep embedding: no token-type embedding, no mask token);
- ``depth`` pre-LN blocks ``x += Attn(LN(x)); x += MLP(LN(x))``, full bidirectional
  attention, no dropout, **no final LayerNorm**; the outputs at the state tokens are returned.

Token order. Atari concatenates ``[s_0..s_{T-1}, a_0..a_{T-1}]``; DMC interleaves
``[s_0, a_0, s_1, a_1, ...]``. With no attention mask and the positional vectors added to the
tokens (not derived from the token index), every layer is permutation-equivariant over tokens,
so both layouts give identical state outputs (``tests/test_decoder.py`` checks this). We use
the Atari layout for both.

Sizes: Atari dim 3136 (the flattened 64×7×7 conv map), 1 head, MLP 6272: ≈78.7M parameters
per block. DMC dim 50, 1 head, MLP 100.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mlr_registry.decoders.positional import sinusoidal_table
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.registry import register

INITS = ("torch_default", "trunc_normal")


def trunc_normal_init(module: nn.Module) -> None:
    """The DMC reference's ``_init_weights`` (docs/faithfulness.md#dmc-initialisation), applied to
    every submodule: Linear weight ~ N(0, 0.02²) truncated at ±0.02 (timm's ``trunc_normal_``
    called with a=−std, b=std), bias 0; LayerNorm weight 1, bias 0. Other layers untouched."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.02, a=-0.02, b=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Attention(nn.Module):
    """Multi-head self-attention without a mask: qkv ``Linear(d, 3d, bias=False)``, softmax
    scale ``head_dim^-0.5``, output projection ``Linear(d, d)`` with bias.

    :meth:`attend` is ``softmax(q kᵀ · scale) v`` written out, the reference's own code (timm's
    ``Attention``). The execution layer may set a fused kernel of the same function in its place
    on an instance (``execution.attention``; ``tests/test_decoder.py`` checks they agree)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b n d) -> (b n d)
        q, k, v = rearrange(self.qkv(x), "b n (k h e) -> k b h n e", k=3, h=self.num_heads)
        out = self.attend(q, k, v)  # (b h n e)
        return self.proj(rearrange(out, "b h n e -> b n (h e)"))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(b h n e) queries, keys, values -> (b h n e)."""
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # (b h n n)
        return weights @ v


class Block(nn.Module):
    """Pre-LN transformer block (timm/BEiT ``Block`` with dropout 0, drop_path 0, no layer
    scale)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register("decoder", "transformer")
class TransformerDecoder(nn.Module):
    """``decoder(latents (b t d), actions (b t) int64 | (b t a) float) -> (b t d)``."""

    def __init__(self, dim: int, num_actions: int, discrete_actions: bool = True, depth: int = 2,
                 num_heads: int = 1, mlp_ratio: float = 2.0, action_tokens: bool = True,
                 max_len: int = 128, init: str = "torch_default", width: int | None = None) -> None:
        """
        Args:
            dim: token width = the encoder's latent size d. Supplied by the loss from the
                agent at setup ("widths follow the encoder"); do not bind it in gin.
            num_actions: number of discrete actions, or the continuous action dimension.
                Supplied by the loss from the agent; do not bind it in gin.
            discrete_actions: actions are indices (one-hot embedded) rather than vectors.
                Supplied by the loss from the agent.
            depth: number of transformer blocks; 2 in both papers' runs. An ablation axis of the paper.
            num_heads: attention heads; 1 in both references (hard-coded in DMC). ``dim``
                must be a multiple of it.
            mlp_ratio: MLP hidden width / dim; 2 in both references (Atari 6272, DMC 100).
            action_tokens: add the action tokens (the paper's default). False = the "without
                actions" ablation: only the T state tokens are attended over.
            max_len: rows of the sinusoidal table, i.e. the longest sequence accepted; 128 in
                both references.
            init: "torch_default" (Atari: no special init) or "trunc_normal"
                (DMC: Linear weights trunc-normal std 0.02 cut at ±0.02, bias 0, LayerNorm
                1/0).
            width: the blocks' token width w. None (default, both references) = ``dim``: the
                latents are the tokens. An integer = the width ablation: ``Linear(dim, w)``
                before the blocks and ``Linear(w, dim)`` after them (the action embedding and
                positional table are then w wide). On Atari w = 512 instead of 3136 cuts the
                decoder from ≈157M to ≈7.4M parameters. ``w`` must be a multiple of num_heads.
        """
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("num_actions", num_actions, 1), ("depth", depth, 1),
                                 ("num_heads", num_heads, 1), ("max_len", max_len, 1),
                                 ("width", dim if width is None else width, 1)):
            check_range(f"decoders.transformer.{name}", value, low, integer=True)
        check_range("decoders.transformer.mlp_ratio", mlp_ratio, 0.0, low_open=True)
        tokens = dim if width is None else width  # the blocks' width
        if tokens % num_heads:
            what = "dim" if width is None else "width"
            raise ConfigError(f"decoders.transformer: {what} = {tokens} is not divisible by "
                              f"num_heads = {num_heads}")
        if int(tokens * mlp_ratio) < 1:
            raise ConfigError(f"decoders.transformer: mlp_ratio = {mlp_ratio} gives an empty MLP "
                              f"at width {tokens}")
        if init not in INITS:
            raise ConfigError(f"decoders.transformer: init = {init!r}; expected one of {', '.join(INITS)}")
        self.dim = dim
        self.num_actions = num_actions
        self.discrete_actions = bool(discrete_actions)
        self.action_tokens = bool(action_tokens)
        self.max_len = max_len
        self.width = tokens
        projected = width is not None
        self.input_projection = nn.Linear(dim, tokens) if projected else None  # (b t d) -> (b t w)
        self.output_projection = nn.Linear(tokens, dim) if projected else None  # (b t w) -> (b t d)
        # Fixed, not learned; not saved in checkpoints (it is a function of max_len and width).
        self.register_buffer("pe", sinusoidal_table(max_len, tokens), persistent=False)  # (max_len w)
        self.action_embedding = nn.Linear(num_actions, tokens) if self.action_tokens else None
        self.blocks = nn.ModuleList(Block(tokens, num_heads, mlp_ratio) for _ in range(depth))
        if init == "trunc_normal":
            trunc_normal_init(self)

    def block_parameters(self) -> Iterator[nn.Parameter]:
        """The transformer blocks' parameters: the group MLR clips on its own
        (docs/faithfulness.md#atari-optimisation); the action embedding is not in it."""
        return self.blocks.parameters()

    def tokens(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The input sequence: ``(b t w)`` state tokens (the latents, projected when ``width``
        is set; w = d by default), then (if enabled) ``(b t w)`` action tokens, each with
        ``pe[t]`` added → ``(b t w)`` or ``(b 2t w)``."""
        if latents.dim() != 3 or latents.shape[-1] != self.dim:
            raise ValueError(f"decoder expects latents (b t {self.dim}), got {tuple(latents.shape)}")
        b, t, _ = latents.shape
        if t > self.max_len:
            raise ConfigError(f"decoders.transformer: sequence length {t} exceeds max_len = {self.max_len}")
        if self.input_projection is not None:
            latents = self.input_projection(latents)  # (b t w)
        pe = self.pe[:t].to(latents.dtype)  # (t w)
        states = latents + pe
        if self.action_embedding is None:
            return states
        if self.discrete_actions:
            if actions.shape != (b, t):
                raise ValueError(f"decoder expects discrete actions (b t) = {(b, t)}, "
                                 f"got {tuple(actions.shape)}")
            action_in = F.one_hot(actions.long(), self.num_actions).to(self.action_embedding.weight.dtype)
        else:
            if actions.shape != (b, t, self.num_actions):
                raise ValueError(f"decoder expects continuous actions (b t a) = {(b, t, self.num_actions)}, "
                                 f"got {tuple(actions.shape)}")
            action_in = actions.to(self.action_embedding.weight.dtype)
        acts = self.action_embedding(action_in) + pe  # (b t d)
        return torch.cat([states, acts.to(states.dtype)], dim=1)  # (b 2t d): [s_0..s_T-1, a_0..a_T-1]

    def forward(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        t = latents.shape[1]
        x = self.tokens(latents, actions)
        for block in self.blocks:
            x = block(x)
        x = x[:, :t]  # the state positions; no final LayerNorm
        return x if self.output_projection is None else self.output_projection(x)
