"""The Atari-100k trainer: the official loop, rlpyt's MinibatchRlEval as MLR ran it
(docs/faithfulness.md#atari-training-loop-and-budget).

Per env step t (``itr`` in the reference, t = 0 .. num_env_steps-1):
  act with ε(t) (1 while t <= learning_starts, then 0: noisy nets explore) -> env.step ->
  replay.add -> if t >= learning_starts: ``updates_per_step`` gradient updates, each followed by
  a priority update. With the defaults that is 98,000 × 2 = 196,000 updates.
After training: ``eval_episodes`` episodes, one per eval env (every env's emulator seeded from
the run seed; the noop RNG of env 0 with the run seed, of env i > 0 with seed·100 + i), with
ε = 0.001, noise off, no augmentation, life loss not terminal, raw game score averaged.

The trainer owns the progress bar and all metric logging; components never see MLflow.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mlr_registry.atari_scores import HUMAN_SCORES, human_normalized
from mlr_registry.envs.atari import AtariEnv
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.execution.loop_order import overlapped_step, pipelined_step
from mlr_registry.execution.transfer import to_device
from mlr_registry.registry import register
from mlr_registry.replay.prioritized_sequence_replay import PrioritizedSequenceReplay
from mlr_registry.training.evaluation import play_episodes
from mlr_registry.training.loop_trainer import LoopTrainer, require_agent


def linear_epsilon(step: int, start_step: int, decay_steps: int, initial: float, final: float) -> float:
    """ε(t): ``initial`` until ``start_step``, linear to ``final`` over ``decay_steps`` steps.

    rlpyt's EpsilonGreedyAgentMixin with eps_itr_min = 2000, eps_itr_max = 2001 gives
    ε = 1 for t <= 2000 and ε = 0 from t = 2001 on.
    """
    progress = min(max(step - start_step, 0) / max(decay_steps, 1), 1.0)
    return initial + (final - initial) * progress


def check_returns_match(agent: Any, replay: Any) -> None:
    """The replay computes the n-step returns that the agent bootstraps from: both must use one
    ``n_step`` and one ``discount``. The gin files declare each once (the macros ``N_STEP`` and
    ``DISCOUNT`` of ``gin/atari_baseline.gin``), but a binding of one component's parameter
    still overrides it there alone; a mismatch would train silently on the wrong target (10-step
    returns bootstrapped with γ³, say), so it is refused. An agent that builds its own returns
    from the sequences (BBF, ``max_update_horizon``) needs the replay to carry that many steps.
    Components without these attributes (plugins) are not checked."""
    horizon, carried = getattr(agent, "max_update_horizon", None), getattr(replay, "n_step", None)
    if horizon is not None and carried is not None and carried < horizon:  # BBF: returns built by the agent
        raise ConfigError(f"the agent bootstraps up to {horizon} steps ahead but the replay's sequences carry "
                          f"n_step = {carried} steps beyond their start; bind both through the one macro, "
                          f"N_STEP = {horizon}")
    for name in ("n_step", "discount"):
        mine, theirs = getattr(agent, name, None), getattr(replay, name, None)
        if mine is not None and theirs is not None and mine != theirs:
            raise ConfigError(
                f"the agent's {name} ({mine}) differs from the replay's ({theirs}): the replay's n-step "
                f"returns are what the agent bootstraps, so set both through the one macro, e.g. "
                f"{name.upper()} = {mine}, not agents.rainbow.{name} or replays.prioritized_sequence.{name}")


@register("trainer", "atari100k")
class Atari100kTrainer(LoopTrainer):
    """Trains a discrete-action agent on the Atari-100k protocol and tracks it; the loop itself is
    :class:`LoopTrainer`'s, one iteration is one env step.

    env, agent and replay are factories (gin: ``@envs.atari``, ``@agents.rainbow``,
    ``@replays.prioritized_sequence``, without parentheses): the trainer supplies the seeds,
    shapes and device. ``objective`` defaults to the agent's aux-loss names (``baseline`` when
    there are none).

    ``eval_workers`` (0 = none, -1 = one per core, N) steps the evaluation envs in worker
    processes; the scores are the same bit for bit (``training/evaluation.py``).
    ``execution.overlap_env_step`` steps the training env on a thread while the step's updates
    run; ``execution.pipeline_updates`` queues a step's updates on the device before the host
    reads that step's action, so the host never waits for the GPU to drain (it supersedes
    ``overlap_env_step``). Both give the same results and need a replay with ``add_pending``
    (:mod:`mlr_registry.execution.loop_order`).

    ``checkpoint_every`` (env steps, 0 = off) sets how often :meth:`train` writes a checkpoint
    when the CLI gives it a :class:`Checkpointer` (every 10k steps: a checkpoint holds the whole
    replay, ~0.7 GB at full size; see ``training/checkpoint.py``).

    ``progress`` ('auto' = when stderr is a terminal, True, False): a bar with the rate and ETA
    (``training/progress.py``). ``threads`` (0 = ``OMP_NUM_THREADS`` where set, else 1 on a CPU
    device; N): torch's CPU threads for the run (:func:`~mlr_registry.training.common.set_threads`).
    """

    name = "atari100k"
    episode_key = "episode_score"  # the checkpoint format's name for the open episode's return

    def __init__(
        self,
        env: Callable[..., Any] = AtariEnv,
        agent: Callable[..., Any] | None = None,
        replay: Callable[..., Any] = PrioritizedSequenceReplay,
        num_env_steps: int = 100_000,
        learning_starts: int = 2000,
        updates_per_step: int = 2,
        batch_size: int = 32,
        epsilon_initial: float = 1.0,
        epsilon_final: float = 0.0,
        epsilon_decay_steps: int = 1,
        eval_episodes: int = 100,
        eval_epsilon: float = 0.001,
        eval_every: int = 0,
        eval_at_start: bool = False,
        eval_max_steps: int | None = None,
        eval_workers: int = 0,
        log_every: int = 1000,
        seed: int = 0,
        device: str = "auto",
        benchmark: str = "atari100k",
        objective: str | None = None,
        progress: bool | str = "auto",
        video: bool = True,
        video_max_steps: int = 2000,
        checkpoint_every: int = 10_000,
        threads: int = 0,
    ):
        agent = require_agent(self.name, agent, "@agents.rainbow")
        check_range("atari100k.num_env_steps", num_env_steps, 1, integer=True)
        check_range("atari100k.learning_starts", learning_starts, 0, integer=True)
        check_range("atari100k.updates_per_step", updates_per_step, 0, integer=True)
        check_range("atari100k.batch_size", batch_size, 1, integer=True)
        check_range("atari100k.eval_episodes", eval_episodes, 0, integer=True)
        check_range("atari100k.eval_epsilon", eval_epsilon, 0, 1)
        self._setup(env, seed, device, threads, progress, log_every, checkpoint_every, eval_every)
        self.agent = agent(observation_shape=self.env.observation_shape, num_actions=self.env.num_actions,
                           device=str(self.device))
        self.replay = replay(observation_shape=self.env.observation_shape, device=str(self.device), seed=seed)
        check_returns_match(self.agent, self.replay)
        if hasattr(self.agent, "last_priorities"):  # the contract before 2026-12-07: would be ignored now
            raise ConfigError(f"{type(self.agent).__name__}.last_priorities is no longer read: an agent returns "
                              "its priorities with its metrics, LazyMetrics(..., priorities=p)")
        self.num_env_steps = self.num_iterations = num_env_steps
        self.learning_starts = learning_starts
        self.updates_per_step = updates_per_step
        self.batch_size = batch_size
        self.epsilon = (epsilon_initial, epsilon_final, epsilon_decay_steps)
        self.eval_episodes = eval_episodes
        self.eval_epsilon = eval_epsilon
        self.eval_at_start = eval_at_start
        self.eval_max_steps = eval_max_steps
        self._setup_run(benchmark, objective, video, video_max_steps, eval_workers, eval_episodes)
        for name in ("overlap_env_step", "pipeline_updates"):
            if getattr(self.execution, name) and not all(hasattr(self.replay, m)
                                                        for m in ("add_pending", "complete_pending")):
                raise ConfigError(
                    f"execution.{name} = True needs a replay that stores a step's observation "
                    f"and action before its reward and done (add_pending / complete_pending); "
                    f"{type(self.replay).__name__} has no such methods: set {name} = False")

    def epsilon_at(self, step: int) -> float:
        initial, final, decay = self.epsilon
        return linear_epsilon(step, self.learning_starts, decay, initial, final)

    # --- the protocol's hooks ------------------------------------------------------------------

    def _start(self) -> None:
        if self.eval_at_start:
            self._curves.log_metrics(self._evaluation(epsilon=1.0), step=0)
        self._obs, _ = self.env.reset(seed=self.seed)

    def _iteration(self, step: int) -> None:
        """Env step ``step``; a finished game (``game_over``: all lives lost) is logged at ``step``."""
        metrics, (self._obs, reward, done, info) = self._step(step, self._obs)
        for update_metrics in metrics:
            self._window.add(update_metrics)
        self._count_episode_step(reward, info)
        if info.get("game_over", done):
            self._end_episode(step)

    def _evaluation_due(self, env_step: int) -> bool:
        """Every ``eval_every`` steps, but not at the end (the final evaluation is there)."""
        return self._due(env_step, self.eval_every) and env_step < self.num_env_steps

    def _window_metrics(self, env_step: int, final: bool = False) -> dict[str, float]:
        metrics = self._window.flush(env_step, self.update_count)
        return metrics if final else {**metrics, "train/epsilon": self.epsilon_at(env_step - 1)}

    def _final_note(self) -> tuple[int | None, str]:
        return self.eval_max_steps or getattr(self.env, "max_episode_steps", None), "steps"

    def _step(self, step: int, obs: np.ndarray) -> tuple[list, tuple]:
        """Env step t and its updates: ``(update metrics, (next obs, reward, done, info))``, the
        next obs already reset after a done. Then an agent that keeps a schedule in env steps
        (``set_step``, BBF's resets) is told that step t's updates are done."""
        result = self._step_and_updates(step, obs)
        set_step = getattr(self.agent, "set_step", None)
        if set_step is not None:
            set_step(step)
        return result

    def _step_and_updates(self, step: int, obs: np.ndarray) -> tuple[list, tuple]:
        """Env step t and its updates, in the order the execution layer chooses.

        The reference's order: act on ``obs``, env step, ``replay.add``, updates. The replay
        stores the observation as acting saw it (already on the device: no second copy).
        ``execution.pipeline_updates`` and ``execution.overlap_env_step`` run the same step in
        another order, with the same results (:mod:`mlr_registry.execution.loop_order`).
        """
        updates = self.updates_per_step if step >= self.learning_starts else 0
        obs_t = to_device(obs, self.device)
        actions = self.agent.act(obs_t, epsilon=self.epsilon_at(step), greedy=False)  # (1) on the device
        if self.execution.pipeline_updates and updates:
            return pipelined_step(self.replay, step, obs_t, actions[0], self._env_step, self._update, updates)
        executor = self._env_thread() if updates else None
        if executor is not None:
            return overlapped_step(executor, self.replay, step, obs_t, int(actions[0]), self._env_step,
                                   self._update, updates)
        action = int(actions[0])
        outcome = self._env_step(action)
        self.replay.add(obs_t, action, outcome[1], outcome[2])
        metrics = [self._update() for _ in range(updates)]
        # After the updates, as rlpyt's update_itr_hyperparams(itr): step t's updates sample with
        # the importance-sampling exponent beta of step t - 1.
        self.replay.set_step(step)
        return metrics, outcome

    def _env_step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """``env.step(action)``, then ``env.reset()`` after a done: (obs, reward, done, info)."""
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated or truncated)
        return (self.env.reset()[0] if done else next_obs), float(reward), done, info

    def _update(self) -> dict[str, float]:
        batch = self.replay.sample(self.batch_size)
        metrics = self.agent.update(batch)
        priorities = getattr(metrics, "priorities", None)  # (b) for a prioritized replay, or None
        if priorities is not None and hasattr(self.replay, "update_priorities"):
            self.replay.update_priorities(batch.indices, priorities)
        self.update_count += 1
        return metrics

    def _score_metrics(self, mean: float) -> dict[str, float]:
        """The human-normalized score (``eval/hns``, ``final_hns``) of a game of Table 1."""
        game = str(self.env.game)
        return {"hns": human_normalized(game, mean)} if game in HUMAN_SCORES else {}

    def evaluate(self, epsilon: float | None = None, env_step: int = 0) -> np.ndarray:
        """One episode in each of ``eval_episodes`` envs (:meth:`eval_seeds`), stepped in lockstep
        and acted in one batch; returns the raw scores. Life loss is not terminal here (as in the
        reference). ``eval_workers`` steps the envs in worker processes: same scores. Every
        evaluation plays the same seeds, whatever ``env_step`` it is at."""
        eps = self.eval_epsilon if epsilon is None else epsilon

        def policy(obs: np.ndarray) -> np.ndarray:
            return self.agent.act(torch.as_tensor(obs, device=self.device), epsilon=eps, greedy=True).cpu().numpy()

        make_env = functools.partial(self.env_factory, terminal_on_life_loss=False, **self._eval_env_kwargs())
        return play_episodes(make_env, self.eval_seeds(), policy, workers=self._eval_pool,
                             max_steps=self.eval_max_steps)

    def eval_seeds(self) -> list[int]:
        """The evaluation envs' seeds as the reference's sampler gives them: env 0 gets the run
        seed, env i > 0 gets seed·100 + i. With an env that takes ``ale_seed`` (Atari) these
        seed only the noop RNG; the emulator of every env is seeded from the run seed
        (:meth:`_eval_env_kwargs`), as in the reference."""
        return [self.seed if i == 0 else self.seed * 100 + i for i in range(self.eval_episodes)]

    def _eval_env_kwargs(self) -> dict[str, int]:
        """``ale_seed`` = the run seed, for an env factory that takes it (Catch and plugins
        need not)."""
        try:
            parameters = inspect.signature(self.env_factory).parameters
        except (TypeError, ValueError):  # a callable without a signature: pass nothing extra
            return {}
        return {"ale_seed": self.seed} if "ale_seed" in parameters else {}

    video_fps = 15  # agent steps per second of video (each is 4 frames of the game)

    def record_episode(self) -> list[np.ndarray]:
        """Newest frames (84x84 gray) of one greedy evaluation episode, for the run's video."""
        env = self.env_factory(seed=self.seed * 100 + self.eval_episodes, terminal_on_life_loss=False,
                               **self._eval_env_kwargs())
        obs, _ = env.reset(seed=self.seed * 100 + self.eval_episodes)
        frames = [obs[-1]]
        for _ in range(self.video_max_steps):
            action = self.agent.act(torch.as_tensor(obs, device=self.device), epsilon=self.eval_epsilon, greedy=True)
            obs, _, terminated, truncated, _ = env.step(int(action[0]))
            frames.append(obs[-1])
            if terminated or truncated:
                break
        env.close()
        return frames
