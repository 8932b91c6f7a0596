"""The transition replay's checkpoint state: :meth:`TransitionReplay.state_dict` and
:meth:`~TransitionReplay.load_state_dict`, with what a checkpoint written before the episode
bookkeeping existed is given instead."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mlr_registry.errors import CheckpointError


class TransitionReplayState:
    """The checkpoint methods of :class:`TransitionReplay` (a mixin over its storage: the ring
    of frames, the per-slot tensors, the counters and the sampling generator)."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only (``torch.load(weights_only=True)`` safe)."""
        n = min(self._count, self.capacity)
        nf = min(self._frame_count, self.frames_capacity)
        last = (torch.from_numpy(self._last_next_obs) if self._last_next_obs is not None
                else torch.zeros(self.observation_shape, dtype=torch.uint8))
        return {
            "capacity": self.capacity, "frame_stack": self.frame_stack, "action_dim": self.action_dim,
            "observation_shape": torch.tensor(self.observation_shape),
            "sequence_length": self.sequence_length,
            "count": self._count, "size": self._size, "frame_count": self._frame_count,
            "episode_open": int(self._episode_open), "last_next_obs": last.clone(),
            "frames": self._frames[:nf].clone(), "frame_index": self._frame_index[:n].clone(),
            "action": self._action[:n].clone(), "reward": self._reward[:n].clone(),
            "not_done": self._not_done[:n].clone(), "real_done": self._real_done[:n].clone(),
            "rng_state": self._generator.get_state(),
            "short_sequence_batches": self._short_batches.clone(),
            "episode_start": self._episode_start, "shortest_episode": self._shortest_episode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("capacity", "frame_stack", "action_dim", "sequence_length"):
            if int(state[key]) != getattr(self, key):
                raise CheckpointError(f"replay checkpoint has {key} = {int(state[key])}, "
                                      f"this replay has {getattr(self, key)}")
        shape = tuple(int(v) for v in state["observation_shape"])
        if shape != self.observation_shape:
            raise CheckpointError(f"replay checkpoint has observation_shape = {shape}, "
                                  f"this replay has {self.observation_shape}")
        n, nf = state["frame_index"].shape[0], state["frames"].shape[0]
        self._frames[:nf].copy_(state["frames"])
        self._frame_index[:n].copy_(state["frame_index"])
        self._frame_index_host[:n] = state["frame_index"].tolist()
        self._action[:n].copy_(state["action"])
        self._reward[:n].copy_(state["reward"])
        self._not_done[:n].copy_(state["not_done"])
        self._real_done[:n].copy_(state["real_done"])
        self._count, self._size = int(state["count"]), int(state["size"])
        self._frame_count = int(state["frame_count"])
        self._episode_open = bool(int(state["episode_open"]))
        self._last_next_obs = state["last_next_obs"].cpu().numpy().copy() if self._episode_open else None
        self._generator.set_state(state["rng_state"])
        # Absent before 2026-11-26: no short batch counted; the episode lengths from the stored ends.
        self._short_batches.fill_(int(state.get("short_sequence_batches", 0)))
        if "shortest_episode" in state:
            self._episode_start, self._shortest_episode = int(state["episode_start"]), int(state["shortest_episode"])
        else:
            self._episode_start, self._shortest_episode = self._episodes_from_ends()

    def _episodes_from_ends(self) -> tuple[int, int]:
        """(open episode's first logical index, shortest gap between stored episode ends), for a
        checkpoint that predates them: the gaps are the stored episodes' lengths, and an episode
        cut by the buffer's start only ever looks shorter (a conservative bound)."""
        oldest = self._count - self._size
        slots = (oldest + np.arange(self._size)) % self.capacity
        ends = oldest + np.flatnonzero(self._real_done[torch.from_numpy(slots).to(self.device)].cpu().numpy())
        bounds = np.concatenate([[oldest - 1], ends])
        shortest = int(np.diff(bounds).min()) if len(ends) else 0
        return (int(bounds[-1]) + 1, shortest)
