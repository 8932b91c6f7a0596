"""Augmentations: exact integer shifts of the replicate-padded image, offset ranges, intensity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlr_registry.agents.augmentation import Augmentation, center_crop, intensity, random_crop, random_shift
from mlr_registry.errors import ConfigError


def _find_offsets(out: torch.Tensor, source: torch.Tensor, size: int, max_offset: int) -> list:
    """Per image of out (n c size size): each (dy, dx) where it equals source[i, :, dy:, dx:] exactly."""
    found = []
    for i in range(out.shape[0]):
        hits = [(dy, dx) for dy in range(max_offset + 1) for dx in range(max_offset + 1)
                if torch.equal(out[i], source[i, :, dy:dy + size, dx:dx + size])]
        found.append(hits)
    return found


def test_random_shift_is_an_exact_crop_of_the_replicate_padded_image():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 20, 20)  # random values: a match identifies the offset uniquely
    out = random_shift(x, pad=4)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
    offsets = _find_offsets(out, padded, 20, 8)
    assert all(len(hits) == 1 for hits in offsets)
    dys = {hits[0][0] for hits in offsets}
    dxs = {hits[0][1] for hits in offsets}
    assert dys <= set(range(9)) and dxs <= set(range(9))
    assert len(dys) > 4 and len(dxs) > 4  # independent per image, not one shift for the batch


def test_random_shift_offsets_cover_zero_to_two_pad_inclusive():
    torch.manual_seed(1)
    n = 2000
    # A ramp image: the top-left output pixel after the shift reveals the offsets directly.
    rows = torch.arange(10.0)[:, None].expand(10, 10)
    cols = torch.arange(10.0)[None, :].expand(10, 10)
    x = torch.stack([rows, cols])[None].repeat(n, 1, 1, 1)  # (n 2 10 10)
    out = random_shift(x, pad=2)
    # padded coordinate 0 maps to clamp(0 - 2) = 0, so out[.., 0, 0] = clamp(offset - pad, 0, 9)
    ys = out[:, 0, 0, 0]
    first_inner = out[:, 0, 2, 0]  # row 2 of the output = clamp(offset + 2 - 2) = offset, unclamped
    assert set(first_inner.long().tolist()) == {0, 1, 2, 3, 4}
    counts = torch.bincount(first_inner.long(), minlength=5).float()
    assert counts.min() > n / 5 * 0.8  # roughly uniform
    assert ys.min() == 0 and ys.max() == 2
    # the device and leading dims are kept
    y = random_shift(torch.rand(2, 5, 3, 12, 12), pad=4)
    assert y.shape == (2, 5, 3, 12, 12)


def test_random_shift_with_generator_is_reproducible_and_pad_zero_is_identity():
    x = torch.rand(4, 2, 16, 16)
    a = random_shift(x, 4, generator=torch.Generator().manual_seed(3))
    b = random_shift(x, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert random_shift(x, pad=0) is x


def test_random_crop_and_center_crop():
    torch.manual_seed(0)
    x = torch.rand(200, 3, 12, 12)
    out = random_crop(x, 8)
    assert out.shape == (200, 3, 8, 8)
    offsets = _find_offsets(out, x, 8, 4)
    assert all(len(h) == 1 for h in offsets)
    seen = {h[0] for h in offsets}
    assert {dy for dy, _ in seen} == set(range(5)) and {dx for _, dx in seen} == set(range(5))
    assert torch.equal(center_crop(x, 8), x[..., 2:10, 2:10])
    assert random_crop(torch.rand(2, 4, 3, 100, 100), 84).shape == (2, 4, 3, 84, 84)
    with pytest.raises(ConfigError, match="random_crop.size"):
        random_crop(x, 13)


def test_intensity_is_one_factor_per_image_within_range():
    torch.manual_seed(0)
    x = torch.rand(4000, 2, 5, 5) + 0.1
    out = intensity(x, scale=0.05)
    factor = out / x
    per_image = factor.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))  # constant per image
    f = per_image[:, 0]
    assert f.min() >= 0.9 - 1e-6 and f.max() <= 1.1 + 1e-6
    assert (f == f.min()).sum() > 10 and (f == f.max()).sum() > 10  # clamp at ±2σ is hit (~2.3% each)
    assert abs(f.mean().item() - 1.0) < 0.005 and 0.04 < f.std().item() < 0.05
    assert torch.equal(intensity(torch.zeros(3, 1, 2, 2)), torch.zeros(3, 1, 2, 2))  # zeros stay zero


def test_augmentation_composes_shift_then_intensity():
    aug = Augmentation()
    assert (aug.shift_pad, aug.intensity_scale) == (4, 0.05)
    x = torch.rand(6, 4, 84, 84)
    out = aug(x)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    assert torch.equal(Augmentation(shift_pad=0, intensity_scale=0.0)(x), x)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(aug(x, g1), aug(x, g2))
    with pytest.raises(ConfigError, match="shift_pad"):
        Augmentation(shift_pad=-1)
    with pytest.raises(ConfigError, match="intensity_scale"):
        Augmentation(intensity_scale=-0.1)


# --- the vectorized crop against the original index-grid implementation -------------------------

def _reference_crop(x, top, left, out_h, out_w, pad=0):
    """The original ``_crop`` (four broadcast index grids), kept as the reference."""
    n, c, h, w = x.shape
    rows = top[:, None] + torch.arange(out_h, device=x.device) - pad
    cols = left[:, None] + torch.arange(out_w, device=x.device) - pad
    if pad:
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    return x[torch.arange(n, device=x.device)[:, None, None, None],
             torch.arange(c, device=x.device)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


def _reference_random_shift(x, pad, generator):
    flat = x.reshape(-1, *x.shape[-3:])
    n, _, h, w = flat.shape
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    return _reference_crop(flat, top, left, h, w, pad=pad).reshape(x.shape)


def _reference_random_crop(x, size, generator):
    h, w = x.shape[-2:]
    flat = x.reshape(-1, *x.shape[-3:])
    n = flat.shape[0]
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(0, w - size + 1, (n,), generator=generator)
    return _reference_crop(flat, top, left, size, size).reshape(*x.shape[:-2], size, size)


@pytest.mark.parametrize("shape, pad", [((6, 5, 4, 84, 84), 4), ((7, 3, 20, 24), 2), ((5, 1, 9, 9), 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_random_shift_equals_the_reference_for_the_same_draws(shape, pad, dtype):
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    g_new, g_ref = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(3):  # the same numbers consumed in the same order, call after call
        assert torch.equal(random_shift(x, pad, generator=g_new), _reference_random_shift(x, pad, g_ref))
    assert torch.equal(g_new.get_state(), g_ref.get_state())
    # the global generator is consumed identically too
    torch.manual_seed(5)
    a = random_shift(x, pad)
    torch.manual_seed(5)
    assert torch.equal(a, _reference_random_shift(x, pad, None))


@pytest.mark.parametrize("shape, size", [((6, 9, 100, 100), 84), ((2, 3, 3, 12, 10), 8), ((4, 2, 7, 7), 7)])
def test_random_crop_equals_the_reference_for_the_same_draws(shape, size):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    g_new, g_ref = torch.Generator().manual_seed(12), torch.Generator().manual_seed(12)
    for _ in range(3):
        assert torch.equal(random_crop(x, size, generator=g_new), _reference_random_crop(x, size, g_ref))
    assert torch.equal(g_new.get_state(), g_ref.get_state())
    # a non-contiguous input (SAC's exclusive-offset crop slices the last row and column off first)
    sliced = x[..., :-1, :-1]
    size = min(size, sliced.shape[-1])
    g_new, g_ref = torch.Generator().manual_seed(13), torch.Generator().manual_seed(13)
    assert torch.equal(random_crop(sliced, size, generator=g_new), _reference_random_crop(sliced, size, g_ref))
