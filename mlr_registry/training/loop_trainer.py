"""What both built-in trainers share around their loop: checkpointing with deferred interrupts,
the evaluation workers' and the env thread's lifetime, and timed evaluations."""

from __future__ import annotations

import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from mlr_registry.training.env_thread import block_interrupts
from mlr_registry.training.evaluation import EnvWorkers


def missing_checkpoint_methods(env: Any, agent: Any, replay: Any) -> list[str]:
    """The state methods a checkpoint needs that these components lack (plugins may lack them)."""
    needed = ((env, "env", ("get_state", "set_state")), (agent, "agent", ("checkpoint_state", "load_checkpoint_state")),
              (replay, "replay", ("state_dict", "load_state_dict")))
    return [f"{role}.{name}" for obj, role, names in needed for name in names if not hasattr(obj, name)]


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
