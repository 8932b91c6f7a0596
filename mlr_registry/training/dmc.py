"""The DeepMind Control trainer: the loop of the reference train.py
(docs/faithfulness.md#dmc-training-loop-and-budget).

The budget counts ENV steps; one agent step is ``action_repeat`` env steps. Per agent step i
(env step i·AR):
  evaluate if i·AR is a multiple of ``eval_every`` (10 deterministic episodes, center crop) ->
  act (uniform random for the first ``init_steps`` agent steps, then a policy sample) ->
  if i >= init_steps: one update (SAC batch of 512 + MLR batch of <=128 sequences), BEFORE the
  env step as in the reference -> env.step -> replay.add.
The evaluation at exactly ``num_env_steps`` (100k / 500k) is the run's ``final_return``.

Evaluation uses its own env instance (seed + 10_000) instead of the training env: the reference
evaluates on the training env at episode boundaries, which changes only the env's RNG stream.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from mlr_registry.envs.dmc import DMCEnv
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.execution.env_thread import beside
from mlr_registry.execution.transfer import to_device
from mlr_registry.registry import register
from mlr_registry.replay.transition_replay import TransitionReplay
from mlr_registry.training.evaluation import play_episodes
from mlr_registry.training.loop_trainer import LoopTrainer, require_agent
from mlr_registry.training.rng import generator_state, set_generator_state

EVAL_SEED_OFFSET = 10_000


@register("trainer", "dmc")
class DMCTrainer(LoopTrainer):
    """Trains a continuous-control agent from pixels on a dm_control task and tracks it; the loop
    itself is :class:`LoopTrainer`'s, one iteration is one agent step (``action_repeat`` env steps).

    env, agent and replay are factories (gin: ``@envs.dmc``, ``@agents.sac``,
    ``@replays.transition``, without parentheses); the agent has no default, the gin file names
    it. ``benchmark`` defaults to ``dmc100k`` / ``dmc500k`` from the budget (``dmc<N>k`` otherwise).
    """

    name = "dmc"
    progress_unit = "env step"
    eval_before_step = True  # the reference evaluates at the top of its loop, step 0 included

    def __init__(
        self,
        env: Callable[..., Any] = DMCEnv,
        agent: Callable[..., Any] | None = None,
        replay: Callable[..., Any] = TransitionReplay,
        num_env_steps: int = 100_000,
        init_steps: int = 1000,
        batch_size: int = 512,
        aux_batch_size: int = 128,
        eval_every: int = 5000,
        eval_episodes: int = 10,
        eval_at_start: bool = True,
        log_every: int = 1000,
        seed: int = 0,
        device: str = "auto",
        benchmark: str | None = None,
        objective: str | None = None,
        progress: bool | str = "auto",
        video: bool = True,
        video_max_steps: int = 2000,
        checkpoint_every: int = 50_000,
        eval_workers: int = 0,
        threads: int = 0,
    ):
        """num_env_steps, eval_every, log_every and checkpoint_every count env steps;
        init_steps counts agent steps (the reference multiplies its 1000 by the action repeat).
        checkpoint_every (0 = off) applies when the CLI gives :meth:`train` a Checkpointer; a
        checkpoint holds the whole replay (~3 GB at capacity 100k), hence the sparse default.
        ``execution.overlap_env_step`` runs each env step (physics + rendering, CPU) on a thread
        while the update runs (GPU), instead of after it. Same results (see
        :meth:`_update_while_stepping`). dm_control renders on its own thread anyway, so stepping
        from another thread is safe.
        eval_workers (0 = the reference's one eval env; -1 = one worker per core; N): play the
        evaluation episodes in lockstep in worker processes (see :meth:`evaluate`).
        progress ('auto' = when stderr is a terminal, True, False): a bar with the rate and ETA.
        threads (0 = OMP_NUM_THREADS where set, else 1 on a CPU device; N): torch's CPU threads
        for the run (:func:`~mlr_registry.training.common.set_threads`)."""
        agent = require_agent(self.name, agent, "@agents.sac")
        check_range("dmc.num_env_steps", num_env_steps, 1, integer=True)
        check_range("dmc.init_steps", init_steps, 0)
        check_range("dmc.batch_size", batch_size, 1, integer=True)
        check_range("dmc.aux_batch_size", aux_batch_size, 1, integer=True)
        check_range("dmc.eval_episodes", eval_episodes, 1, integer=True)
        self._setup(env, seed, device, threads, progress, log_every, checkpoint_every, eval_every)
        self.action_repeat = self.steps_per_iteration = int(self.env.action_repeat)
        if num_env_steps % self.action_repeat:
            raise ConfigError(f"dmc.num_env_steps = {num_env_steps} is not a multiple of the action repeat "
                              f"{self.action_repeat} of {self.env.game}; the final evaluation would miss it")
        self.agent = agent(observation_shape=self.env.observation_shape, num_actions=self.env.action_dim,
                           device=str(self.device))
        self.replay = replay(observation_shape=self.env.observation_shape, action_dim=self.env.action_dim,
                             device=str(self.device), seed=seed)
        self.num_env_steps = num_env_steps
        self.num_iterations = num_env_steps // self.action_repeat
        self.init_steps = init_steps
        self.batch_size = batch_size
        self.aux_batch_size = aux_batch_size
        self.eval_episodes = eval_episodes
        self.eval_at_start = eval_at_start
        self._setup_run(benchmark or f"dmc{num_env_steps // 1000}k", objective, video, video_max_steps,
                        eval_workers, eval_episodes)
        if self.execution.pipeline_updates:
            raise ConfigError("execution.pipeline_updates = True applies to the atari100k trainer only; "
                              "on DMC use execution.overlap_env_step = True")
        self._wants_sequences = len(getattr(self.agent, "aux_losses", [])) > 0
        self._rng = np.random.default_rng(seed)
        self._eval_env = None

    # --- the protocol's hooks ------------------------------------------------------------------

    def _prepare(self) -> None:
        self._executor = self._env_thread()

    def _start(self) -> None:
        self._obs, _ = self._on_env_thread(self._executor, self.env.reset, seed=self.seed)

    def _iteration(self, i: int) -> None:
        """Agent step i: act (uniform random before ``init_steps``), then the update and the env
        step, then ``replay.add``; a finished episode is logged at the env step it ends on."""
        obs, executor = self._obs, self._executor
        if i < self.init_steps:
            action = self._rng.uniform(-1.0, 1.0, self.env.action_dim).astype(np.float32)
        else:
            obs_t = to_device(obs, self.device)
            action = self.agent.act(obs_t, greedy=False).reshape(-1).cpu().numpy()
        if i >= self.init_steps:
            metrics, outcome = self._update_while_stepping(action, self._wants_sequences, executor)
            self._window.add(metrics)
        else:
            outcome = self._on_env_thread(executor, self.env.step, action)
        next_obs, reward, terminated, truncated, info = outcome
        self.replay.add(obs, action, float(reward), next_obs, done=bool(terminated),
                        episode_end=bool(terminated or truncated))
        self._count_episode_step(reward, info)
        self._obs = next_obs
        if terminated or truncated:
            self._end_episode((i + 1) * self.action_repeat)
            self._obs, _ = self._on_env_thread(executor, self.env.reset)

    def _evaluation_due(self, env_step: int) -> bool:
        """Every ``eval_every`` env steps; at step 0 only with ``eval_at_start``."""
        return self._due(env_step, self.eval_every) and (env_step > 0 or self.eval_at_start)

    def _window_metrics(self, env_step: int, final: bool = False) -> dict[str, float]:
        """The window's means, and with ``replays.transition.fixed_size_sequences`` how many aux
        batches so far had to repeat windows (see ``TransitionReplay``)."""
        metrics = self._window.flush(env_step, self.update_count)
        if getattr(self.replay, "fixed_size_sequences", False):
            metrics["replay/short_sequence_batches"] = float(self.replay.short_sequence_batches)
        return metrics

    def _loop_done(self) -> None:
        self._stop_env_thread()  # before the evaluation renders on this thread

    def _final_note(self) -> tuple[int | None, str]:
        return getattr(self.env, "episode_length", None), "env steps"

    def close(self) -> None:
        self._stop_env_thread()  # also when the loop was interrupted or failed
        if self._eval_env is not None:  # its physics and rendering contexts; a later evaluation makes a new one
            self._eval_env.close()
            self._eval_env = None
        super().close()

    def _stop_env_thread(self) -> None:
        """Free the env's EGL context on the thread it is current on (dm_control cannot free it from
        another thread, and says so at exit), then stop that thread."""
        if self._env_executor is not None:
            self._on_env_thread(self._env_executor, self.env.release_rendering)
            self._env_executor.shutdown()
            self._env_executor = None

    @staticmethod
    def _on_env_thread(executor: ThreadPoolExecutor | None, fn: Callable[..., Any], *args, **kwargs) -> Any:
        return fn(*args, **kwargs) if executor is None else executor.submit(fn, *args, **kwargs).result()

    def _update_while_stepping(self, action: np.ndarray, wants_sequences: bool,
                               executor: ThreadPoolExecutor | None) -> tuple[dict[str, float], tuple]:
        """One update and ``env.step(action)``: in sequence (the reference), or, with
        ``execution.overlap_env_step``, the env step on its own thread while the update runs. The results are
        the same: the action was chosen before the update (the reference's order), the update
        reads only the replay (the new transition is added after both), and the env draws from
        its own task RNG, never torch's or numpy's global ones (``tests/test_dmc_overlap.py``
        checks equality)."""
        if executor is None:
            metrics = self._update(wants_sequences)
            return metrics, self.env.step(action)
        return beside(executor, lambda: self.env.step(action), lambda: self._update(wants_sequences))

    # --- checkpoints: the evaluation env and the warm-up action RNG besides the shared state ----

    def _protocol_state(self) -> dict[str, Any]:
        return {"agent_steps": self._iterations_done,
                "eval_env": self._eval_env.get_state() if self._eval_env is not None else None,
                "trainer_rng": generator_state(self._rng)}

    def _load_protocol_state(self, state: dict[str, Any]) -> None:
        if state["eval_env"] is not None:
            if self._eval_env is None:
                self._eval_env = self.env_factory(seed=self.seed + EVAL_SEED_OFFSET)
            self._eval_env.set_state(state["eval_env"])

    def _restore_protocol_loop(self, state: dict[str, Any]) -> None:
        set_generator_state(self._rng, state["trainer_rng"])

    def _update(self, wants_sequences: bool) -> dict[str, float]:
        transitions = self.replay.sample_transitions(self.batch_size)
        sequences = None
        if wants_sequences and self.replay.num_sequence_starts > 0:
            sequences = self.replay.sample_sequences(self.aux_batch_size)
            if sequences.batch_size == 0:
                sequences = None
        metrics = self.agent.update(transitions, sequences, step=self.update_count)
        self.update_count += 1
        return metrics

    def evaluate(self, env_step: int = 0) -> np.ndarray:
        """``eval_episodes`` episodes with the deterministic action tanh(mu) on center crops.

        ``eval_workers = 0`` (the reference): the episodes run one after another on one eval
        env whose RNG stream continues across evaluations. Otherwise each episode gets its own
        env, seeded from (seed, env_step, episode), and they run in lockstep in worker
        processes: the same protocol, drawn from other (equally distributed) initial states.
        """
        if self._eval_pool is not None:
            def policy(obs: np.ndarray) -> np.ndarray:
                return self.agent.act(torch.as_tensor(obs, device=self.device), greedy=True).float().cpu().numpy()

            seeds = np.random.SeedSequence([self.seed, EVAL_SEED_OFFSET, env_step]).generate_state(self.eval_episodes)
            return play_episodes(self.env_factory, [int(s) for s in seeds], policy, workers=self._eval_pool)
        if self._eval_env is None:
            self._eval_env = self.env_factory(seed=self.seed + EVAL_SEED_OFFSET)
        env = self._eval_env
        scores = np.zeros(self.eval_episodes)
        for episode in range(self.eval_episodes):
            obs, _ = env.reset()
            done = False
            while not done:
                action = self.agent.act(torch.as_tensor(obs, device=self.device), greedy=True)
                obs, reward, terminated, truncated, info = env.step(action.reshape(-1).cpu().numpy())
                scores[episode] += float(info.get("raw_reward", reward))
                done = terminated or truncated
        return scores

    @property
    def video_fps(self) -> int:
        """Real time: one video frame per agent step, which lasts the task's control step (0.01 to
        0.025 s; see ``DMCEnv.control_timestep``) times the action repeat. An env without
        ``control_timestep`` (a plugin) is taken to step every 0.01 s."""
        seconds = getattr(self.env, "control_timestep", 0.01) * self.action_repeat
        return max(1, round(1.0 / seconds))

    def record_episode(self) -> list[np.ndarray]:
        """Newest RGB frames (h w 3) of one deterministic evaluation episode, for the run's video."""
        env = self.env_factory(seed=self.seed + 2 * EVAL_SEED_OFFSET)
        try:
            obs, _ = env.reset()
            frames = [np.moveaxis(obs[-3:], 0, -1)]
            for _ in range(self.video_max_steps):
                action = self.agent.act(torch.as_tensor(obs, device=self.device), greedy=True)
                obs, _, terminated, truncated, _ = env.step(action.reshape(-1).cpu().numpy())
                frames.append(np.moveaxis(obs[-3:], 0, -1))
                if terminated or truncated:
                    break
        finally:
            env.close()  # its physics and rendering contexts
        return frames
