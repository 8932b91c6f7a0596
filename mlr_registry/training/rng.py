"""The run's random streams: seeding, and their state for checkpoints (Python's, numpy's and
torch's global generators, numpy ``Generator`` objects, and the aux losses' own seeded
generators, which the agent exposes), so that a resumed run draws exactly what the uninterrupted one would."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mlr_registry.errors import check_range


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators; numpy takes 0 .. 2**32 - 1."""
    check_range("seed", seed, 0, 2**32 - 1, integer=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def global_rng_state() -> dict[str, Any]:
    """The global RNG streams a run draws from after construction: Python's ``random``,
    numpy's legacy global ``RandomState``, torch's CPU generator and (when present) every CUDA
    device's generator. Checkpoint-safe: tensors, arrays and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": {"kind": kind, "keys": keys, "pos": int(pos), "has_gauss": int(has_gauss),
                                       "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"], n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy ``Generator``'s bit-generator state (plain ints and strings)."""
    return rng.bit_generator.state


def set_generator_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    rng.bit_generator.state = state


def seeded_generator_states(agent: Any) -> dict[str, torch.Tensor]:
    """The states of the agent's aux losses' own generators (seeded maskers), keyed
    ``"<loss index>|<device>"``, as the agent's ``aux_rng_state()`` gives them; {} for an
    agent without that method (no aux losses of its own). Maskers built without a ``seed`` draw
    from torch's global RNG, which the checkpoint holds anyway."""
    state = getattr(agent, "aux_rng_state", None)
    return dict(state()) if callable(state) else {}


def set_seeded_generator_states(agent: Any, states: Mapping[str, torch.Tensor]) -> None:
    """Restore what :func:`seeded_generator_states` returned (the agent's ``load_aux_rng_state``)."""
    if states:
        agent.load_aux_rng_state(states)
