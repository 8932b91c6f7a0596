"""Frame-deduplicated sequence replay for Atari, prioritized (MLR's default) and uniform.

Reproduces rlpyt's ``AsyncPrioritizedSequenceReplayFrameBuffer`` with MLR's
``rlpyt_buffer.py`` extension (docs/faithfulness.md#atari-replay-and-n-step-returns), in torch, on
the training device, without per-sample Python loops.

Storage. ``add(obs, a_t, r_t, done_t)`` is called once per env step with the stacked
observation the agent saw (``uint8 (c h w)``, frames oldest -> newest), the action taken at it,
the (clipped) reward received after it, and whether that transition ended an episode or a life.
Only the newest frame ``obs[-1]`` is stored; a stack is rebuilt from the ``c`` frames ending at
its step, with the frames from before a ``done`` inside that window zeroed. The env zeroes its
stack at reset and at life loss, so the rebuilt stack equals the observation that was added.
As in rlpyt, the ``c − 1`` frames preceding physical slot 0 live in a prefix written from
``obs[:-1]`` whenever the cursor is at slot 0 (at the start, and after each wrap).

Sampling. A sample is a sequence start ``s``; the batch holds steps ``s .. s+T−1`` with
``T = sequence_length + n_step`` (16 + 10 = 26): MLR uses steps 0..15, the RL loss step 0 and
its n-step bootstrap observation at step ``n_step``. A start is valid only when its whole
window is stored: the ``1 + n_step + sequence_length`` entries before the cursor are off
(rlpyt's ``off_backward``), and so are the ``max(1, c − 1)`` oldest ones, whose earlier frames
have been overwritten (rlpyt's ``off_forward``; before the first wrap these are entries
``0 .. c−2``, which rlpyt also never samples).

Batch layout (see :class:`mlr_registry.batch.Batch`): ``action[:, t]`` is the action taken AT
``obs[:, t]`` (rlpyt's ``all_action`` starts one step earlier, at the previous action; MLR then
uses ``all_action[1:17]``, which is our ``action[:, :16]``) and ``reward[:, t]`` the reward
received after it. ``returns`` and ``done_n`` (b, sequence_length) are the n-step quantities
of steps ``0 .. sequence_length−1``, computed at sample time from the stored rewards and dones
(rlpyt precomputes the same numbers at insertion).

done_n quirk (``one_step_done_n``, on by default): the rlpyt commit the official code pins
stores the 1-step ``done`` as ``done_n`` (its 10-step flag goes to a local variable that is
never written back; rlpyt fixed this later). So the stored ``done_n[t] == done[t]``, while the
return is still cut at the first done. A sequence whose first done lies at step k = 1..n−1
then bootstraps with ``γ^n · Z(obs[:, n])``, and sanitizing has made ``obs[:, n]`` the repeated
observation of step k, the last one before the done. ``one_step_done_n = False`` gives the
correct flag: any done in ``t .. t+n−1``. Sanitizing then sets ``done_n`` after the first done
in both modes, as MLR's ``sanitize_batch`` does.

Compiled phases (``compiled_phases``, compiled by ``execution.replay_compile``, off by default):
``gather`` (stack rebuilding, n-step returns, sanitizing) and the sum tree's descent and the
write-back of a batch's priorities (a Python loop over the tree's levels, hundreds of small ops
per batch eagerly) are each tensor work only. Nothing random happens inside them (the starts are
drawn from this replay's generator outside them), so compiled, the batches are the same.
"""

from __future__ import annotations

from typing import Any

import torch

from mlr_registry.batch import Batch
from mlr_registry.errors import CheckpointError, ConfigError, check_range
from mlr_registry.execution.transfer import to_device


