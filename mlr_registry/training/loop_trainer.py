"""The one training loop both built-in trainers run; a protocol (Atari-100k, DMC) supplies only
what differs, as the hooks listed on :class:`LoopTrainer`.

The loop, top to bottom (:meth:`LoopTrainer._train`):

1. start fresh (:meth:`~LoopTrainer._start`) or restore a loaded checkpoint's loop state;
2. per iteration i (one agent step, ``steps_per_iteration`` env steps; env steps
   ``begin = i·k`` .. ``end = (i+1)·k``): a periodic evaluation at ``begin`` when the protocol
   evaluates before a step, the protocol's :meth:`~LoopTrainer._iteration` (act, env step,
   updates, replay, episode ends), the metric window's means every ``log_every`` env steps, a
   periodic evaluation at ``end`` when the protocol evaluates after a step, then the checkpoint
   boundary (a checkpoint every ``checkpoint_every`` env steps, or on a deferred interrupt);
3. the last window, the final evaluation (``final_return``), the video and the learning curves.

Counters that several parts need are named once here: ``_iterations_done`` (agent steps done),
``update_count``, the open episode (``_episode_return``, ``_episode_steps``) and ``_obs``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from mlr_registry.errors import CheckpointError, ConfigError, check_range
from mlr_registry.execution import Execution
from mlr_registry.execution.env_thread import block_interrupts
from mlr_registry.training.artifacts import CurveTracker, log_run_artifacts
from mlr_registry.training.checkpoint import Checkpointer
from mlr_registry.training.common import objective_of, registered_name, resolve_device, set_threads
from mlr_registry.training.evaluation import EnvWorkers, resolve_workers
from mlr_registry.training.metric_window import MetricWindow
from mlr_registry.training.progress import check_progress, final_evaluation_note, progress_bar
from mlr_registry.training.rng import (
    global_rng_state,
    seed_everything,
    seeded_generator_states,
    set_global_rng_state,
    set_seeded_generator_states,
)
from mlr_registry.training.trainer import Tracker


def missing_checkpoint_methods(env: Any, agent: Any, replay: Any) -> list[str]:
    """The state methods a checkpoint needs that these components lack (plugins may lack them)."""
    needed = ((env, "env", ("get_state", "set_state")), (agent, "agent", ("checkpoint_state", "load_checkpoint_state")),
              (replay, "replay", ("state_dict", "load_state_dict")))
    return [f"{role}.{name}" for obj, role, names in needed for name in names if not hasattr(obj, name)]


def checkpointing(checkpointer: Any, env: Any, agent: Any, replay: Any) -> tuple[Any, AbstractContextManager]:
    """What the loop checkpoints with: the checkpointer (None, with a warning, when a component
    lacks the state methods) and the context that defers Ctrl-C / SIGTERM to the end of the
    current step while the loop runs (a no-op without checkpoints)."""
    missing = missing_checkpoint_methods(env, agent, replay) if checkpointer is not None else []
    if missing:
        print(f"warning: no checkpoints for this run: it needs {', '.join(missing)}", file=sys.stderr)
        checkpointer = None
    guard = checkpointer.interrupts_deferred() if checkpointer is not None else contextlib.nullcontext()
    return checkpointer, guard


def require_agent(trainer: str, agent: Callable[..., Any] | None, example: str) -> Callable[..., Any]:
    """The agent factory, or a ConfigError naming the missing binding: a trainer has no default
    algorithm, its gin file names one."""
    if agent is None:
        raise ConfigError(f"trainers.{trainer}.agent is not set; bind it, e.g. trainers.{trainer}.agent = {example}")
    return agent


class LoopTrainer:
    """The shared loop. A protocol subclass calls :meth:`_setup` from its ``__init__`` (gin binds
    that signature) and provides:

    - ``name`` (the registered trainer name: error messages, checkpoints), ``progress_unit``,
      ``eval_before_step`` (evaluate at the start of an iteration, else at its end),
      ``episode_key`` (the open episode's return in a checkpoint's ``loop``);
    - ``steps_per_iteration`` (env steps per agent step) and ``num_iterations``;
    - :meth:`_start` (the first observation of a fresh run), :meth:`_iteration`,
      :meth:`_evaluation_due`, :meth:`_window_metrics`, ``evaluate`` and :meth:`_eval_metrics`,
      ``record_episode`` and ``video_fps``;
    - optionally :meth:`_prepare` (before a fresh or resumed loop), :meth:`_score_metrics`
      (normalized scores), :meth:`_protocol_state` / :meth:`_load_protocol_state` /
      :meth:`_restore_protocol_loop` (state beyond agent, replay, env and the global RNGs),
      :meth:`_loop_done`, :meth:`_final_note`.

    :meth:`train` always stops the evaluation workers (``_eval_pool``) and the env thread of
    ``execution.overlap_env_step`` when it ends.
    """

    name: str = "loop"
    progress_unit: str = "step"
    eval_before_step: bool = False
    episode_key: str = "episode_return"
    steps_per_iteration: int = 1
    _eval_pool: EnvWorkers | None = None
    _env_executor: ThreadPoolExecutor | None = None  # see _env_thread

    # --- construction ----------------------------------------------------------------------

    def _setup(self, env: Callable[..., Any], seed: int, device: str, threads: int, progress: bool | str,
               log_every: int, checkpoint_every: int, eval_every: int) -> None:
        """What every protocol's constructor does first, in this order (the global RNGs are
        seeded before the env is built): check the shared counts, resolve the device and the
        thread count, seed, build the training env."""
        check_range(f"{self.name}.eval_every", eval_every, 0, integer=True)
        check_range(f"{self.name}.log_every", log_every, 1, integer=True)
        check_range(f"{self.name}.checkpoint_every", checkpoint_every, 0, integer=True)
        self.progress = check_progress(f"{self.name}.progress", progress)
        self.device = resolve_device(device)
        self.threads = set_threads(f"{self.name}.threads", threads, self.device)
        seed_everything(seed)
        self.seed = seed
        self.eval_every = eval_every
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.env_factory = env
        self.env = env(seed=seed)
        self.update_count = 0
        self._resume: dict[str, Any] | None = None

    def _setup_run(self, benchmark: str, objective: str | None, video: bool, video_max_steps: int,
                   eval_workers: int, eval_episodes: int) -> None:
        """What follows the construction of agent and replay: the execution layer (the
        ``execution.*`` bindings) applied to both, tags, video, evaluation workers."""
        self.execution = Execution()
        self.execution.apply(self.agent, self.replay)
        self.benchmark = benchmark
        self.objective = objective or objective_of(self.agent)
        self.video = video
        self.video_max_steps = video_max_steps
        self.eval_workers = resolve_workers(f"{self.name}.eval_workers", eval_workers, eval_episodes)
        self._eval_pool = EnvWorkers(self.eval_workers) if self.eval_workers else None

    def run_tags(self) -> dict[str, str]:
        return {"benchmark": self.benchmark, "env": str(self.env.game),
                "agent": registered_name("agent", self.agent), "objective": self.objective,
                "seed": str(self.seed), **{f"fast_path.{k}": v for k, v in self.execution.describe().items()}}

    # --- the loop ----------------------------------------------------------------------------

    def train(self, tracker: Any, checkpointer: Any = None) -> dict[str, float]:
        """Run the loop (from the loaded checkpoint's step after ``load_state_dict``), then the
        final evaluation. With a ``checkpointer``: a checkpoint every ``checkpoint_every`` env
        steps, and Ctrl-C / SIGTERM checkpoint at the end of the current step before stopping."""
        try:
            return self._train(tracker, checkpointer)
        finally:
            self.close()

    def _train(self, tracker: Tracker, checkpointer: Checkpointer | None) -> dict[str, float]:
        k, total = self.steps_per_iteration, self.num_iterations
        self._curves = CurveTracker(tracker)
        self._prepare()
        if self._resume is None:
            self._iterations_done = 0
            self._episode_return, self._episode_steps = 0.0, 0
            self._start()
            self._window = MetricWindow()
        else:
            self._restore_loop(self._resume)
            self._resume = None
        bar = progress_bar(self.progress, total * k, self._iterations_done * k, self.progress_unit,
                           f"{self.benchmark}:{self.env.game}:{self.objective}")
        checkpointer, guard = checkpointing(checkpointer, self.env, self.agent, self.replay)
        with guard:
            for i in range(self._iterations_done, total):
                begin, end = i * k, (i + 1) * k
                if self.eval_before_step and self._evaluation_due(begin):
                    self._curves.log_metrics(self._evaluation(env_step=begin), step=begin)
                self._iteration(i)
                bar.update(k)
                if self._due(end, self.log_every):
                    metrics = self._window_metrics(end)
                    self._curves.log_metrics(metrics, step=end)
                    bar.set_postfix(updates_per_s=f"{metrics['throughput/updates_per_s']:.1f}")
                if not self.eval_before_step and self._evaluation_due(end):
                    self._curves.log_metrics(self._evaluation(env_step=end), step=end)
                self._iterations_done = i + 1
                if checkpointer is not None:
                    checkpointer.step_end(end, self.state_dict, self.name, self._due(end, self.checkpoint_every))
        self._loop_done()
        if self._window:
            self._curves.log_metrics(self._window_metrics(total * k, final=True), step=total * k)
        final_evaluation_note(bar, self.eval_episodes, *self._final_note())
        final = self._evaluation(final=True, env_step=total * k)
        bar.close()
        self._curves.log_metrics(final, step=total * k)
        frames = self.record_episode() if self.video else None
        log_run_artifacts(self._curves, self._curves.curves, " ".join(self.run_tags().values()), frames,
                          fps=self.video_fps)
        return final

    def _due(self, env_step: int, every: int) -> bool:
        """True when a multiple of ``every`` env steps falls in the iteration that ends at
        ``env_step`` (exactly ``env_step % every == 0`` when ``every`` is a multiple of
        ``steps_per_iteration``); never when ``every`` is 0."""
        return every > 0 and env_step % every < self.steps_per_iteration

    def _count_episode_step(self, reward: float, info: dict[str, Any]) -> None:
        """Add one step to the open episode; its return counts the raw (unclipped) reward."""
        self._episode_return += float(info.get("raw_reward", reward))
        self._episode_steps += 1

    def _end_episode(self, step: int) -> None:
        """Log the open episode's return and length at env step ``step`` and open a new one."""
        self._curves.log_metrics({"train/episode_return": self._episode_return,
                                  "train/episode_length": self._episode_steps}, step=step)
        self._episode_return, self._episode_steps = 0.0, 0

    def _evaluation(self, final: bool = False, **kwargs: Any) -> dict[str, float]:
        """Evaluate (``kwargs`` go to ``evaluate``) and return the metrics to log, with the
        evaluation's wall time as ``throughput/eval_seconds``."""
        start = time.perf_counter()
        scores = self.evaluate(**kwargs)
        return {**self._eval_metrics(scores, final), "throughput/eval_seconds": time.perf_counter() - start}

    def _eval_metrics(self, scores: np.ndarray, final: bool = False) -> dict[str, float]:
        """Mean and std of the episodes' scores (NaN and 0 when none were played), and at the end
        ``final_return``; :meth:`_score_metrics` adds the protocol's normalized scores."""
        mean = float(np.mean(scores)) if len(scores) else float("nan")
        metrics = {"eval/return_mean": mean, "eval/return_std": float(np.std(scores)) if len(scores) else 0.0}
        extra = self._score_metrics(mean)
        metrics.update({f"eval/{key}": value for key, value in extra.items()})
        if final:
            metrics["final_return"] = mean
            metrics.update({f"final_{key}": value for key, value in extra.items()})
        return metrics

    # --- hooks with a default ------------------------------------------------------------------

    def _prepare(self) -> None:
        """Before the loop starts, fresh or resumed."""

    def _score_metrics(self, mean: float) -> dict[str, float]:
        """Normalized scores of an evaluation's mean (``hns`` -> ``eval/hns``, ``final_hns``)."""
        return {}

    def _loop_done(self) -> None:
        """After the last iteration, before the final evaluation."""

    def _final_note(self) -> tuple[int | None, str]:
        """The final evaluation's episode cap and its unit, for the progress bar."""
        return None, "steps"

    def _protocol_state(self) -> dict[str, Any]:
        """Checkpoint entries beyond the shared ones."""
        return {}

    def _load_protocol_state(self, state: dict[str, Any]) -> None:
        """Load what :meth:`_protocol_state` saved, at ``load_state_dict`` time."""

    def _restore_protocol_loop(self, state: dict[str, Any]) -> None:
        """Restore protocol loop state when :meth:`train` starts after a load."""

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the loop needs to continue exactly at an iteration boundary: agent,
        replay, env, the global RNGs, the masker generators, the current observation, the open
        episode, the metric window and the learning curves so far (plus the protocol's
        :meth:`_protocol_state`). Only valid between iterations of :meth:`train`."""
        return {"trainer": self.name, "step": self._iterations_done * self.steps_per_iteration,
                "agent": self.agent.checkpoint_state(), "replay": self.replay.state_dict(),
                "env": self.env.get_state(), "rng": global_rng_state(),
                "generators": seeded_generator_states(self.agent), **self._protocol_state(),
                "loop": {"obs": np.asarray(self._obs), self.episode_key: self._episode_return,
                         "episode_steps": self._episode_steps, "update_count": self.update_count,
                         "window": self._window.state_dict(), "curves": self._curves.state_dict()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load agent, replay and env now (errors surface before anything runs); the RNGs and
        the loop state are applied when :meth:`train` starts."""
        if state.get("trainer") != self.name:
            raise CheckpointError(f"checkpoint is from trainer {state.get('trainer')!r}, not {self.name}")
        self.agent.load_checkpoint_state(state["agent"])
        self.replay.load_state_dict(state["replay"])
        self.env.set_state(state["env"])
        self._load_protocol_state(state)
        set_seeded_generator_states(self.agent, state["generators"])
        self._resume = state

    def _restore_loop(self, state: dict[str, Any]) -> None:
        loop = state["loop"]
        self._iterations_done = int(state["step"]) // self.steps_per_iteration
        self._obs = np.array(loop["obs"])
        self._episode_return, self._episode_steps = float(loop[self.episode_key]), int(loop["episode_steps"])
        self.update_count = int(loop["update_count"])
        self._window = MetricWindow()
        self._window.load_state_dict(loop["window"])
        self._curves.load_state_dict(loop["curves"])
        self._restore_protocol_loop(state)
        set_global_rng_state(state["rng"])

    # --- lifetime of the helpers ---------------------------------------------------------------

    def close(self) -> None:
        """Stop the evaluation workers and the env thread, if any (:meth:`train` does it when it
        ends)."""
        if self._eval_pool is not None:
            self._eval_pool.close()
        if self._env_executor is not None:
            self._env_executor.shutdown()
            self._env_executor = None

    def _env_thread(self) -> ThreadPoolExecutor | None:
        """With ``execution.overlap_env_step``: the one thread that steps the training env while updates
        run, started on first use (DMC's EGL context stays current on the thread that first
        rendered); None without it."""
        if self.execution.overlap_env_step and self._env_executor is None:
            self._env_executor = ThreadPoolExecutor(1, thread_name_prefix="env-step",
                                                    initializer=block_interrupts)
        return self._env_executor
