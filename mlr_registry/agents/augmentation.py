"""Image augmentations the agents train under (docs/faithfulness.md#atari-augmentation).

All functions take ``(... c h w)`` tensors, draw independent randomness per image (every leading
index), stay on the input's device and use no Python loop over images. Crops are exact integer
pixel shifts built from index grids (no interpolation), as kornia's ``RandomCrop`` is.
"""

from __future__ import annotations

import torch

from mlr_registry.errors import check_range


def _crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, out_h: int, out_w: int,
          pad: int = 0) -> torch.Tensor:
    """Per-image crop of (n c h w) ``x`` at integer offsets ``top``/``left`` (n) into the image
    replicate-padded by ``pad``: out[k, :, i, j] = x[k, :, clamp(top_k + i − pad), clamp(left_k + j − pad)].

    One vectorized gather either way, no per-image loop, the padded image never materialized:
    with ``pad`` a ``gather`` of clamped linear pixel indices (one (n out_h·out_w) index shared
    by the channels); without, advanced indexing of the sliding-window view
    ``x.unfold(2, out_h, 1).unfold(3, out_w, 1)`` (n c h' w' out_h out_w), which copies each
    window as strided blocks (about 2× faster than an index gather on CPU for 100 → 84 crops).
    """
    n, c, h, w = x.shape
    if not pad:
        windows = x.unfold(2, out_h, 1).unfold(3, out_w, 1)  # (n c h-out_h+1 w-out_w+1 out_h out_w)
        return windows[torch.arange(n, device=x.device), :, top, left]  # (n c out_h out_w)
    rows = (top[:, None] + torch.arange(out_h, device=x.device) - pad).clamp(0, h - 1)  # (n out_h)
    cols = (left[:, None] + torch.arange(out_w, device=x.device) - pad).clamp(0, w - 1)  # (n out_w)
    pixels = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, out_h * out_w)  # (n 1 out_h·out_w)
    out = x.reshape(n, c, h * w).gather(2, pixels.expand(n, c, out_h * out_w))  # (n c out_h·out_w)
    return out.reshape(n, c, out_h, out_w)


def _offsets(n: int, high: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """n integers uniform in 0..high inclusive, on x's device."""
    return torch.randint(0, high + 1, (n,), device=x.device, generator=generator)


def random_shift(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """ReplicationPad2d(pad) then a random crop back to (h, w): offsets uniform in 0..2·pad
    inclusive per image (SPR's ``nn.Sequential(ReplicationPad2d(4), RandomCrop((84, 84)))``)."""
    if pad == 0:
        return x
    flat = x.reshape(-1, *x.shape[-3:])  # (n c h w)
    n, _, h, w = flat.shape
    top, left = _offsets(n, 2 * pad, x, generator), _offsets(n, 2 * pad, x, generator)
    return _crop(flat, top, left, h, w, pad=pad).reshape(x.shape)


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random size×size crop per image, no padding: offsets uniform in 0..(H − size) inclusive
    (the DMC agents' crop of 100×100 renders to 84×84)."""
    h, w = x.shape[-2:]
    check_range("random_crop.size", size, 1, min(h, w))
    flat = x.reshape(-1, *x.shape[-3:])
    n = flat.shape[0]
    top, left = _offsets(n, h - size, x, generator), _offsets(n, w - size, x, generator)
    return _crop(flat, top, left, size, size).reshape(*x.shape[:-2], size, size)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size×size crop (what DMC agents see when acting)."""
    h, w = x.shape[-2:]
    check_range("center_crop.size", size, 1, min(h, w))
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def intensity(x: torch.Tensor, scale: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """x · (1 + scale · clamp(N(0, 1), −2, 2)), one factor per image (SPR's ``Intensity``), so the
    factor lies in [1 − 2·scale, 1 + 2·scale] and zeros stay zero."""
    if scale == 0:
        return x
    r = torch.randn((*x.shape[:-3], 1, 1, 1), device=x.device, dtype=x.dtype, generator=generator)
    return x * (1.0 + scale * r.clamp(-2.0, 2.0))


class Augmentation:
    """Shift then intensity, the Atari agents' ``augmentation=["shift", "intensity"]`` with
    aug_prob 1. A plain callable the agent owns; aux losses reach it through
    ``agent.augment``.

    Args:
        shift_pad: replicate padding of the random shift (4 px; 0 disables the shift).
        intensity_scale: the intensity noise scale (0.05; 0 disables it).
    """

    def __init__(self, shift_pad: int = 4, intensity_scale: float = 0.05):
        check_range("augmentation.shift_pad", shift_pad, 0)
        check_range("augmentation.intensity_scale", intensity_scale, 0)
        self.shift_pad = int(shift_pad)
        self.intensity_scale = float(intensity_scale)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(... c h w) float → same shape, independently augmented per image."""
        x = random_shift(x, self.shift_pad, generator)
        return intensity(x, self.intensity_scale, generator)

    def __repr__(self) -> str:
        return f"Augmentation(shift_pad={self.shift_pad}, intensity_scale={self.intensity_scale})"


# The aux branch's intensity noise scale (the reference's Intensity(scale=0.05)).
AUX_INTENSITY_SCALE = 0.05


def aux_augmentation(x: torch.Tensor, size: int) -> torch.Tensor:
    """The aux branch's augmentation: an independent random ``size`` crop per image (offsets
    0..h−size inclusive, kornia's ``RandomCrop``), then intensity ×(1 + 0.05·clamp(N(0,1), ±2)).
    (n c h w) float → (n c size size)."""
    return intensity(random_crop(x, size), AUX_INTENSITY_SCALE)


def batch_crop(obs: torch.Tensor, size: int, exclusive: bool) -> torch.Tensor:
    """The SAC batch's random crop, independent per image: offsets 0..h−size−1 when
    ``exclusive`` (cropping the last row and column off first makes the inclusive
    ``random_crop`` draw exactly the reference's range), else 0..h−size."""
    h, w = obs.shape[-2:]
    if h == size and w == size:
        return obs
    if exclusive:
        obs = obs[..., : h - 1, : w - 1]
    return random_crop(obs, size)
