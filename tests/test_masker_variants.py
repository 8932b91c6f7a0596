"""The masker ablations: spatial (a pattern per frame), tube (one pattern per sequence), random
(a cube per sample) and frame (whole steps dropped), each against its definition."""

from __future__ import annotations

import pytest
import torch

from mlr_registry.errors import ConfigError
from mlr_registry.maskers.frame import FrameMasker
from mlr_registry.maskers.random_cube import RandomCubeMasker
from mlr_registry.maskers.spatial import SpatialMasker
from mlr_registry.maskers.tube import TubeMasker

OBS = torch.zeros(4, 16, 4, 84, 84, dtype=torch.uint8)


def _patterns(mask: torch.Tensor) -> torch.Tensor:
    """(b t 1 84 84) -> (b t 49) bool, one value per 12-px patch (checked to be uniform)."""
    patches = mask[:, :, 0].unfold(2, 12, 12).unfold(3, 12, 12)  # (b t 7 7 12 12)
    flat = patches.flatten(-2)
    assert bool((flat == flat[..., :1]).all()), "patches are not uniform squares"
    return flat[..., 0].flatten(2)


def test_spatial_draws_a_pattern_per_frame_with_exact_counts():
    torch.manual_seed(0)
    pat = _patterns(SpatialMasker()(OBS))
    assert pat.shape == (4, 16, 49)
    assert bool((pat.sum(-1) == 25).all())
    assert bool((pat[0] == pat[1]).all())  # shared by the batch
    distinct = {tuple(p.tolist()) for p in pat[0]}
    assert len(distinct) > 12  # 16 independent draws of C(49, 25) patterns


def test_tube_holds_one_pattern_for_the_whole_sequence():
    torch.manual_seed(0)
    pat = _patterns(TubeMasker()(torch.zeros(2, 24, 1, 84, 84)))
    assert bool((pat == pat[:, :1]).all()) and bool((pat.sum(-1) == 25).all())


def test_random_draws_a_cube_per_sample():
    torch.manual_seed(0)
    pat = _patterns(RandomCubeMasker()(OBS))
    assert bool((pat[:, :8] == pat[:, :1]).all()) and bool((pat[:, 8:] == pat[:, 8:9]).all())
    assert not bool((pat[0] == pat[1]).all())
    assert bool((pat.sum(-1) == 25).all())


def test_frame_drops_exact_whole_steps_shared_by_the_batch():
    torch.manual_seed(0)
    mask = FrameMasker(mask_ratio=0.25)(OBS)
    per_step = mask.flatten(2)  # (b t pixels)
    assert bool((per_step.all(-1) | ~per_step.any(-1)).all())  # each step all or nothing
    dropped = per_step.all(-1)
    assert bool((dropped.sum(-1) == 4).all()) and bool((dropped == dropped[:1]).all())


def test_variants_keep_the_cube_checks():
    with pytest.raises(ConfigError, match="not divisible by patch_size"):
        SpatialMasker(patch_size=10)(OBS)
    with pytest.raises(ConfigError, match="mask_ratio"):
        FrameMasker(mask_ratio=1.5)
