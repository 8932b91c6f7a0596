"""Spatial-only masking: a fresh random patch pattern for every frame (no temporal blocks).

The paper's "spatial mask" ablation of the cube mask (docs/faithfulness.md#ablation-axes): the same
exact patch count per frame as ``cube``, but nothing is held across consecutive steps, so the
decoder cannot rely on a region being hidden for a whole block.
"""

from __future__ import annotations

from mlr_registry.maskers.cube import CubeMasker
from mlr_registry.registry import register


@register("masker", "spatial")
class SpatialMasker(CubeMasker):
    """``cube`` with blocks of one step: ``(b t c h w) -> (b t 1 h w)`` bool, True = masked."""

    def __init__(self, patch_size: int = 12, mask_ratio: float = 0.5, seed: int | None = None) -> None:
        """patch_size, mask_ratio, seed: as ``maskers.cube``."""
        super().__init__(patch_size=patch_size, mask_ratio=mask_ratio, block_size=1, seed=seed)
