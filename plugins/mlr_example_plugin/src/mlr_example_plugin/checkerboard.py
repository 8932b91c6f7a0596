"""A checkerboard masker: alternate patches are masked, and the board flips every frame.

It follows the masker contract: ``masker(obs (b t c h w)) -> mask (b t 1 h w)`` bool, True where
a pixel is zeroed, computed on obs's device without a Python loop over samples.
"""

from __future__ import annotations

import torch
from einops import repeat

from mlr_registry import register
from mlr_registry.errors import ConfigError


@register("masker", "checkerboard")
class CheckerboardMasker:
    def __init__(self, patch_size: int = 12, flip_every: int = 1):
        """patch_size: square patch side in pixels; flip_every: frames between board flips."""
        if patch_size < 1 or flip_every < 1:
            raise ConfigError(f"checkerboard: patch_size = {patch_size} and flip_every = {flip_every} "
                              "must both be >= 1")
        self.patch_size = patch_size
        self.flip_every = flip_every

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        b, t, _, h, w = obs.shape
        p = self.patch_size
        if h % p or w % p:
            raise ConfigError(f"checkerboard: image {h}x{w} is not divisible by patch_size = {p}")
        rows = torch.arange(h // p, device=obs.device)
        cols = torch.arange(w // p, device=obs.device)
        steps = torch.arange(t, device=obs.device) // self.flip_every
        board = (rows[None, :, None] + cols[None, None, :] + steps[:, None, None]) % 2 == 1  # (t gh gw)
        pixels = repeat(board, "t gh gw -> t (gh p1) (gw p2)", p1=p, p2=p)
        return repeat(pixels, "t h w -> b t 1 h w", b=b)
