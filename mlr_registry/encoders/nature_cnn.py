"""The Nature-DQN conv encoder used by SPR and MLR on Atari (docs/faithfulness.md#atari-agent).

Conv(4→32, 8, s4) → ReLU → Conv(32→64, 4, s2) → ReLU → Conv(64→64, 3, s1) → ReLU, no padding, no
normalization layers, PyTorch default init; flattened in C·H·W order to 3136 values, then
min-max renormalized per sample (SPR's ``renormalize``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlr_registry.errors import ConfigError, check_range
from mlr_registry.registry import register


def renormalize(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Per-sample min-max over all but the first dim: ``(x − min) / (max − min + eps)`` (SPR's
    ``renormalize(·, 1)``): the map on this encoder's output and on SPR's predicted latents."""
    flat = x.flatten(1)
    # amin/amax, not aminmax: aminmax has no derivative in torch 2.11 (seen on a GPU machine)
    lo, hi = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    return ((flat - lo) / (hi - lo + eps)).view_as(x)


@register("encoder", "nature_cnn")
class NatureCNN(nn.Module):
    """(n c h w) float → (n d) float latent, d = C·H·W of the last conv map (3136 at defaults).

    Args:
        in_channels: input channels; the agent supplies it from the observation shape
            (4 stacked grayscale frames on Atari).
        channels, kernels, strides: the three conv layers (the reference: (32, 64, 64),
            (8, 4, 3), (4, 2, 1)); tiny channels make CPU tests fast.
        image_size: input height and width, used only to compute ``output_shape`` (84 on Atari).
        renormalize: per-sample min-max over all d values, ``(x - min) / (max - min)``, as SPR and
            MLR do after every conv stack (``renormalize``). Applied inside the
            encoder, so every branch (RL, masked, target, acting) gets it.
        renormalize_eps: added to ``max - min``. The reference uses none (0, the faithful
            default): a constant feature map (e.g. all ReLUs dead) then gives NaN, as there.

    Inputs are expected in [0, 1] (the caller divides uint8 pixels by 255), except MLR's
    masked branch, which faithfully feeds [0, 255] (docs/faithfulness.md#atari-masking).
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (32, 64, 64),
                 kernels: Sequence[int] = (8, 4, 3), strides: Sequence[int] = (4, 2, 1),
                 image_size: int = 84, renormalize: bool = True, renormalize_eps: float = 0.0):
        super().__init__()
        check_range("nature_cnn.in_channels", in_channels, 1)
        if not len(channels) == len(kernels) == len(strides) or len(channels) == 0:
            raise ConfigError(
                f"nature_cnn: channels {tuple(channels)}, kernels {tuple(kernels)} and strides "
                f"{tuple(strides)} must be non-empty and of the same length (one entry per conv layer)")
        for name, values in (("channels", channels), ("kernels", kernels), ("strides", strides)):
            for v in values:
                check_range(f"nature_cnn.{name} entry", v, 1)
        check_range("nature_cnn.renormalize_eps", renormalize_eps, 0)
        size = image_size
        for k, s in zip(kernels, strides, strict=True):
            size = (size - k) // s + 1
        if size < 1:
            raise ConfigError(f"nature_cnn.image_size = {image_size} is too small for kernels "
                              f"{tuple(kernels)} and strides {tuple(strides)} (no padding)")

        layers: list[nn.Module] = []
        for c_in, c_out, k, s in zip((in_channels, *channels[:-1]), channels, kernels, strides, strict=True):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=k, stride=s), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.renormalize = renormalize
        self.renormalize_eps = float(renormalize_eps)
        self.output_shape: tuple[int, int, int] = (int(channels[-1]), size, size)
        self.output_dim: int = int(channels[-1]) * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.convs(x).flatten(1)  # (n c h w) -> (n d), C·H·W order as the reference's view
        return renormalize(z, self.renormalize_eps) if self.renormalize else z
