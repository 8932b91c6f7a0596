"""Tube masking: one random patch pattern held for the whole sequence.

The paper's temporal-only ("tube") ablation of the cube mask: the same patches are hidden at
every step, so what is masked can never be read off a neighbouring frame.
"""

from __future__ import annotations

from mlr_registry.maskers.cube import CubeMasker
from mlr_registry.registry import register


@register("masker", "tube")
class TubeMasker(CubeMasker):
    """``cube`` with one block spanning all ``t`` steps: ``(b t c h w) -> (b t 1 h w)``."""

    def __init__(self, patch_size: int = 12, mask_ratio: float = 0.5, seed: int | None = None) -> None:
        """patch_size, mask_ratio, seed: as ``maskers.cube``."""
        super().__init__(patch_size=patch_size, mask_ratio=mask_ratio, block_size=1, seed=seed)

    def block_length(self, t: int) -> int:
        return t

    def __repr__(self) -> str:  # no block_size: one block spans the whole sequence
        return f"TubeMasker(patch_size={self.patch_size}, mask_ratio={self.mask_ratio}, seed={self.seed})"