def _check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device = {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {device!r} but CUDA is not available; use 'cpu'")
    return dev


class SequenceReplay:
    """Storage, stack rebuilding, n-step returns and sanitizing shared by both samplers.

    Subclasses choose the sequence starts (:meth:`_sample_starts`) and may react to each
    insertion (:meth:`_on_add`). Not registered itself.
    """

    beta: float = 0.0  # importance-sampling exponent; 0 means all weights are 1

    gin_name = "sequence"  # gin name, for messages
    compiled_phases: tuple[str, ...] = ("gather",)
    rollback_state = ("_generator.get_state", "_generator.set_state")  # what a sample changes

    def __init__(self, observation_shape: tuple[int, int, int], capacity: int, sequence_length: int,
                 n_step: int, discount: float, device: str, seed: int,
                 one_step_done_n: bool = True) -> None:
        shape = tuple(int(v) for v in observation_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"observation_shape = {tuple(observation_shape)!r} is invalid; expected "
                              "(frame_stack, height, width) with every entry >= 1")
        check_range(f"replays.{self.gin_name}.sequence_length", sequence_length, 1)
        check_range(f"replays.{self.gin_name}.n_step", n_step, 1)
        check_range(f"replays.{self.gin_name}.discount", discount, 0, 1)
        self.observation_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.frame_stack, self.height, self.width = shape
        self.sequence_length = int(sequence_length)
        self.n_step = int(n_step)
        self.discount = float(discount)
        self.one_step_done_n = bool(one_step_done_n)
        self.seq_steps = self.sequence_length + self.n_step  # T, steps per sampled sequence
        self._fm1 = self.frame_stack - 1
        # rlpyt: off_backward = 1 + n_step + batch_T; off_forward = max(1, n_frames - 1)
        self.off_backward = 1 + self.n_step + self.sequence_length
        self.off_forward = max(1, self._fm1)
        check_range(f"replays.{self.gin_name}.capacity", capacity, self.off_backward + self.off_forward + 1,
                    integer=True)
        self.capacity = int(capacity)
        self.device = _check_device(device)
        self.seed = int(seed)

        c, fm1 = self.capacity, self._fm1
        # Frame of physical slot p at frames[p + fm1]; frames[:fm1] precede slot 0. Never-written
        # slots are never read, so ``empty`` (lazy pages on CPU) is safe; the prefix starts zero.
        # The last row stays zero: blank (pre-done) frames of a stack are read from it.
        self._frames = torch.empty(c + fm1 + 1, self.height, self.width, dtype=torch.uint8,
                                   device=self.device)
        self._zero_row = c + fm1
        self._frames[:fm1] = 0
        self._frames[self._zero_row] = 0
        self._action = torch.zeros(c, dtype=torch.int64, device=self.device)
        self._reward = torch.zeros(c, dtype=torch.float32, device=self.device)
        self._done = torch.zeros(c, dtype=torch.bool, device=self.device)  # read before slot 0: False
        self._count = 0  # steps ever added; the cursor is _count % capacity
        self._pending_slot: int | None = None  # slot written by add_pending, awaiting its reward
        self._env_step = 0
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(self.seed)
        self._discounts = self.discount ** torch.arange(self.n_step, dtype=torch.float32, device=self.device)
        self._steps = torch.arange(self.seq_steps, device=self.device)  # (T)
        self._frame_offsets = torch.arange(self.frame_stack, device=self.device)  # (c)
        self._lookback = torch.arange(1, fm1 + 1, device=self.device)  # (c-1): steps back

    # ------------------------------------------------------------------ writing

    def add(self, obs: Any, action: Any, reward: float, done: bool) -> None:
        """Store one env step: ``obs`` uint8 (c h w) seen at step t, a_t, r_t, done_t."""
        self.add_pending(obs, action)
        self.complete_pending(reward, done)

    def add_pending(self, obs: Any, action: Any) -> None:
        """The first half of :meth:`add`, for a trainer that steps the env while it updates:
        store step t's observation and action, and advance the cursor and the valid starts as
        ``add`` does. Its reward and done follow in :meth:`complete_pending`.

        Between the two, :meth:`sample` gives exactly the batches it would give after the whole
        ``add``: the newest valid start ends its window (``T`` steps) two steps before the
        newest entry (``off_backward = 1 + n_step + sequence_length = T + 1``), its frame
        stacks read dones only from earlier steps, and the valid starts and priorities depend
        on how many steps were added, not on their contents (``tests/test_replay.py``).
        """
        if self._pending_slot is not None:
            raise RuntimeError("replay.add_pending: the previous step still waits for complete_pending")
        obs = torch.as_tensor(obs)
        if tuple(obs.shape) != self.observation_shape or obs.dtype != torch.uint8:
            raise ValueError(f"replay.add: obs must be uint8 {self.observation_shape}, "
                             f"got {obs.dtype} {tuple(obs.shape)}")
        obs = to_device(obs, self.device)  # in stream order: no wait for queued updates
        p, fm1 = self._count % self.capacity, self._fm1
        if p == 0 and fm1 > 0:  # rlpyt: at cursor 0 write the frames that precede slot 0
            self._frames[:fm1].copy_(obs[:-1])
        self._frames[p + fm1].copy_(obs[-1])
        if isinstance(action, torch.Tensor):  # still on the device (a pipelined loop's action)
            self._action[p].copy_(action.reshape(()))
        else:
            self._action[p].fill_(int(action))  # a kernel argument: no host→device copy, no wait
        self._pending_slot = p
        self._count += 1
        self._on_add(self._count - 1)

    def complete_pending(self, reward: float, done: bool) -> None:
        """The second half of :meth:`add`: step t's reward r_t and done_t."""
        p = self._pending_slot
        if p is None:
            raise RuntimeError("replay.complete_pending: no step waits for its reward; call add_pending first")
        # fill_ passes the value as a kernel argument; ``t[p] = value`` would copy it from pageable
        # host memory, a copy that waits for every update queued on the GPU.
        self._reward[p].fill_(float(reward))
        self._done[p].fill_(bool(done))
        self._pending_slot = None

    def _on_add(self, n: int) -> None:
        """Hook: logical step ``n`` was just written."""

    # ------------------------------------------------------------------ bookkeeping

    @property
    def size(self) -> int:
        """Steps currently stored (at most ``capacity``)."""
        return min(self._count, self.capacity)

    def _valid_range(self, count: int | None = None) -> tuple[int, int]:
        """Logical (ever-increasing) start indices ``[lo, hi]`` that may be sampled."""
        n = self._count if count is None else count
        return max(n - self.capacity, 0) + self.off_forward, n - self.off_backward - 1

    @property
    def num_valid_starts(self) -> int:
        lo, hi = self._valid_range()
        return max(0, hi - lo + 1)

    def can_sample(self, batch_size: int) -> bool:
        """True when ``sample(batch_size)`` can run: starts are drawn with replacement, so one
        valid start is enough (that needs ``off_backward + off_forward + 1`` = 31 steps with
        the defaults)."""
        return batch_size >= 1 and self.num_valid_starts >= 1

    def set_step(self, env_step: int) -> None:
        """Record the env step (``itr``); the prioritized variant anneals beta from it."""
        self._env_step = int(env_step)

    def update_priorities(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Uniform sampling ignores priorities."""

    # ------------------------------------------------------------------ reading

    def sample(self, batch_size: int) -> Batch:
        """A batch of ``batch_size`` sequences (with replacement), sanitized."""
        check_range("batch_size", batch_size, 1, integer=True)
        if not self.can_sample(batch_size):
            raise RuntimeError(
                f"replay cannot sample yet: {self._count} steps added, a start needs "
                f"{self.off_backward + self.off_forward + 1} (off_backward {self.off_backward} = "
                f"1 + n_step + sequence_length, off_forward {self.off_forward})")
        indices, weights = self._sample_starts(batch_size)
        return self.gather(indices, weights=weights)

    def _sample_starts(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (b,) int64 physical starts, weights (b,) float32)."""
        raise NotImplementedError

    def gather(self, indices: torch.Tensor, weights: torch.Tensor | None = None,
               sanitize: bool = True) -> Batch:
        """The batch of the sequences starting at physical ``indices`` (b,), without checking
        that they are valid starts (``sample`` only draws valid ones)."""
        idx = torch.as_tensor(indices, device=self.device).to(torch.int64).reshape(-1)  # (b)
        b, t = idx.shape[0], self.sequence_length
        slots = (idx[:, None] + self._steps) % self.capacity  # (b T) physical slot of each step
        action, reward, done = self._action[slots], self._reward[slots], self._done[slots]
        returns, done_n = self._n_step_returns(reward, done)  # (b t) each
        obs_slots = slots
        if sanitize:
            # MLR's sanitize_batch: after the first done in steps 0..t-1 repeat the obs at that
            # done, zero rewards and returns, set done_n; actions are NOT touched.
            dones = done[:, :t]
            first = dones.to(torch.uint8).argmax(1)  # (b) first True (first max), 0 if none
            after = dones.any(1, keepdim=True) & (self._steps > first[:, None])  # (b T)
            obs_slots = torch.where(after, slots.gather(1, first[:, None]), slots)
            reward = reward.masked_fill(after, 0.0)
            returns = returns.masked_fill(after[:, :t], 0.0)
            done_n = done_n | after[:, :t]
        if weights is None:
            weights = torch.ones(b, dtype=torch.float32, device=self.device)
        return Batch(obs=self._stacks(obs_slots), action=action, reward=reward, done=done, returns=returns,
                     done_n=done_n, weights=weights.to(torch.float32), indices=idx)

    def _stacks(self, slots: torch.Tensor) -> torch.Tensor:
        """Rebuild stacked observations: slots (b T) -> uint8 (b T c h w)."""
        b, t = slots.shape
        rows = slots[..., None] + self._frame_offsets  # (b T c) rows of self._frames, oldest first
        if self._fm1 > 0:
            # Frame f (oldest = 0) is blank iff a done occurred in the fm1 - f steps before the
            # stack's step (the env zeroed its stack there): read it from the all-zero row.
            prev_done = self._done[(slots[..., None] - self._lookback) % self.capacity]  # (b T c-1)
            blank = (prev_done.to(torch.int8).cumsum(-1) > 0).flip(-1)  # (b T c-1), oldest first
            rows[..., :self._fm1].masked_fill_(blank, self._zero_row)
        flat = self._frames.view(self._frames.shape[0], -1)
        return flat.index_select(0, rows.reshape(-1)).view(b, t, self.frame_stack, self.height, self.width)

    def _n_step_returns(self, reward: torch.Tensor, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """reward, done (b T) -> return (b t) float32 and done_n (b t) bool, t = sequence_length.

        return_t = Σ_{k<n} γ^k r_{t+k}, truncated after the first done (its reward counts);
        done_n_t = any done in t .. t+n-1 (rlpyt's discount_return_n_step), or with
        ``one_step_done_n`` (the pinned rlpyt's stored flag, see the module docstring) done_t.
        """
        t = self.sequence_length
        r = reward.unfold(1, self.n_step, 1)[:, :t]  # (b t n): r[t + k]
        d = done.unfold(1, self.n_step, 1)[:, :t]  # (b t n)
        alive = torch.cumprod(1.0 - d.to(torch.float32), -1)  # no done in t .. t+k
        alive = torch.cat([torch.ones_like(alive[..., :1]), alive[..., :-1]], -1)  # .. t+k-1
        returns = (r * alive * self._discounts).sum(-1)
        return returns, d[..., 0] if self.one_step_done_n else d.any(-1)

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only (``torch.save``/``torch.load(weights_only=True)`` safe)."""
        if self._pending_slot is not None:
            raise RuntimeError("replay.state_dict: a step added with add_pending still waits for "
                               "complete_pending; save between env steps")
        n, fm1 = self.size, self._fm1
        return {
            "capacity": self.capacity, "sequence_length": self.sequence_length, "n_step": self.n_step,
            "frame_stack": self.frame_stack, "count": self._count, "env_step": self._env_step,
            "frames": self._frames[:n + fm1].clone(), "action": self._action[:n].clone(),
            "reward": self._reward[:n].clone(), "done": self._done[:n].clone(),
            "rng_state": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("capacity", "sequence_length", "n_step", "frame_stack"):
            if int(state[key]) != getattr(self, key):
                raise CheckpointError(f"replay checkpoint has {key} = {int(state[key])}, "
                                      f"this replay has {getattr(self, key)}")
        n = min(int(state["count"]), self.capacity)
        self._frames[:n + self._fm1].copy_(state["frames"])
        self._action[:n].copy_(state["action"])
        self._reward[:n].copy_(state["reward"])
        self._done[:n].copy_(state["done"])
        self._done[n:] = False
        self._count = int(state["count"])
        self._generator.set_state(state["rng_state"])
        self.set_step(int(state["env_step"]))


def __getattr__(name: str) -> Any:
    """The two samplers live in their own modules; importable from here as before (lazily: they
    import this module)."""
    if name == "PrioritizedSequenceReplay":
        from mlr_registry.replay.prioritized_sequence_replay import PrioritizedSequenceReplay
        return PrioritizedSequenceReplay
    if name == "UniformSequenceReplay":
        from mlr_registry.replay.uniform_sequence_replay import UniformSequenceReplay
        return UniformSequenceReplay
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
