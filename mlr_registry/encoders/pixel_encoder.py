"""The CURL/SAC pixel encoder of the MLR DMC experiments (docs/faithfulness.md#dmc-sac-agent).

Conv(c→64, 3, s2) ReLU, then (num_layers − 1) × [Conv(64→64, 3, s1) ReLU], no padding
(84 → 41 → 39 → 37 → 35); flatten (C·H·W order); Linear(64·35·35 → 50); LayerNorm(50); no tanh
(the reference's ``output_logits=True``). ``detach_conv`` cuts the gradient after the convs only,
so fc and LayerNorm still train (the actor's update). Weights follow the reference's
``weight_init``: orthogonal Linear, delta-orthogonal conv, zero biases.
"""

from __future__ import annotations

import torch
from torch import nn

from mlr_registry.errors import ConfigError, check_range
from mlr_registry.registry import register


def orthogonal_init(module: nn.Module) -> None:
    """The reference's ``weight_init``, applied to every submodule of ``module``.

    Linear: orthogonal weight (gain 1), bias 0. Conv2d: delta-orthogonal (Xiao et al. 2018):
    all taps 0 except the center tap, an orthogonal (out, in) matrix with the ReLU gain √2;
    bias 0. Other layers (LayerNorm) keep their defaults (weight 1, bias 0).
    """
    gain = nn.init.calculate_gain("relu")
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            kh, kw = m.weight.shape[-2:]
            if kh != kw or kh % 2 == 0:
                raise ConfigError(f"delta-orthogonal init needs square, odd conv kernels; got {kh}x{kw}")
            with torch.no_grad():
                m.weight.zero_()
                nn.init.orthogonal_(m.weight[:, :, kh // 2, kw // 2], gain)  # (out in) center tap
                if m.bias is not None:
                    m.bias.zero_()


@register("encoder", "pixel_encoder")
class PixelEncoder(nn.Module):
    """(n c h w) float → (n feature_dim) float (LayerNorm output, no tanh).

    Args:
        in_channels: input channels; the agent supplies it (9 = 3 stacked RGB frames on DMC).
        image_size: input height and width (84, the crop of the 100×100 renders); sets the
            flattened conv size that the fc layer takes.
        num_layers: conv layers, the first with stride 2, the others stride 1 (4).
        num_filters: channels of every conv layer (64 in MLR, not CURL's 32).
        feature_dim: width of the fc layer and LayerNorm, i.e. the latent size (50).
        input_scale: factor applied to the input before the convs. The reference divides
            uint8 pixels by 255 inside the encoder; here every caller (SAC's
            batches, the acting path, MLR's branches) divides by 255 already and passes [0, 1],
            the same arithmetic, so the default is 1.0. Set 1/255 to feed raw 0..255 pixels.
    """

    def __init__(self, in_channels: int, image_size: int = 84, num_layers: int = 4,
                 num_filters: int = 64, feature_dim: int = 50, input_scale: float = 1.0):
        super().__init__()
        check_range("pixel_encoder.in_channels", in_channels, 1)
        check_range("pixel_encoder.num_layers", num_layers, 1)
        check_range("pixel_encoder.num_filters", num_filters, 1)
        check_range("pixel_encoder.feature_dim", feature_dim, 1)
        check_range("pixel_encoder.input_scale", input_scale, 0, low_open=True)
        size = (image_size - 3) // 2 + 1 - 2 * (num_layers - 1)  # k3 s2, then k3 s1 each
        if image_size < 3 or size < 1:
            raise ConfigError(f"pixel_encoder.image_size = {image_size} is too small for {num_layers} "
                              "unpadded 3x3 conv layers (the first with stride 2)")
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_channels, num_filters, 3, stride=2)]
            + [nn.Conv2d(num_filters, num_filters, 3, stride=1) for _ in range(num_layers - 1)])
        self.conv_output_shape: tuple[int, int, int] = (int(num_filters), size, size)
        self.fc = nn.Linear(num_filters * size * size, feature_dim)
        self.ln = nn.LayerNorm(feature_dim)
        self.input_scale = float(input_scale)
        self.output_dim: int = int(feature_dim)
        self.output_shape: tuple[int] = (int(feature_dim),)
        orthogonal_init(self)

    def forward_conv(self, x: torch.Tensor) -> torch.Tensor:
        """(n c h w) → (n C·H·W) flattened conv features."""
        if self.input_scale != 1.0:
            x = x * self.input_scale
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.flatten(1)

    def forward(self, x: torch.Tensor, detach_conv: bool = False) -> torch.Tensor:
        h = self.forward_conv(x)
        if detach_conv:
            h = h.detach()
        return self.ln(self.fc(h))

    def copy_conv_weights_from(self, other: PixelEncoder) -> None:
        """Tie this encoder's convs to ``other``'s: the same Parameter objects afterwards (the
        actor shares the critic's convs)."""
        if len(other.convs) != len(self.convs):
            raise ConfigError(f"cannot tie {len(self.convs)} conv layers to {len(other.convs)}")
        for mine, theirs in zip(self.convs, other.convs, strict=True):
            mine.weight = theirs.weight
            mine.bias = theirs.bias
