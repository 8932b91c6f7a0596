"""BBF's encoder: the Impala ResNet, widened (docs/bbf.md#encoder).

Three stages; stage i: Conv(3×3, s1, same padding) → MaxPool(3×3, s2, same padding) → 2
residual blocks ``x + Conv(ReLU(Conv(ReLU(x))))``; a final ReLU. Stage widths (16, 32, 32) ×
``width_scale`` (BBF: 4, so 64, 128, 128). No normalization layers, no dropout. Conv weights
Xavier-uniform, biases 0 (Flax's ``xavier_uniform`` and zeros). The map is flattened in C·H·W
order and min-max renormalized per sample with eps 1e-5 (BBF's ``renormalize``).

"Same" padding as JAX pads it: total ``max((out − 1)·stride + k − n, 0)``, the smaller half before
(84 → 42 → 21 → 11 with the pooling's −∞ padding); every 3×3 stride-1 conv pads 1 on each side.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mlr_registry.encoders.nature_cnn import renormalize
from mlr_registry.errors import check_range
from mlr_registry.initialization import xavier_uniform_
from mlr_registry.registry import register

RENORMALIZE_EPS = 1e-5  # BBF's renormalize: (x - min) / (max - min + 1e-5)


def same_max_pool(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """(n c h w) → (n c ⌈h/s⌉ ⌈w/s⌉): max pooling with JAX's "SAME" padding (−∞, smaller half first)."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dim first
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, stride)


def pooled_size(n: int, stages: int, stride: int = 2) -> int:
    for _ in range(stages):
        n = -(-n // stride)
    return n


class ResidualBlock(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))``, both convs 3×3 at one width."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ResidualStage(nn.Module):
    """Conv(3×3) → same max-pool (stride 2) → ``num_blocks`` residual blocks."""

    def __init__(self, in_channels: int, width: int, num_blocks: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(same_max_pool(self.conv(x)))


@register("encoder", "impala_cnn")
class ImpalaCNN(nn.Module):
    """(n c h w) float in [0, 1] → (n d) float latent, d = C·H·W of the last stage (BBF at 84×84:
    128·11·11 = 15,488).

    Args:
        in_channels: input channels; the agent supplies it (4 stacked frames on Atari).
        channels: the stages' base widths (Impala's (16, 32, 32)).
        width_scale: multiplies every width (BBF: 4; Impala itself: 1).
        num_blocks: residual blocks per stage (2).
        image_size: input height and width, used only to compute ``output_shape`` (84).
        renormalize: per-sample min-max of the flattened map with eps 1e-5, as BBF's network does
            to every latent it encodes (True).
    """

    def __init__(self, in_channels: int, channels: Sequence[int] = (16, 32, 32), width_scale: int = 4,
                 num_blocks: int = 2, image_size: int = 84, renormalize: bool = True):
        super().__init__()
        check_range("impala_cnn.in_channels", in_channels, 1, integer=True)
        check_range("impala_cnn.width_scale", width_scale, 1, integer=True)
        check_range("impala_cnn.num_blocks", num_blocks, 0, integer=True)
        check_range("impala_cnn.image_size", image_size, 1, integer=True)
        widths = [int(c) * int(width_scale) for c in channels]
        for w in widths:
            check_range("impala_cnn.channels entry", w, 1)
        self.stages = nn.Sequential(*(ResidualStage(c_in, c_out, num_blocks)
                                      for c_in, c_out in zip((in_channels, *widths[:-1]), widths, strict=True)))
        self.reset_parameters()
        self.renormalize = bool(renormalize)
        size = pooled_size(int(image_size), len(widths))
        self.output_shape: tuple[int, int, int] = (widths[-1], size, size)
        self.output_dim: int = widths[-1] * size * size

    def reset_parameters(self) -> None:
        """BBF's initializer: Xavier-uniform kernels, zero biases (also a reset's fresh draw)."""
        xavier_uniform_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.stages(x)).flatten(1)  # (n c h w) -> (n d), C·H·W order
        return renormalize(z, RENORMALIZE_EPS) if self.renormalize else z
