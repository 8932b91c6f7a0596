"""Cube masker: exact counts, aligned square patches, temporal blocks, batch sharing, errors."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from mlr_registry.errors import ConfigError
from mlr_registry.maskers.cube import CubeMasker
from mlr_registry.maskers.frame import FrameMasker


def _obs(b: int, t: int, c: int, h: int, w: int | None = None) -> torch.Tensor:
    return torch.zeros(b, t, c, h, h if w is None else w, dtype=torch.uint8)


def _patch_grid(mask: torch.Tensor, p: int) -> torch.Tensor:
    """(t 1 h w) bool -> (t gh gw p p): each patch's pixels."""
    return rearrange(mask[:, 0], "t (gh ph) (gw pw) -> t gh gw (ph pw)", ph=p, pw=p)


def test_atari_shape_dtype_and_exact_count():
    masker = CubeMasker(seed=0)  # Atari defaults: patch 12, ratio 0.5, block 8
    mask = masker(_obs(32, 16, 4, 84))
    assert mask.shape == (32, 16, 1, 84, 84)
    assert mask.dtype == torch.bool
    patches = _patch_grid(mask[0], 12)  # (16 7 7 144)
    # Every patch is an aligned 12x12 square: all its pixels agree.
    assert bool((patches.all(-1) == patches.any(-1)).all())
    per_frame = patches[..., 0].flatten(1).sum(1)
    assert per_frame.tolist() == [25] * 16  # 49 - int(0.5 * 49) = 25 masked, 24 kept
    assert int(mask[0].sum()) == 16 * 25 * 144


def test_dmc_exact_count_100_patch_10():
    masker = CubeMasker(patch_size=10, mask_ratio=0.5, block_size=4, seed=1)
    mask = masker(_obs(3, 16, 9, 100))
    assert mask.shape == (3, 16, 1, 100, 100)
    patches = _patch_grid(mask[0], 10)
    assert bool((patches.all(-1) == patches.any(-1)).all())
    assert patches[..., 0].flatten(1).sum(1).tolist() == [50] * 16


@pytest.mark.parametrize("ratio, expected", [(0.0, 0), (1.0, 49), (0.25, 13), (0.75, 37), (0.9, 45)])
def test_count_rounding(ratio, expected):
    masker = CubeMasker(mask_ratio=ratio, seed=0)
    assert masker.num_masked(49) == expected  # 49 - int((1 - ratio) * 49)
    assert int(masker(_obs(1, 8, 1, 84))[0, 0].sum()) == expected * 144
    assert CubeMasker(mask_ratio=0.9).num_masked(10) == 9  # 1e-9 guards (1-0.9)*10 = 0.999...


def test_blocks_share_patterns_and_differ_across_blocks():
    masker = CubeMasker(seed=3)
    mask = masker(_obs(2, 16, 4, 84))[0, :, 0]  # (16 84 84)
    assert torch.equal(mask[:8], mask[:1].expand(8, -1, -1))  # pattern A on t = 0..7
    assert torch.equal(mask[8:], mask[8:9].expand(8, -1, -1))  # pattern B on t = 8..15
    assert not torch.equal(mask[0], mask[8])  # independent: equal with prob 1/C(49,25)

    m4 = CubeMasker(patch_size=10, block_size=4, seed=4)(_obs(1, 16, 9, 100))[0, :, 0]
    blocks = m4.reshape(4, 4, 100, 100)
    assert all(torch.equal(blocks[i, j], blocks[i, 0]) for i in range(4) for j in range(4))
    assert len({blocks[i, 0].numpy().tobytes() for i in range(4)}) == 4


def test_shared_over_batch_and_fresh_every_call():
    masker = CubeMasker(seed=5)
    mask = masker(_obs(8, 16, 4, 84))
    assert all(torch.equal(mask[i], mask[0]) for i in range(8))
    assert mask.stride(0) == 0  # an expanded view, no copy per sample
    assert not torch.equal(masker(_obs(8, 16, 4, 84))[0], mask[0])


