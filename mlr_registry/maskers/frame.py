"""Frame masking: whole observations dropped at random steps of the sequence.

An ablation of the cube mask in time only: exactly ``t - int((1 - mask_ratio)·t)`` of the
``t`` steps are blanked entirely (the same rounding as ``cube``), one draw per update shared by
the batch, so the decoder must rebuild whole latents from the remaining steps and the actions.
"""

from __future__ import annotations

import torch
from einops import repeat

from mlr_registry.errors import check_range
from mlr_registry.maskers.seeded import SeededGenerators
from mlr_registry.registry import register


@register("masker", "frame")
class FrameMasker:
    """``masker(obs (b t c h w)) -> mask (b t 1 h w)`` bool, True on every pixel of a dropped step."""

    def __init__(self, mask_ratio: float = 0.5, seed: int | None = None) -> None:
        """mask_ratio: fraction of steps dropped (exact count); seed: own generator when given."""
        check_range("maskers.frame.mask_ratio", mask_ratio, 0.0, 1.0)
        self.mask_ratio = float(mask_ratio)
        self.generators = SeededGenerators(seed)

    @property
    def seed(self) -> int | None:
        """The seed of the masker's own generators; None: it draws from torch's global RNG."""
        return self.generators.seed

    def num_masked(self, t: int) -> int:
        return t - int((1.0 - self.mask_ratio) * t + 1e-9)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.dim() != 5:
            raise ValueError(f"FrameMasker expects obs of shape (b t c h w), got {tuple(obs.shape)}")
        b, t, _, h, w = obs.shape
        noise = torch.rand(t, device=obs.device, generator=self.generators(obs.device))
        steps = noise.argsort() < self.num_masked(t)  # (t) bool
        return repeat(steps, "t -> b t 1 h w", b=b, h=h, w=w)
