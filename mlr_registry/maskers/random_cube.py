"""Per-sample cube masking: independent cube patterns for every sequence of the batch.

The references draw ONE mask per update and share it over the batch
(docs/faithfulness.md#atari-masking); this ablation asks whether that sharing matters. Registered as ``random``.
"""

from __future__ import annotations

from mlr_registry.maskers.cube import CubeMasker
from mlr_registry.registry import register


@register("masker", "random")
class RandomCubeMasker(CubeMasker):
    """``cube`` with a fresh draw per sample: ``(b t c h w) -> (b t 1 h w)``, parameters as
    ``maskers.cube``."""

    per_sample = True
