"""``fixed_size_sequences``: the transition replay's MLR-sequence draw without a host sync.

The GPU fast path of :meth:`TransitionReplay.sample_sequences` (off by default): the same draw
without its host sync. Keeping "the first valid ones" needs their count, which the
device knows and the host must wait for (``nonzero``), so every aux step stalls the host until
the GPU has finished the queued critic phase, and the batch size varies, which CUDA graphs
cannot capture. With the switch on, a stable sort puts the valid candidates first, in draw
order, and the first ``batch_size`` rows are taken: the reference's batch exactly whenever at
least ``batch_size`` of the ``2 * batch_size`` candidates are valid. The switch takes this path
only where the host can bound the chance of fewer by ``SHORT_BATCH_ODDS`` (1e-9 per batch,
Hoeffding's inequality on a lower bound of the valid share; see
:meth:`SyncFreeSequenceDraw._sync_free_draw_is_safe`), and draws the reference's way elsewhere
(short episodes, long sequences, small batches: the tiny smoke configs, or a sequence-length
ablation on cartpole). At the DMC defaults (sequences of 16, episodes of 125 to 500 agent steps,
batches of 128) the bound holds from the first aux step. Should a short batch happen anyway,
its missing rows repeat the valid windows in order, and ``short_sequence_batches`` counts it;
the DMC trainer logs that count as ``replay/short_sequence_batches``.
"""

from __future__ import annotations

import math

import torch

# fixed_size_sequences draws without a host sync only where a batch short of valid windows is
# less likely than this (per batch; a run draws 10^5 to 10^6 batches).
SHORT_BATCH_ODDS = 1e-9


class SyncFreeSequenceDraw:
    """The sync-free draw's methods of :class:`TransitionReplay` (a mixin: it reads the replay's
    ``_shortest_episode``, ``_size``, ``sequence_length``, ``num_sequence_starts``, ``device`` and
    ``_short_batches``)."""

    def _sync_free_draw_is_safe(self, batch_size: int) -> bool:
        """True where fewer than ``batch_size`` valid windows among ``2 * batch_size`` uniform draws
        has probability below ``SHORT_BATCH_ODDS``, from what the host knows.

        Consecutive episode ends lie at least ``shortest episode`` transitions apart, so the
        buffer holds at most ``(size - 1) // shortest + 1`` ends and each invalidates at most
        ``sequence_length`` starts: p, the valid share of the starts, is at least
        ``1 - sequence_length * ends / starts``. Each draw is valid with probability p, so by
        Hoeffding P(valid draws <= batch_size) <= exp(-4 * batch_size * (p - 1/2)^2).
        """
        if self._shortest_episode == 0:
            return True  # no episode has ended: every window is valid
        ends = (self._size - 1) // self._shortest_episode + 1
        p = 1.0 - self.sequence_length * ends / self.num_sequence_starts
        return p > 0.5 and math.exp(-4 * batch_size * (p - 0.5) ** 2) < SHORT_BATCH_ODDS

    def _first_valid_rows(self, valid: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(b) candidate rows: the first ``batch_size`` valid ones in draw order, computed on the
        device; short of valid ones, the valid ones again (in order), counted (with none valid,
        the first candidate, invalid: the bound puts both below ``SHORT_BATCH_ODDS``)."""
        order = torch.sort((~valid).to(torch.uint8), stable=True).indices  # (2b): valid first
        n_valid = valid.sum()
        self._short_batches += n_valid < batch_size
        return order[torch.arange(batch_size, device=self.device) % n_valid.clamp(min=1)]

    @property
    def short_sequence_batches(self) -> int:
        """How many ``sample_sequences`` batches had fewer valid windows than asked for and were
        filled with repeats (``fixed_size_sequences`` only; reading it waits for the GPU)."""
        return int(self._short_batches)
