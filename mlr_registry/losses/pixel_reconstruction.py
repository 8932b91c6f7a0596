"""Ablation objective: mask-based reconstruction in pixel space instead of latent space.

The paper's choice of target (slides: "visual signals with high information density usually
contain distractions and redundancies for policy learning" → "reconstruction in the *latent*
space"; an ablation axis: docs/faithfulness.md#ablation-axes) is tested by keeping everything of
MLR up to the decoder and changing only what is reconstructed:

1. the same window of ``sequence_length`` steps, the same masker, masked pixels zeroed on the
   raw frames before augmentation (``mask_pixels`` of losses/common.py);
2. the same online encoder and the same predictive latent decoder (``decoders.transformer`` by
   default) over the online latents and actions;
3. then a small conv decoder (:class:`ConvPixelDecoder`) maps each decoded latent back to the
   frame's pixels, and the loss is MAE's: the squared error on the **masked** pixels only,
   against the unmasked frame in [0, 1], per sequence, times its PER weight, averaged over the
   batch, times ``weight``. No projector, predictor, target encoder or EMA.

The target is the frame under the **same** augmentation draw as the online input (MAE
reconstructs its augmented input): masked frames, clean frames and the mask are stacked along
channels and go through the agent's ``augment`` once, then are split again. This needs the agent's
augmentation to treat channels alike (true of the random shift / crop and the per-image
intensity factor of both agents); the intensity factor (±10 % at most) then scales the target
too, so targets may slightly exceed 1. The online input is drawn exactly as in MLR.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mlr_registry.batch import Batch
from mlr_registry.decoders.transformer import TransformerDecoder
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.losses.auxiliary import AuxiliaryLoss, LossContext, LossOutput
from mlr_registry.losses.common import (
    build_decoder,
    check_decoder_factory,
    check_sequence_length,
    decoder_clip_groups,
    importance_weighted,
    load_masker_rng_state,
    mask_pixels,
    masker_rng_state,
    sequence_window,
)
from mlr_registry.maskers.cube import CubeMasker
from mlr_registry.registry import register


def masked_pixel_mse(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``recon, target (b t c h w), mask (b t 1 h w) bool -> (b)`` float32: the mean squared
    error over the masked pixels (all channels) of each sequence; 0 for a sequence with no
    masked pixel. Unmasked pixels do not count (MAE's loss)."""
    err = (recon.float() - target.float()).pow(2).mean(dim=2, keepdim=True)  # (b t 1 h w)
    m = mask.to(err.dtype)
    return (err * m).sum(dim=(1, 2, 3, 4)) / m.sum(dim=(1, 2, 3, 4)).clamp_min(1.0)


class ConvPixelDecoder(nn.Module):
    """``latents (n d) -> pixels (n c H W)``, sized from the encoder's ``latent_shape``.

    A conv latent ``(c0, h0, w0)`` (Atari: 64×7×7) is reshaped to its map; a vector latent
    ``(d,)`` (DMC: 50) goes through ``Linear(d, channels·s·s)`` + ReLU to a ``channels×s×s``
    map (s = ``start_size``). Then ``ConvTranspose2d(k4, s2, p1)`` + ReLU layers double the map
    while it fits in H×W (7 → 14 → 28 → 56 for 84), a bilinear resize reaches H×W exactly, and
    a 3×3 conv gives the c output channels, linear (no sigmoid: the MSE target is in [0, 1])."""

    def __init__(self, latent_shape: Sequence[int], out_channels: int, out_size: tuple[int, int],
                 channels: int = 32, start_size: int = 7) -> None:
        super().__init__()
        latent_shape = tuple(int(s) for s in latent_shape)
        if len(latent_shape) == 3:
            in_ch, h, w = latent_shape
            self.stem: nn.Module = nn.Unflatten(-1, latent_shape)
        elif len(latent_shape) == 1:
            in_ch, h, w = channels, start_size, start_size
            self.stem = nn.Sequential(nn.Linear(latent_shape[0], channels * start_size * start_size),
                                      nn.Unflatten(-1, (channels, start_size, start_size)), nn.ReLU())
        else:
            raise ConfigError(f"pixel decoder: latent_shape {latent_shape} must be (d,) or (c, h, w)")
        self.latent_dim = int(torch.tensor(latent_shape).prod())
        layers: list[nn.Module] = []
        while 2 * h <= out_size[0] and 2 * w <= out_size[1]:
            layers += [nn.ConvTranspose2d(in_ch, channels, 4, stride=2, padding=1), nn.ReLU()]
            in_ch, h, w = channels, 2 * h, 2 * w
        self.upsample = nn.Sequential(*layers)
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.resize = (h, w) != self.out_size
        self.head = nn.Conv2d(in_ch, out_channels, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 2 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"pixel decoder expects latents (n {self.latent_dim}), got {tuple(latents.shape)}")
        x = self.upsample(self.stem(latents))
        if self.resize:
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return self.head(x)  # (n c H W)


