"""Which kernel computes attention (``execution.attention``): the same function either way.

A module that declares ``attend(q, k, v)`` (``softmax(q kᵀ · scale) v`` written out, the
reference's code) and its ``head_dim`` gets PyTorch's fused ``scaled_dot_product_attention`` in
its place on that instance, or keeps its own:

- "auto" (default): fused up to head dim :data:`FUSED_MAX_HEAD_DIM`, FlashAttention's largest;
  above it the fused op falls back to a kernel slower than two matmuls at MLR's sizes
  (docs/performance.md#attention-kernel). Atari's single 3,136-d head keeps the written-out
  form, DMC's 50-d head is fused.
- "sdpa": fused everywhere; "math": the written-out form everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn.functional as F
from torch import nn

ATTENTIONS = ("auto", "sdpa", "math")
FUSED_MAX_HEAD_DIM = 256


def declares_attention(module: nn.Module) -> bool:
    return callable(getattr(type(module), "attend", None)) and isinstance(getattr(module, "head_dim", None), int)


def choose_attention(modules: Iterable[nn.Module], setting: str) -> list[nn.Module]:
    """Set each declaring module's kernel per ``setting``; returns the modules given the fused one."""
    fused = []
    for module in modules:
        if not declares_attention(module):
            continue
        if setting == "sdpa" or (setting == "auto" and module.head_dim <= FUSED_MAX_HEAD_DIM):
            object.__setattr__(module, "attend", F.scaled_dot_product_attention)
            fused.append(module)
        elif "attend" in vars(module):
            object.__delattr__(module, "attend")  # back to the module's own
    return fused
