"""Pieces every trainer shares: device choice, seeding (and RNG checkpoints), tags, and windowed
metric averages."""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import numpy as np
import torch

from mlr_registry.errors import ConfigError, check_range
from mlr_registry.training.evaluation import EnvWorkers


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable device is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


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


def registered_name(kind: str, obj: Any) -> str:
    """The registry name of ``obj``'s class (its lower-cased class name if unregistered)."""
    from mlr_registry import registry

    by_class = {c.target: c.name for c in registry.components(kind)}
    return by_class.get(type(obj), type(obj).__name__.lower())


def fast_path_tags(agent: Any, replay: Any = None) -> dict[str, str]:
    """What the GPU fast path actually runs, as run tags: the agent's ``fast_path.precision``,
    ``fast_path.compile`` and the reason of any switch that turned itself off, and the replay's
    ``fast_path.replay_compile`` (+ note) where it has one; {} for components without."""
    tags = {}
    fast = getattr(agent, "fast_path", None)
    if fast is not None and hasattr(fast, "describe"):
        tags.update({f"fast_path.{k}": str(v) for k, v in fast.describe().items()})
    fast = getattr(replay, "fast_path", None)
    if fast is not None and hasattr(fast, "describe"):
        tags.update({f"fast_path.replay_{k}": str(v) for k, v in fast.describe().items()
                     if k.startswith("compile")})
    return tags


def objective_of(agent: Any) -> str:
    """The ``objective`` tag: the agent's aux-loss names joined by '+', or 'baseline'."""
    names = [registered_name("loss", loss) for loss in getattr(agent, "aux_losses", [])]
    return "+".join(names) or "baseline"