@register("loss", "pixel_mlr")
class PixelMLRLoss(AuxiliaryLoss):
    """MLR with a pixel target: masked frames → encoder → latent decoder → conv decoder →
    squared error on the masked pixels. Owns the latent decoder and the conv decoder."""

    def __init__(self, masker: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 decoder: Callable[..., nn.Module] = TransformerDecoder, weight: float = 1.0,
                 sequence_length: int = 16, unnormalized_masked_input: bool = True,
                 use_importance_weights: bool = True, decoder_channels: int = 32,
                 start_size: int = 7, lr_warmup: int = 0) -> None:
        """
        Args:
            masker: as ``losses.mlr.masker`` (gin: ``@maskers.cube()``); None builds
                ``CubeMasker()`` here, so ``maskers.cube`` bindings apply.
            decoder: the latent decoder factory, as ``losses.mlr.decoder`` (gin:
                ``@decoders.transformer``, no parentheses); sized from the agent at setup.
            weight: factor on the loss; 1 as MLR's (the paper's comparison swaps the target
                only; the pixel MSE's scale differs from the cosine distance's).
            sequence_length: K+1 steps used from the start of the sampled sequence; 16 as MLR.
            unnormalized_masked_input: MLR's Atari quirk (docs/faithfulness.md#atari-masking): the masked online input
                in [0, 255]. True (default) keeps the online branch identical to Atari MLR's;
                set False on DMC, as ``losses.mlr``. The pixel target is in [0, 1] either way.
            use_importance_weights: multiply each sequence's loss by its PER weight
                (Atari); ignored when the batch has none.
            decoder_channels: channels of the conv decoder's hidden maps. Not in the paper
                (which gives no architecture for its pixel variant); 32 = the Atari encoder's
                first conv width.
            start_size: side of the first map a vector latent (DMC) is projected to; 7 mirrors
                the Atari encoder's 7×7 map. Unused for conv latents.
            lr_warmup: as ``losses.mlr.lr_warmup`` (SAC's aux optimizer; 0 = a constant lr).
        """
        super().__init__()
        check_range("losses.pixel_mlr.weight", weight, 0.0)
        check_sequence_length("losses.pixel_mlr.sequence_length", sequence_length)
        for name, value in (("decoder_channels", decoder_channels), ("start_size", start_size)):
            check_range(f"losses.pixel_mlr.{name}", value, 1, integer=True)
        check_range("losses.pixel_mlr.lr_warmup", lr_warmup, 0, integer=True)
        check_decoder_factory("losses.pixel_mlr.decoder", decoder)
        self.masker = masker if masker is not None else CubeMasker()
        self.decoder_factory = decoder
        self.weight = float(weight)
        self.sequence_length = sequence_length
        self.unnormalized_masked_input = bool(unnormalized_masked_input)
        self.use_importance_weights = bool(use_importance_weights)
        self.decoder_channels = decoder_channels
        self.start_size = start_size
        self.lr_warmup = int(lr_warmup)

    def setup(self, context: LossContext) -> None:
        """Builds the latent decoder and the conv decoder. The output size is what the agent's
        ``augment`` makes of an observation (``context.observation_shape``): 84×84 on
        Atari, the 84 crop of DMC's 100×100 frames."""
        c, h, w = (int(s) for s in context.observation_shape)
        with torch.no_grad():
            probe = context.augment(torch.zeros(1, 2 * c + 1, h, w, device=context.device))
        if probe.dim() != 4 or probe.shape[1] != 2 * c + 1:
            raise ConfigError(f"losses.pixel_mlr: the agent's augment must keep the channels of "
                              f"(n {2 * c + 1} {h} {w}) inputs, got {tuple(probe.shape)}")
        self.decoder = build_decoder(self.decoder_factory, context)
        self.pixel_decoder = ConvPixelDecoder(context.latent_shape, c, (int(probe.shape[2]), int(probe.shape[3])),
                                              self.decoder_channels, self.start_size)

    def forward(self, batch: Batch, context: LossContext) -> LossOutput:
        obs, actions = sequence_window(batch, self.sequence_length, "losses.pixel_mlr.sequence_length")
        b, _, c = obs.shape[:3]
        mask, masked = mask_pixels(obs, self.masker, self.unnormalized_masked_input)  # mask before augment

        # One augmentation draw for [masked input | clean target | mask], channel-stacked.
        views = torch.cat([masked, obs.float() / 255.0, mask.to(masked.dtype)], dim=2)  # (b t 2c+1 h w)
        views = context.augment(rearrange(views, "b t c h w -> (b t) c h w"))  # (n 2c+1 H W)
        online_in, target, mask_aug = views.split([c, c, 1], dim=1)

        latents = context.encoder(online_in).reshape(online_in.shape[0], -1)  # (n d)
        decoded = self.decoder(rearrange(latents, "(b t) d -> b t d", b=b), actions)  # (b t d)
        recon = self.pixel_decoder(rearrange(decoded, "b t d -> (b t) d"))  # (n c H W)

        split = "(b t) c h w -> b t c h w"
        per_seq = masked_pixel_mse(rearrange(recon, split, b=b), rearrange(target, split, b=b),
                                   rearrange(mask_aug > 0.5, split, b=b))  # (b)
        loss = self.weight * importance_weighted(per_seq, batch, self.use_importance_weights).mean()
        # Its own key: a pixel MSE, not comparable with the latent mlr_loss curve.
        return LossOutput({"loss": loss}, {"loss": per_seq.detach().mean()})

    def grad_clip_groups(self) -> list[list[nn.Parameter]]:
        """The latent decoder's blocks, as MLR; the conv decoder takes
        the predictor's place and, like it, is not clipped."""
        return decoder_clip_groups(self.decoder)

    def rng_state(self) -> dict[str, torch.Tensor]:
        return masker_rng_state(self.masker)

    def load_rng_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_masker_rng_state(self.masker, state)
