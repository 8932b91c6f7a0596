"""A compile failure at run time never stops a run: it rolls back, turns compilation off and
runs the call again eagerly.

A failure (no C++ compiler, no Triton, an unsupported op) can come after part of an update ran
(a phase stepped its optimizer, then the next phase failed to compile), so while compiled code
is unproven (its first :data:`PROVING_CALLS` calls) a guarded call first snapshots the
component's state (deep-copied) and the torch RNGs, and restores them before the eager retry:
the retry is then exactly the eager call, random draws included. Calls that change no learning
state (acting) are retried without a snapshot.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import torch

from mlr_registry.execution.compilation import Compiler, compile_errors, failure_reason

PROVING_CALLS = 2  # guarded calls run with a snapshot to roll back to; later ones have compiled all phases


class Guard:
    """The fall-back of one component's compiled code.

    ``compiler``: what to turn off; ``rollback``: (get_state, set_state) of the component's
    learning state, or None; ``on_failure(reason)``: told once compilation is off (the
    :class:`Execution` records and warns)."""

    def __init__(self, compiler: Compiler, rollback: tuple[Callable[[], Any], Callable[[Any], None]] | None,
                 on_failure: Callable[[str], None]):
        self.compiler, self.rollback, self.on_failure = compiler, rollback, on_failure
        self.proven_calls = 0

    def wrap(self, fn: Callable[..., Any], stateful: bool = True) -> Callable[..., Any]:
        """``fn`` guarded: stateful calls roll back and count towards proving the compiled code."""
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not self.compiler.active:
                return fn(*args, **kwargs)
            restore = self._snapshot() if stateful and self.proven_calls < PROVING_CALLS else None
            try:
                out = fn(*args, **kwargs)
            except compile_errors() as exc:
                if restore is not None:
                    restore()
                self.compiler.disable()
                self.on_failure(f"compilation failed ({failure_reason(exc)}); running eagerly")
                return fn(*args, **kwargs)
            if stateful:
                self.proven_calls += 1
            return out
        return guarded

    def _snapshot(self) -> Callable[[], None]:
        """A closure that restores the component (with a rollback pair) and the torch RNGs."""
        state = copy.deepcopy(self.rollback[0]()) if self.rollback else None
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

        def restore() -> None:
            if self.rollback is not None:
                self.rollback[1](state)
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        return restore
