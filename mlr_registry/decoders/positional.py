"""The fixed sinusoidal positional table that MLR's decoder adds to its tokens.

Both official MLR codes (Atari ``models.py``, DMC ``mtm_sac.py``;
docs/faithfulness.md#atari-transformer-decoder) use the Transformer table of Vaswani et al.: no
learned positions, indexed by **timestep** (state t and action t get the same row).
"""

from __future__ import annotations

import math

import torch

from mlr_registry.errors import ConfigError


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """``(length, dim)`` float32 table, ``pe[p, 2i] = sin(p·10000^(−2i/dim))`` and
    ``pe[p, 2i+1] = cos(p·10000^(−2i/dim))``.

    For odd ``dim`` the last column ``dim − 1`` is a sine whose cosine partner would fall
    outside the table (the frequencies still use ``dim``, as the formula says).
    """
    if length < 1 or dim < 1:
        raise ConfigError(f"sinusoidal_table needs length >= 1 and dim >= 1, got length={length}, dim={dim}")
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (p 1)
    # 10000^(-2i/dim) for the even column indices 2i = 0, 2, 4, ...
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    angles = position * inv_freq  # (p ceil(dim/2))
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return pe.to(torch.float32)
