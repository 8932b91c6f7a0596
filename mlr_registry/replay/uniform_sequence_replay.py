"""Uniform sequence sampling: every valid sequence start equally likely, all weights 1.
Storage and batch assembly are :class:`~mlr_registry.replay.sequence_replay.SequenceReplay`'s."""

from __future__ import annotations

import torch

from mlr_registry.registry import register
from mlr_registry.replay.sequence_replay import SequenceReplay


@register("replay", "uniform_sequence")
class UniformSequenceReplay(SequenceReplay):
    """The same storage and batches, starts drawn uniformly over the valid ones; weights are 1.

    rlpyt's ``UniformSequenceReplayFrameBuffer``: the same valid range as the prioritized
    buffer, ``randint`` over it, with replacement. Equivalent to PER with alpha = beta = 0.
    """

    gin_name = "uniform_sequence"

    def __init__(
        self,
        observation_shape: tuple = (4, 84, 84),
        capacity: int = 100_000,
        sequence_length: int = 16,
        n_step: int = 10,
        discount: float = 0.99,
        one_step_done_n: bool = True,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        """
        Args:
            observation_shape: (frame_stack, height, width) of the env's uint8 observation.
            capacity: steps kept (the reference's 1e6 never wraps in 100k steps either, so the
                behaviour is identical). Must exceed ``off_backward + off_forward``.
            sequence_length: K+1 consecutive steps used by MLR (16).
            n_step: n of the n-step return (10).
            discount: gamma of the n-step return (0.99).
            one_step_done_n: ``done_n`` is the 1-step done, as the pinned rlpyt stores it
                (True, faithful); False: any done in the n steps.
            device: where storage and batches live.
            seed: seed of this replay's own torch generator.
        """
        super().__init__(observation_shape, capacity, sequence_length, n_step, discount, device, seed,
                         one_step_done_n)

    def _sample_starts(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._valid_range()
        starts = torch.randint(lo, hi + 1, (batch_size,), generator=self._generator, device=self.device)
        return starts % self.capacity, torch.ones(batch_size, dtype=torch.float32, device=self.device)

