"""Prioritized sequence sampling (MLR's default Atari replay): rlpyt's sum tree over sequence
starts, priorities from the RL loss's KL, importance-sampling weights with an annealed beta.
Storage and batch assembly are :class:`~mlr_registry.replay.sequence_replay.SequenceReplay`'s."""

from __future__ import annotations

from typing import Any

import torch

from mlr_registry.errors import check_range
from mlr_registry.execution.transfer import to_device
from mlr_registry.registry import register
from mlr_registry.replay.sequence_replay import SequenceReplay
from mlr_registry.replay.sum_tree import SumTree

PRIORITY_CLAMP = (1e-6, 1e6)  # rlpyt_buffer / algos: KL clamped before ^alpha
IS_WEIGHT_EPS = 1e-5  # MLR's rlpyt_buffer: (1 / (p + 1e-5)) ** beta
_AT_MAX = -1.0  # a pending insertion's value when it takes the largest priority stored so far


@register("replay", "prioritized_sequence")
class PrioritizedSequenceReplay(SequenceReplay):
    """MLR's replay: sequence starts drawn by priority (PER), docs/faithfulness.md#atari-replay-and-n-step-returns.

    New entries get ``default_priority ** alpha`` (= 1; rlpyt does not use max-priority), or
    with ``insert_max_priority`` the largest priority stored so far (Schaul et al.'s rule, BBF's).
    ``update_priorities`` stores ``clamp(value, 1e-6, 1e6) ** alpha``; the batch weights are
    ``(1 / (p + is_weight_eps)) ** beta`` normalized by the batch maximum, with ``p`` the stored
    leaf (already ``^alpha``). Beta anneals linearly with :meth:`set_step`.
    """

    gin_name = "prioritized_sequence"
    compiled_phases = ("gather", "_descend", "_write_batch_priorities")

    def __init__(
        self,
        observation_shape: tuple = (4, 84, 84),
        capacity: int = 100_000,
        sequence_length: int = 16,
        n_step: int = 10,
        discount: float = 0.99,
        alpha: float = 0.5,
        beta_start: float = 0.4,
        beta_end: float = 1.0,
        beta_anneal_start: int = 2000,
        beta_anneal_end: int = 100_000,
        default_priority: float = 1.0,
        stratified: bool = False,
        one_step_done_n: bool = True,
        insert_max_priority: bool = False,
        is_weight_eps: float = IS_WEIGHT_EPS,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        """
        Args:
            observation_shape: (frame_stack, height, width) of the env's uint8 observation.
            capacity: steps kept. The reference uses 1e6; both never wrap within the 100k steps
                of Atari-100k (a wrap happens only after the last of 100,000 adds), so the
                sampled data are identical. Must exceed ``off_backward + off_forward``.
            sequence_length: K+1 consecutive steps used by MLR (``--jumps 15`` -> 16).
            n_step: n of the n-step return (10); each sequence carries n extra steps.
            discount: gamma of the n-step return (0.99).
            alpha: priority exponent (0.5, MLR's ``pri_alpha``).
            beta_start, beta_end: IS exponent annealed linearly (0.4 -> 1.0) ...
            beta_anneal_start, beta_anneal_end: ... between these env steps (``min_itr_learn``
                = 2000 and ``pri_beta_steps`` = 100,000), clipped outside.
            default_priority: priority of new entries before ``^alpha`` (1: delta_clip).
            one_step_done_n: the bootstrap flag ``done_n`` is the 1-step done, as the pinned
                rlpyt stores it (True, faithful; see the module docstring); False: any done in
                the n steps (the correct n-step flag).
            stratified: draw one start per equal segment of the total priority instead of
                i.i.d. draws. Off by default: rlpyt's SumTree draws ``np.random.rand(n)``.
            insert_max_priority: new entries get the largest priority stored so far, at least
                ``default_priority ** alpha`` (Dopamine's ``max_recorded_priority``, BBF) instead
                of ``default_priority ** alpha`` (False, rlpyt's, MLR's).
            is_weight_eps: added to the stored priority in the importance weights (1e-5, MLR's
                rlpyt_buffer; BBF's is 1e-10).
            device: where storage, tree and batches live (the training device).
            seed: seed of this replay's own torch generator (sampling is reproducible).
        """
        super().__init__(observation_shape, capacity, sequence_length, n_step, discount, device, seed,
                         one_step_done_n)
        check_range("replays.prioritized_sequence.alpha", alpha, 0, 1)
        check_range("replays.prioritized_sequence.beta_start", beta_start, 0, 1)
        check_range("replays.prioritized_sequence.beta_end", beta_end, 0, 1)
        check_range("replays.prioritized_sequence.beta_anneal_start", beta_anneal_start, 0)
        check_range("replays.prioritized_sequence.beta_anneal_end", beta_anneal_end, beta_anneal_start)
        check_range("replays.prioritized_sequence.default_priority", default_priority, 0, low_open=True)
        check_range("replays.prioritized_sequence.is_weight_eps", is_weight_eps, 0)
        self.alpha = float(alpha)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.beta_anneal_start, self.beta_anneal_end = int(beta_anneal_start), int(beta_anneal_end)
        self.default_priority = float(default_priority)
        self.stratified = bool(stratified)
        self.insert_max_priority, self.is_weight_eps = bool(insert_max_priority), float(is_weight_eps)
        # the largest priority stored so far (^alpha), on the device: no sync to keep it
        self._max_priority = torch.tensor(self.default_priority ** self.alpha, dtype=torch.float64, device=self.device)
        self.beta = self.beta_start
        self._tree = SumTree(self.capacity, self.device)
        self._pending: dict[int, float] = {}  # leaf -> priority, written to the tree in one batch

    # rlpyt's SumTree.advance, one step at a time: the new entry and the entry that becomes the
    # oldest-but-f are off, the entry off_backward steps back gets its full window and turns on.
    def _on_add(self, n: int) -> None:
        c = self.capacity
        self._pending[n % c] = 0.0
        self._pending[(n + self.off_forward) % c] = 0.0
        start = n - self.off_backward
        lo, _ = self._valid_range(n + 1)
        if start >= lo:
            self._pending[start % c] = _AT_MAX if self.insert_max_priority else self.default_priority ** self.alpha

    def _flush(self) -> None:
        if self._pending:
            leaves = to_device(list(self._pending), self.device, torch.int64)
            values = to_device(list(self._pending.values()), self.device, torch.float64)
            if self.insert_max_priority:
                values = torch.where(values == _AT_MAX, self._max_priority, values)
            self._tree.update(leaves, values)
            self._pending.clear()

    @property
    def priorities(self) -> torch.Tensor:
        """(capacity,) float64 stored leaf priorities (already ``^alpha``; 0 = not sampleable)."""
        self._flush()
        return self._tree.leaves

    def set_step(self, env_step: int) -> None:
        """rlpyt DQN.update_itr_hyperparams: beta linear in the env step, clipped."""
        super().set_step(env_step)
        span = self.beta_anneal_end - self.beta_anneal_start
        if span == 0:
            progress = float(env_step >= self.beta_anneal_end)
        else:
            progress = min(max((env_step - self.beta_anneal_start) / span, 0.0), 1.0)
        self.beta = progress * self.beta_end + (1.0 - progress) * self.beta_start

    def _sample_starts(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._flush()
        indices = self._descend(self._tree.masses(batch_size, self._generator, self.stratified))  # (b)
        priorities = self._tree.get(indices)
        weights = (1.0 / (priorities + self.is_weight_eps)) ** self.beta
        return indices, (weights / weights.max()).to(torch.float32)

    def update_priorities(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Set the priorities of sampled starts (b,) from ``values`` (b,), e.g. the RL KL.

        Entries that stopped being valid since they were sampled (priority 0) stay off.
        Duplicated indices: one of their values is kept, consistently.
        """
        self._flush()
        idx = torch.as_tensor(indices, device=self.device).to(torch.int64).reshape(-1)
        new = torch.as_tensor(values).detach().to(self.device, torch.float64).reshape(-1)
        new = new.clamp(*PRIORITY_CLAMP) ** self.alpha
        if self.insert_max_priority:
            self._max_priority = torch.maximum(self._max_priority, new.max())
        self._write_batch_priorities(idx, torch.where(self._tree.get(idx) > 0, new, 0.0))

    # Phases: a batch's descent and its priorities' write-back (a fixed size; the insertions'
    # few leaves per step are written by _flush, their count varies).
    def _descend(self, masses: torch.Tensor) -> torch.Tensor:
        return self._tree.find(masses)

    def _write_batch_priorities(self, leaves: torch.Tensor, values: torch.Tensor) -> None:
        self._tree.update(leaves, values)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["priorities"] = self.priorities.clone()
        if self.insert_max_priority:
            state["max_priority"] = self._max_priority.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending.clear()
        self._tree.set_leaves(state["priorities"].to(self.device, torch.float64))
        if self.insert_max_priority:
            self._max_priority = state["max_priority"].to(self.device, torch.float64)