def test_seed_reproducible_and_global_rng_when_unseeded():
    a = CubeMasker(seed=11)(_obs(1, 16, 4, 84))
    b = CubeMasker(seed=11)(_obs(1, 16, 4, 84))
    assert torch.equal(a, b)
    torch.manual_seed(7)
    c = CubeMasker()(_obs(1, 16, 4, 84))
    torch.manual_seed(7)
    d = CubeMasker()(_obs(1, 16, 4, 84))
    assert torch.equal(c, d)


def test_patterns_are_uniform():
    # Each patch is masked with probability 25/49; 400 draws, so each frequency ~ 0.51 ± 0.025.
    masker = CubeMasker(block_size=1, seed=0)
    mask = masker(_obs(1, 400, 1, 84))[0, :, 0, ::12, ::12].float()  # (400 7 7)
    freq = mask.mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 25 / 49), atol=0.1)


def test_non_square_frames():
    mask = CubeMasker(patch_size=4, seed=0)(_obs(1, 8, 1, 8, 12))
    assert mask.shape == (1, 8, 1, 8, 12)
    assert int(mask[0, 0].sum()) == (6 - int(0.5 * 6)) * 16


def test_errors():
    with pytest.raises(ConfigError, match="patch_size = 12"):
        CubeMasker()(_obs(1, 16, 4, 100))
    with pytest.raises(ConfigError, match=r"t = 12.*block_size = 8"):
        CubeMasker()(_obs(1, 12, 4, 84))
    with pytest.raises(ConfigError, match="mask_ratio"):
        CubeMasker(mask_ratio=1.5)
    with pytest.raises(ConfigError, match="patch_size"):
        CubeMasker(patch_size=0)
    with pytest.raises(ConfigError, match="block_size"):
        CubeMasker(block_size=2.0)
    with pytest.raises(ValueError, match=r"\(b t c h w\)"):
        CubeMasker()(torch.zeros(16, 4, 84, 84))


@pytest.mark.parametrize("make", [lambda: CubeMasker(patch_size=4, block_size=2, seed=3),
                                  lambda: FrameMasker(mask_ratio=0.5, seed=3)])
def test_seeded_masker_stream_is_checkpointed_and_restored(make):
    """A resumed run masks as the uninterrupted one: the trainers save the seeded maskers'
    generator states with the checkpoint (through the agent's aux_rng_state(), which asks each
    loss's rng_state()) and load them into the rebuilt maskers."""
    from types import SimpleNamespace

    from mlr_registry.losses.auxiliary import load_rng_states, rng_states
    from mlr_registry.losses.mlr import MLRLoss
    from mlr_registry.training.rng import seeded_generator_states, set_seeded_generator_states

    def agent(masker):  # what the trainers see of an agent: aux_rng_state / load_aux_rng_state
        losses = [MLRLoss(masker=masker)]
        return SimpleNamespace(losses=losses, aux_rng_state=lambda: rng_states(losses),
                               load_aux_rng_state=lambda states: load_rng_states(losses, states))

    obs = torch.zeros(2, 4, 1, 8, 8)
    running = agent(make())
    running.losses[0].masker(obs)  # some masks drawn before the checkpoint
    states = seeded_generator_states(running)
    assert list(states) == ["0|cpu"]
    after = [running.losses[0].masker(obs) for _ in range(3)]
    resumed = agent(make())
    set_seeded_generator_states(resumed, states)
    assert all(torch.equal(a, resumed.losses[0].masker(obs)) for a in after)
    fresh = make()
    assert not torch.equal(fresh(obs), after[0]) or not torch.equal(fresh(obs), after[1])  # the stream moved on
    assert seeded_generator_states(agent(CubeMasker())) == {}
    assert seeded_generator_states(SimpleNamespace()) == {}  # an agent without aux losses