class MetricWindow:
    """Averages metrics between log points and measures throughput over the same window.

    Metrics an agent left on the device (:class:`mlr_registry.agents.metrics.LazyMetrics` not
    yet read) are summed there, in float64, one stacked tensor per set of metric names, and
    brought to the host when the window is flushed or saved: the training loop makes no
    device→host transfer for metrics between log points.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._device_sums: dict[tuple[str, ...], list[Any]] = {}  # names -> [float64 sums (n), adds]
        self._t0 = time.perf_counter()
        self._steps0 = 0
        self._updates0 = 0

    def add(self, metrics: Mapping[str, float]) -> None:
        pending = metrics.pending() if callable(getattr(metrics, "pending", None)) else None
        if pending is None:
            self._add_floats(metrics)
            return
        names = tuple(k for k, v in pending.items() if isinstance(v, torch.Tensor))
        self._add_floats({k: v for k, v in pending.items() if not isinstance(v, torch.Tensor)})
        if names:
            values = torch.stack([pending[k].reshape(()).to(torch.float64) for k in names])  # (n)
            entry = self._device_sums.get(names)
            if entry is None:
                self._device_sums[names] = [values, 1]
            else:
                entry[0] = entry[0] + values
                entry[1] += 1

    def _add_floats(self, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] += float(value)
            self._counts[key] += 1

    def _collect(self) -> None:
        """Move the device sums into the host sums (one transfer per set of names)."""
        for names, (sums, count) in self._device_sums.items():
            for key, value in zip(names, sums.tolist(), strict=True):
                self._sums[key] += value
                self._counts[key] += count
        self._device_sums.clear()

    def state_dict(self) -> dict[str, Any]:
        """Sums, counts and the step/update marks of the open window (throughput's clock is not
        saved: after a resume the first window's rates count from the resume). Device sums are
        collected first, so an uninterrupted run and a resumed one sum in the same order."""
        self._collect()
        return {"sums": dict(self._sums), "counts": dict(self._counts), "steps0": self._steps0,
                "updates0": self._updates0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = defaultdict(float, {k: float(v) for k, v in state["sums"].items()})
        self._counts = defaultdict(int, {k: int(v) for k, v in state["counts"].items()})
        self._steps0, self._updates0 = int(state["steps0"]), int(state["updates0"])
        self._t0 = time.perf_counter()

    def __bool__(self) -> bool:
        """True when metrics were added since the last flush."""
        return bool(self._sums) or bool(self._device_sums)

    def flush(self, env_steps: int, updates: int, prefix: str = "train/") -> dict[str, float]:
        """Means since the last flush plus env steps/s and updates/s; resets the window."""
        self._collect()
        now = time.perf_counter()
        elapsed = max(now - self._t0, 1e-9)
        out = {f"{prefix}{k}": self._sums[k] / self._counts[k] for k in self._sums}
        out["throughput/env_steps_per_s"] = (env_steps - self._steps0) / elapsed
        out["throughput/updates_per_s"] = (updates - self._updates0) / elapsed
        self._sums.clear()
        self._counts.clear()
        self._t0, self._steps0, self._updates0 = now, env_steps, updates
        return out


def seeded_generator_states(agent: Any) -> dict[str, torch.Tensor]:
    """States of the seeded generators (``masker.generators``, a :class:`SeededGenerators`) of the
    agent's aux-loss maskers, keyed ``"<loss index>|<device>"``; maskers built without a ``seed``
    draw from torch's global RNG, which the checkpoint holds anyway."""
    states = {}
    for i, loss in enumerate(getattr(agent, "aux_losses", [])):
        generators = getattr(getattr(loss, "masker", None), "generators", None)
        for device, state in (generators.state_dict() if generators is not None else {}).items():
            states[f"{i}|{device}"] = state
    return states


def set_seeded_generator_states(agent: Any, states: Mapping[str, torch.Tensor]) -> None:
    losses = list(getattr(agent, "aux_losses", []))
    for key, state in states.items():
        index, device = key.split("|", 1)
        losses[int(index)].masker.generators.load_state_dict({device: state})


def missing_checkpoint_methods(env: Any, agent: Any, replay: Any) -> list[str]:
    """The state methods a checkpoint needs that these components lack (plugins may lack them)."""
    needed = ((env, "env", ("get_state", "set_state")), (agent, "agent", ("checkpoint_state", "load_checkpoint_state")),
              (replay, "replay", ("state_dict", "load_state_dict")))
    return [f"{role}.{name}" for obj, role, names in needed for name in names if not hasattr(obj, name)]


T = TypeVar("T")
U = TypeVar("U")


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


def block_interrupts() -> None:
    """Block SIGINT and SIGTERM on the calling (helper) thread, so that the kernel delivers them to
    the main thread, where Python runs its handlers anyway: a signal may otherwise land on any
    thread that does not block it and interrupt the native call running there. The suspected
    cause of DMC runs on an H100 that, stopped by ``timeout -s INT`` while updating, ended within
    a second with no handler run, no checkpoint and their MLflow run left RUNNING (in two
    sessions; README, "Measured on a GPU"): their env thread renders through EGL on the GPU's
    driver. Not confirmed on a GPU yet; the run CLI's ``faulthandler`` shows a crash's stacks."""
    signal.pthread_sigmask(signal.SIG_BLOCK, INTERRUPTS)


def beside(executor: ThreadPoolExecutor, background: Callable[[], T], foreground: Callable[[], U]) -> tuple[U, T]:
    """``(foreground(), background())``, the background call on ``executor``'s thread while the
    foreground one runs on this thread (the trainers' ``overlap_env_step``: the env steps while
    the update runs). Waits for the background call even when the foreground one raises, so
    nothing touches the env after the loop stopped."""
    pending = executor.submit(background)
    try:
        result = foreground()
    finally:
        outcome = pending.result()
    return result, outcome


def checkpointing(checkpointer: Any, env: Any, agent: Any, replay: Any) -> tuple[Any, AbstractContextManager]:
    """What a trainer's loop checkpoints with: the checkpointer (None, with a warning, when a
    component lacks the state methods) and the context that defers Ctrl-C / SIGTERM to the end
    of the current step while the loop runs (a no-op without checkpoints)."""
    missing = missing_checkpoint_methods(env, agent, replay) if checkpointer is not None else []
    if missing:
        print(f"warning: no checkpoints for this run: it needs {', '.join(missing)}", file=sys.stderr)
        checkpointer = None
    guard = checkpointer.interrupts_deferred() if checkpointer is not None else contextlib.nullcontext()
    return checkpointer, guard


class LoopTrainer:
    """What both built-in trainers share around their loop: :meth:`train` always stops the
    evaluation workers (``self._eval_pool``, an :class:`EnvWorkers` or None) and the env thread
    (``self._env_executor``) when it ends, and every evaluation is timed. Subclasses provide
    ``_train``, ``evaluate`` and ``_eval_metrics``."""

    _eval_pool: EnvWorkers | None = None
    overlap_env_step: bool = False
    _env_executor: ThreadPoolExecutor | None = None  # see _env_thread

    def train(self, tracker: Any, checkpointer: Any = None) -> dict[str, float]:
        """Run the loop (from the loaded checkpoint's step after ``load_state_dict``), then the
        final evaluation. With a ``checkpointer``: a checkpoint every ``checkpoint_every`` env
        steps, and Ctrl-C / SIGTERM checkpoint at the end of the current step before stopping."""
        try:
            return self._train(tracker, checkpointer)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the evaluation workers and the env thread, if any (:meth:`train` does it when it
        ends)."""
        if self._eval_pool is not None:
            self._eval_pool.close()
        if self._env_executor is not None:
            self._env_executor.shutdown()
            self._env_executor = None

    def _env_thread(self) -> ThreadPoolExecutor | None:
        """With ``overlap_env_step``: the one thread that steps the training env while updates
        run, started on first use (DMC's EGL context stays current on the thread that first
        rendered); None without it."""
        if self.overlap_env_step and self._env_executor is None:
            self._env_executor = ThreadPoolExecutor(1, thread_name_prefix="env-step",
                                                    initializer=block_interrupts)
        return self._env_executor

    def _evaluation(self, final: bool = False, **kwargs: Any) -> dict[str, float]:
        """Evaluate (``kwargs`` go to ``evaluate``) and return the metrics to log, with the
        evaluation's wall time as ``throughput/eval_seconds``."""
        start = time.perf_counter()
        scores = self.evaluate(**kwargs)
        return {**self._eval_metrics(scores, final), "throughput/eval_seconds": time.perf_counter() - start}
