"""The DMC replay: SAC transitions and MLR sequences from one circular buffer (docs/faithfulness.md#dmc-replay).

Reproduces the reference's ``ReplayBuffer`` (``add``, ``sample_aug`` without the crop, and
``sample_spr``) in torch, on the training device, without per-sample Python loops.

Storage (frame-deduplicated). The reference keeps ``obs`` and ``next_obs`` whole: 2 x 9x100x100
bytes per transition, 18 GB at its capacity of 100k. Here each transition stores only the RGB
frame it adds (the newest frame of ``next_obs``) and an index into a ring of frames; the first
transition of an episode also stores the ``frame_stack`` frames of its ``obs`` (the reset stack,
which repeats the first render). A stack is then the ``frame_stack`` consecutive frames ending
at the transition's index, and ``next_obs`` the ones ending one frame later, so every sampled
``obs`` / ``next_obs`` is bit-identical to what was added: 3 GB at 100k. ``add`` checks that an
``obs`` equals the previous ``next_obs`` unless the previous transition ended an episode, and
that ``next_obs`` is ``obs`` shifted by one frame, so a mismatch is an error, never silent.

The frame ring holds ``capacity + frame_stack * (capacity // 100 + 2)`` frames: enough for
``capacity`` transitions whenever episodes last 100 agent steps or more (DMC: 125 to 500). With
shorter episodes the reset stacks take more room, and the oldest transitions are dropped before
the ring overwrites their frames, so ``size`` may stay below ``capacity``.

Per transition, as the reference: ``action`` float32 (a), ``reward``, ``not_done = 1 - done``
(``done`` is the env's ``terminated``, never True on DMC: time limits are bootstrapped,
"infinite bootstrap") and ``real_done`` = ``episode_end`` (True exactly on the last transition
of an episode; only used to keep MLR sequences inside an episode). The reference derives
real_done from the time limit alone; here any episode end sets it.

Sampling. ``sample_transitions`` draws indices uniformly over the stored transitions (the SAC
batch; the agent crops). ``sample_sequences`` follows ``sample_spr``: ``2 * batch_size``
window starts uniformly from ``[0, size - sequence_length)`` (the reference's
``[0, size - jumps - 1)`` with ``jumps = sequence_length - 1``), each window ``start ..
start + sequence_length - 1``, windows holding an episode's last transition dropped, the first
``batch_size`` valid ones kept (fewer when not enough are valid; never resampled).
Deviation, once the buffer has wrapped: the reference draws starts from the physical slots
``[0, capacity - jumps - 1)``, so its windows can straddle the write pointer and mix the newest
and oldest transitions; here starts are counted from the oldest stored transition, so a window
is always a run of consecutive transitions. Before wrapping both are identical.

``fixed_size_sequences`` (the GPU fast path; off by default) draws the same windows without a
host sync where a batch short of valid windows is out of reach (``sync_free_sequences.py``).
The SAC batch type is in ``transitions.py``, the checkpoint state in ``transition_state.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from einops import rearrange

from mlr_registry.batch import Batch
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.execution.transfer import to_device
from mlr_registry.registry import register
from mlr_registry.replay.sync_free_sequences import SHORT_BATCH_ODDS as SHORT_BATCH_ODDS
from mlr_registry.replay.sync_free_sequences import SyncFreeSequenceDraw
from mlr_registry.replay.transition_state import TransitionReplayState
from mlr_registry.replay.transitions import Transitions

MIN_EPISODE_FOR_FULL_CAPACITY = 100  # agent steps per episode the frame ring is sized for


def _check_int(name: str, value: Any, low: int) -> int:
    check_range(name, value, low, integer=True)
    return int(value)


@register("replay", "transition")
class TransitionReplay(SyncFreeSequenceDraw, TransitionReplayState):
    """Circular buffer of DMC transitions for SAC batches and MLR sequences (docs/faithfulness.md#dmc-replay)."""

    def __init__(
        self,
        observation_shape: tuple = (9, 100, 100),
        action_dim: int = 1,
        capacity: int = 100_000,
        sequence_length: int = 16,
        frame_stack: int = 3,
        device: str = "cpu",
        seed: int = 0,
        fixed_size_sequences: bool = False,
    ) -> None:
        """
        Args:
            observation_shape: (channels, height, width) of the env's uint8 observation; the
                trainer passes the env's (``9x100x100``: 3 RGB frames at 100).
            action_dim: size of the continuous action; the trainer passes the env's.
            capacity: transitions (agent steps) kept, circular (100k).
            sequence_length: steps per MLR sequence, T = jumps + 1 (16: the official
                command's ``jumps=15``).
            frame_stack: frames per observation (3); ``channels`` must be a multiple of it.
            device: where storage and batches live (a 100k buffer takes ~3 GB).
            seed: seeds the sampling generator.
            fixed_size_sequences: ``sample_sequences`` without a host sync, always
                ``batch_size`` windows (see ``sync_free_sequences.py``); False = the reference's draw.
        """
        shape = tuple(int(v) for v in observation_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"observation_shape = {tuple(observation_shape)!r} is invalid; expected "
                              "(channels, height, width) with every entry >= 1")
        self.action_dim = _check_int("action_dim", action_dim, 1)
        self.sequence_length = _check_int("sequence_length", sequence_length, 1)
        self.capacity = _check_int("capacity", capacity, self.sequence_length + 1)
        self.frame_stack = _check_int("frame_stack", frame_stack, 1)
        if shape[0] % self.frame_stack:
            raise ConfigError(f"observation_shape = {shape} has {shape[0]} channels, not a multiple of "
                              f"frame_stack = {self.frame_stack}")
        _check_int("seed", seed, 0)
        if not isinstance(fixed_size_sequences, bool):
            raise ConfigError(f"fixed_size_sequences = {fixed_size_sequences!r} must be True or False")
        self.fixed_size_sequences = fixed_size_sequences
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device = {device!r} is not a torch device ({exc})") from None
        self.observation_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.frame_channels = shape[0] // self.frame_stack
        k = self.frame_stack
        self.frames_capacity = self.capacity + k * (self.capacity // MIN_EPISODE_FOR_FULL_CAPACITY + 2)

        dev = self.device
        # torch.empty: pages of a large ring are committed only when written.
        self._frames = torch.empty((self.frames_capacity, self.frame_channels, *shape[1:]),
                                   dtype=torch.uint8, device=dev)
        self._frame_index = torch.zeros(self.capacity, dtype=torch.int64, device=dev)  # newest obs frame
        self._frame_index_host = [0] * self.capacity  # mirror for eviction without device syncs
        self._action = torch.zeros((self.capacity, self.action_dim), dtype=torch.float32, device=dev)
        self._reward = torch.zeros(self.capacity, dtype=torch.float32, device=dev)
        self._not_done = torch.ones(self.capacity, dtype=torch.float32, device=dev)
        self._real_done = torch.zeros(self.capacity, dtype=torch.bool, device=dev)
        self._short_batches = torch.zeros((), dtype=torch.int64, device=dev)  # fixed_size_sequences only
        self._generator = torch.Generator(device=dev)
        self._generator.manual_seed(seed)
        self._offsets_obs = torch.arange(-k + 1, 2, device=dev)  # frames of obs and next_obs
        self._offsets_seq = torch.arange(-k + 1, self.sequence_length, device=dev)
        self._steps_seq = torch.arange(self.sequence_length, device=dev)

        self._count = 0  # transitions ever added; the next slot is count % capacity
        self._size = 0  # transitions stored: the `size` slots before the next one
        self._frame_count = 0  # frames ever written; frame n lives at n % frames_capacity
        self._episode_open = False  # the last transition did not end its episode
        self._episode_start = 0  # logical index of the open episode's first transition
        self._shortest_episode = 0  # agent steps of the shortest episode ended so far (0: none yet)
        self._last_next_obs: np.ndarray | None = None  # (c h w) uint8: continuity check

    # --- filling -------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Transitions stored (== min(added, capacity) unless short episodes forced drops)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def num_sequence_starts(self) -> int:
        """How many window starts ``sample_sequences`` draws from (0: it cannot sample yet)."""
        return max(0, self._size - self.sequence_length)

    def add(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool, episode_end: bool) -> None:
        """Store one transition (obs, action, reward, next_obs) of the env.

        Args:
            obs, next_obs: uint8 ``(c h w)`` stacks (numpy or torch), ``next_obs`` = ``obs``
                shifted by one frame; unless the previous transition ended an episode, ``obs``
                must equal the previous ``next_obs``.
            action: the ``(a,)`` action taken at ``obs``.
            reward: the (summed over action repeats) reward received.
            done: a true terminal, not a time limit: ``not_done = 1 - done`` (always 1 on DMC).
            episode_end: this transition ends the episode (terminal or time limit): real_done.
        """
        # Host-side numpy: small torch ops on a busy CPU pay thread start-up for nothing.
        obs_np = self._as_obs(obs, "obs")
        next_np = self._as_obs(next_obs, "next_obs")
        act = action.detach().float() if isinstance(action, torch.Tensor) else torch.from_numpy(
            np.asarray(action, np.float32))
        act = act.reshape(-1)
        if act.numel() != self.action_dim:
            raise ValueError(f"action has {act.numel()} entries; this replay stores action_dim = "
                             f"{self.action_dim}")
        f, k = self.frame_channels, self.frame_stack
        if not np.array_equal(next_np[:-f], obs_np[f:]):
            raise ValueError("next_obs must be obs shifted by one frame (a frame stack, oldest -> newest): "
                             "this replay stores only the newest frame of each next_obs")
        if self._episode_open:
            if not np.array_equal(obs_np, self._last_next_obs):
                raise ValueError("obs differs from the previous transition's next_obs, but that transition "
                                 "did not end an episode: pass episode_end=True at the end of each episode")
            newest = self._frame_count - 1  # the previous next_obs frame is this obs's newest
            new = next_np[None, -f:].copy()  # (1 f h w)
        else:
            newest = self._frame_count + k - 1  # the obs stack opens the episode's frames
            new = np.concatenate([obs_np.reshape(k, f, *obs_np.shape[1:]), next_np[None, -f:]])  # (k+1 f h w)
        last_frame = newest + 1

        slot = self._count % self.capacity
        if self._size == self.capacity:
            self._size -= 1  # the oldest transition is in `slot`
        self._drop_before(last_frame - self.frames_capacity + 1)

        new_t = to_device(new, self.device)  # in stream order: no wait for a queued update
        start = self._frame_count % self.frames_capacity
        head = min(len(new), self.frames_capacity - start)  # the ring may wrap inside the reset stack
        self._frames[start:start + head] = new_t[:head]
        self._frames[:len(new) - head] = new_t[head:]
        # Scalars through fill_ (a kernel argument): ``t[slot] = value`` would copy from pageable
        # host memory and wait for the queued update.
        self._frame_index[slot].fill_(newest)
        self._frame_index_host[slot] = newest
        self._action[slot] = to_device(act, self.device)
        self._reward[slot].fill_(float(reward))
        self._not_done[slot].fill_(0.0 if done else 1.0)
        self._real_done[slot].fill_(bool(episode_end))

        if not self._episode_open:
            self._episode_start = self._count
        self._count += 1
        self._size += 1
        if episode_end:
            length = self._count - self._episode_start
            self._shortest_episode = min(self._shortest_episode or length, length)
        self._frame_count = last_frame + 1
        self._episode_open = not episode_end
        self._last_next_obs = next_np.copy() if self._episode_open else None

    def _drop_before(self, first_kept_frame: int) -> None:
        """Drop the oldest transitions whose frames precede ``first_kept_frame`` (about to be overwritten)."""
        while self._size > 0:
            oldest = (self._count - self._size) % self.capacity
            if self._frame_index_host[oldest] - self.frame_stack + 1 >= first_kept_frame:
                break
            self._size -= 1

    def _as_obs(self, value: Any, name: str) -> np.ndarray:
        x = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if x.dtype != np.uint8 or x.shape != self.observation_shape:
            raise ValueError(f"{name} must be uint8 {self.observation_shape}, got {x.dtype} {x.shape}")
        return x

    # --- sampling ------------------------------------------------------------------------------

    def _oldest(self) -> int:
        return (self._count - self._size) % self.capacity

    def sample_transitions(self, batch_size: int) -> Transitions:
        """``batch_size`` transitions drawn uniformly (with replacement) from those stored."""
        check_range("batch_size", batch_size, 1, integer=True)
        if self._size == 0:
            raise ValueError("sample_transitions called on an empty replay")
        rel = torch.randint(0, self._size, (batch_size,), generator=self._generator, device=self.device)
        return self.transitions((self._oldest() + rel) % self.capacity)

    def transitions(self, slots: torch.Tensor) -> Transitions:
        """The stored transitions at replay ``slots`` ``(b)``."""
        b, k = slots.shape[0], self.frame_stack
        newest = self._frame_index[slots]  # (b)
        frames = self._gather_frames(newest[:, None] + self._offsets_obs)  # (b k+1 f h w)
        return Transitions(
            obs=frames[:, :k].reshape(b, *self.observation_shape),
            action=self._action[slots],
            reward=self._reward[slots],
            next_obs=frames[:, 1:].reshape(b, *self.observation_shape),
            not_done=self._not_done[slots],
            indices=slots,
        )

    def _gather_frames(self, frame_numbers: torch.Tensor) -> torch.Tensor:
        """Frames ``(... f h w)`` by absolute frame number ``(...)`` (index_select: a memcpy per frame)."""
        flat = self._frames.view(self.frames_capacity, -1)
        picked = flat.index_select(0, (frame_numbers % self.frames_capacity).reshape(-1))
        return picked.view(*frame_numbers.shape, *self._frames.shape[1:])

    def sample_sequences(self, batch_size: int = 128) -> Batch:
        """Up to ``batch_size`` windows of ``sequence_length`` consecutive steps inside one episode.

        Returns a :class:`Batch`: ``obs (b t c h w)`` uint8 uncropped, ``action (b t a)``,
        ``reward (b t)``, ``done (b t)`` (all False by construction: only valid windows, which a
        short sync-free batch repeats) and ``indices (b)`` (the
        slots of the window starts), with ``b <= batch_size`` (``b = batch_size`` with
        ``fixed_size_sequences``).
        """
        check_range("batch_size", batch_size, 1, integer=True)
        starts = self.num_sequence_starts
        if starts == 0:
            raise ValueError(f"sample_sequences needs more than sequence_length = {self.sequence_length} "
                             f"stored transitions; the replay holds {self._size}")
        rel = torch.randint(0, starts, (2 * batch_size,), generator=self._generator, device=self.device)
        windows = (self._oldest() + rel[:, None] + self._steps_seq) % self.capacity  # (2b t)
        valid = ~self._real_done[windows].any(dim=1)  # (2b)
        if self.fixed_size_sequences and self._sync_free_draw_is_safe(batch_size):
            windows = windows[self._first_valid_rows(valid, batch_size)]  # (b t), no host sync
        else:
            windows = windows[valid.nonzero().squeeze(1)[:batch_size]]  # (b t), first valid ones
        # A valid window lies in one episode, so its frames are consecutive in the ring.
        newest = self._frame_index[windows[:, 0]]  # (b)
        frames = self._gather_frames(newest[:, None] + self._offsets_seq)  # (b t+k-1 f h w)
        obs = rearrange(frames.unfold(1, self.frame_stack, 1), "b t f h w k -> b t (k f) h w")
        return Batch(obs=obs, action=self._action[windows], reward=self._reward[windows],
                     done=self._real_done[windows], indices=windows[:, 0])
