"""Cube masking: random patches in space, held for blocks of consecutive timesteps.

MLR's spatio-temporal mask (docs/faithfulness.md#atari-masking, docs/faithfulness.md#dmc-masking; the official
``masking_generator.py:CubeMaskGenerator`` in both). Per call:

- the frame is cut into a ``(h/patch_size) × (w/patch_size)`` grid of square patches
  (Atari 84/12 → 7×7, DMC 100/10 → 10×10);
- the sequence of ``t`` steps is cut into ``t/block_size`` temporal blocks aligned at t = 0;
- each block gets its own uniformly random set of exactly ``num_masked`` patches, and that
  spatial pattern is repeated for every step of the block (a "cube");
- the same mask is used for every sample of the batch and every channel (the stacked frames
  of one observation share it), and it is drawn fresh on every call (i.e. every update).

The exact count (not Bernoulli per patch) is what both references do. We compute
``num_masked = num_patches − int((1 − mask_ratio)·num_patches)``, i.e. the number of *kept*
patches is rounded down. That reproduces both references at mask_ratio 0.5: Atari keeps
``int(0.5·49) = 24`` and masks 25 (its ``mask_ratio`` is really a kept fraction: a 1 in its
vector means "keep", as its model computes ``obs * mask``), DMC masks ``int(0.5·100) = 50``.
At other ratios with a non-integer ``mask_ratio·num_patches`` the masked count is rounded up
(Atari's convention), where DMC's code would round it down.
"""

from __future__ import annotations

import torch
from einops import repeat

from mlr_registry.errors import ConfigError, check_range
from mlr_registry.maskers.seeded import SeededGenerators
from mlr_registry.registry import register


@register("masker", "cube")
class CubeMasker:
    """``masker(obs) -> mask``: obs ``(b t c h w)`` (any dtype; only its shape and device are
    used) → mask ``(b t 1 h w)`` bool, True where a pixel is masked (set to 0).

    The result is an expanded view (one ``(t 1 h w)`` mask broadcast over the batch, no copy):
    read it or broadcast it, do not write into it.
    """

    def __init__(self, patch_size: int = 12, mask_ratio: float = 0.5, block_size: int = 8,
                 seed: int | None = None) -> None:
        """
        Args:
            patch_size: side of a square patch in pixels. Atari 12 on 84×84 (7×7 grid);
                DMC 10 on the uncropped 100×100 frames. The frame
                height and width must be multiples of it.
            mask_ratio: fraction of patches masked per frame, as an exact count (see the
                module docstring for the rounding). 0.5 in every paper run.
            block_size: number of consecutive timesteps that share one spatial pattern.
                Atari 8 (two blocks over 16 steps); DMC 4 (cartpole, reacher) or 8. The
                sequence length must be a multiple of it, as in the references (which crash
                otherwise).
            seed: when given, masks come from this masker's own ``torch.Generator`` seeded
                with it (one generator per device, created on first use), so they are
                reproducible independently of other random draws. ``None`` (default) uses the
                torch global RNG, which the trainer's seeding covers.
        """
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ConfigError(f"patch_size = {patch_size!r} must be a positive integer (pixels)")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"block_size = {block_size!r} must be a positive integer (timesteps)")
        check_range("maskers.cube.mask_ratio", mask_ratio, 0.0, 1.0)
        self.patch_size = patch_size
        self.mask_ratio = float(mask_ratio)
        self.block_size = block_size
        self.generators = SeededGenerators(seed)

    @property
    def seed(self) -> int | None:
        """The seed of the masker's own generators; None: it draws from torch's global RNG."""
        return self.generators.seed

    def num_masked(self, num_patches: int) -> int:
        """Exact number of masked patches per frame for a grid of ``num_patches``."""
        return num_patches - int((1.0 - self.mask_ratio) * num_patches + 1e-9)

    per_sample = False  # one mask for the whole batch (the paper); True: one per sample

    def block_length(self, t: int) -> int:
        """Timesteps sharing one spatial pattern (variants override: spatial 1, tube t)."""
        return self.block_size

    def _grid(self, obs: torch.Tensor) -> tuple[int, int, int, int]:
        if obs.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects obs of shape (b t c h w), got {tuple(obs.shape)}")
        b, t, _, h, w = obs.shape
        p = self.patch_size
        if h % p or w % p:
            raise ConfigError(
                f"{type(self).__name__}: frame size {h}x{w} is not divisible by patch_size = {p}; "
                "choose a patch_size that divides both"
            )
        return b, t, h // p, w // p

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        b, t, gh, gw = self._grid(obs)
        block = self.block_length(t)
        if t % block:
            raise ConfigError(
                f"{type(self).__name__}: sequence length t = {t} is not divisible by block_size = "
                f"{block}; choose a block_size that divides the sequence length"
            )
        num_patches = gh * gw
        sets = b if self.per_sample else 1
        device = obs.device
        # argsort of iid uniform noise is a uniform random permutation per block; the patches
        # whose rank is below num_masked form a uniform random subset of exactly that size.
        noise = torch.rand(sets, t // block, num_patches, device=device, generator=self.generators(device))
        pattern = noise.argsort(dim=-1) < self.num_masked(num_patches)  # (s nb gh*gw) bool
        p = self.patch_size
        mask = repeat(pattern, "s nb (gh gw) -> s (nb bs) 1 (gh ph) (gw pw)",
                      gh=gh, gw=gw, bs=block, ph=p, pw=p)  # (s t 1 h w)
        return mask.expand(b, -1, -1, -1, -1)  # (b t 1 h w); shared by the batch unless per_sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(patch_size={self.patch_size}, mask_ratio={self.mask_ratio}, "
                f"block_size={self.block_size}, seed={self.seed})")
