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

from mlr_registry.agents.sac import SAC
from mlr_registry.envs.dmc import DMCEnv
from mlr_registry.errors import CheckpointError, ConfigError, check_range
from mlr_registry.registry import register
from mlr_registry.replay.transition_replay import TransitionReplay
from mlr_registry.training.artifacts import CurveTracker, log_run_artifacts
from mlr_registry.training.checkpoint import Checkpointer
from mlr_registry.training.common import fast_path_tags, objective_of, registered_name, resolve_device, set_threads
from mlr_registry.training.env_thread import beside
from mlr_registry.training.evaluation import EnvWorkers, play_episodes, resolve_workers
from mlr_registry.training.loop_trainer import LoopTrainer, checkpointing
from mlr_registry.training.metric_window import MetricWindow
from mlr_registry.training.progress import check_progress, final_evaluation_note, progress_bar
from mlr_registry.training.rng import (
    generator_state,
    global_rng_state,
    seed_everything,
    seeded_generator_states,
    set_generator_state,
    set_global_rng_state,
    set_seeded_generator_states,
)
from mlr_registry.training.trainer import Tracker
from mlr_registry.transfer import to_device

EVAL_SEED_OFFSET = 10_000


@register("trainer", "dmc")
class DMCTrainer(LoopTrainer):
    """Trains a continuous-control agent (SAC) from pixels on a dm_control task and tracks it.

    env, agent and replay are factories (gin: ``@envs.dmc``, ``@agents.sac``,
    ``@replays.transition``, without parentheses). ``benchmark`` defaults to ``dmc100k`` /
    ``dmc500k`` from the budget (``dmc<N>k`` otherwise).
    """

    def __init__(
        self,
        env: Callable[..., Any] = DMCEnv,
        agent: Callable[..., Any] = SAC,
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
        overlap_env_step: bool = False,
        eval_workers: int = 0,
        threads: int = 0,
    ):
        """num_env_steps, eval_every, log_every and checkpoint_every count env steps;
        init_steps counts agent steps (the reference multiplies its 1000 by the action repeat).
        checkpoint_every (0 = off) applies when the CLI gives :meth:`train` a Checkpointer; a
        checkpoint holds the whole replay (~3 GB at capacity 100k), hence the sparse default.
        overlap_env_step: run each env step (physics + rendering, CPU) on a thread while the
        update runs (GPU), instead of after it. Same results (see :meth:`_update_while_stepping`);
        off by default, on in ``gin/fast/dmc_mlr_fast.gin``. dm_control renders on its own
        thread anyway, so stepping from another thread is safe.
        eval_workers (0 = the reference's one eval env; -1 = one worker per core; N): play the
        evaluation episodes in lockstep in worker processes (see :meth:`evaluate`).
        progress ('auto' = when stderr is a terminal, True, False): a bar with the rate and ETA.
        threads (0 = OMP_NUM_THREADS where set, else 1 on a CPU device; N): torch's CPU threads
        for the run (:func:`~mlr_registry.training.common.set_threads`)."""
        check_range("dmc.num_env_steps", num_env_steps, 1, integer=True)
        check_range("dmc.init_steps", init_steps, 0)
        check_range("dmc.batch_size", batch_size, 1, integer=True)
        check_range("dmc.aux_batch_size", aux_batch_size, 1, integer=True)
        check_range("dmc.eval_every", eval_every, 0, integer=True)
        check_range("dmc.eval_episodes", eval_episodes, 1, integer=True)
        check_range("dmc.log_every", log_every, 1, integer=True)
        check_range("dmc.checkpoint_every", checkpoint_every, 0, integer=True)
        self.progress = check_progress("dmc.progress", progress)
        self.device = resolve_device(device)
        self.threads = set_threads("dmc.threads", threads, self.device)
        seed_everything(seed)
        self.seed = seed
        self.env_factory = env
        self.env = env(seed=seed)
        self.action_repeat = int(self.env.action_repeat)
        if num_env_steps % self.action_repeat:
            raise ConfigError(f"dmc.num_env_steps = {num_env_steps} is not a multiple of the action repeat "
                              f"{self.action_repeat} of {self.env.game}; the final evaluation would miss it")
        self.agent = agent(observation_shape=self.env.observation_shape, num_actions=self.env.action_dim,
                           device=str(self.device))
        self.replay = replay(observation_shape=self.env.observation_shape, action_dim=self.env.action_dim,
                             device=str(self.device), seed=seed)
        self.num_env_steps = num_env_steps
        self.init_steps = init_steps
        self.batch_size = batch_size
        self.aux_batch_size = aux_batch_size
        self.eval_every = eval_every
        self.eval_episodes = eval_episodes
        self.eval_at_start = eval_at_start
        self.log_every = log_every
        self.benchmark = benchmark or f"dmc{num_env_steps // 1000}k"
        self.objective = objective or objective_of(self.agent)
        self.video = video
        self.video_max_steps = video_max_steps
        self.checkpoint_every = checkpoint_every
        self.overlap_env_step = bool(overlap_env_step)
        self.eval_workers = resolve_workers("dmc.eval_workers", eval_workers, eval_episodes)
        self._eval_pool = EnvWorkers(self.eval_workers) if self.eval_workers else None
        self.update_count = 0
        self._rng = np.random.default_rng(seed)
        self._eval_env = None
        self._resume: dict[str, Any] | None = None

    def run_tags(self) -> dict[str, str]:
        return {"benchmark": self.benchmark, "env": str(self.env.game),
                "agent": registered_name("agent", self.agent), "objective": self.objective,
                "seed": str(self.seed), **fast_path_tags(self.agent)}

    def _due(self, env_step: int, every: int) -> bool:
        """True when a multiple of ``every`` env steps falls in this agent step's AR env steps
        (exactly ``env_step % every == 0`` when ``every`` is a multiple of the action repeat)."""
        return every > 0 and env_step % every < self.action_repeat

    def _train(self, tracker: Tracker, checkpointer: Checkpointer | None) -> dict[str, float]:
        tracker = CurveTracker(tracker)
        self._curves = tracker
        agent_steps = self.num_env_steps // self.action_repeat
        wants_sequences = len(getattr(self.agent, "aux_losses", [])) > 0
        executor = self._env_thread()
        if self._resume is None:
            self._obs, _ = self._on_env_thread(executor, self.env.reset, seed=self.seed)
            self._episode_return, self._episode_steps = 0.0, 0
            self._window = MetricWindow()
            self._agent_steps_done = 0
        else:
            self._restore_loop(self._resume)
            self._resume = None
        window = self._window
        bar = progress_bar(self.progress, self.num_env_steps, self._agent_steps_done * self.action_repeat,
                           "env step", f"{self.benchmark}:{self.env.game}:{self.objective}")
        checkpointer, guard = checkpointing(checkpointer, self.env, self.agent, self.replay)
        with guard:
            for i in range(self._agent_steps_done, agent_steps):
                env_step = i * self.action_repeat
                if self._due(env_step, self.eval_every) and (env_step > 0 or self.eval_at_start):
                    tracker.log_metrics(self._evaluation(env_step=env_step), step=env_step)
                obs = self._obs
                if i < self.init_steps:
                    action = self._rng.uniform(-1.0, 1.0, self.env.action_dim).astype(np.float32)
                else:
                    obs_t = to_device(obs, self.device)
                    action = self.agent.act(obs_t, greedy=False).reshape(-1).cpu().numpy()
                if i >= self.init_steps:
                    metrics, outcome = self._update_while_stepping(action, wants_sequences, executor)
                    window.add(metrics)
                else:
                    outcome = self._on_env_thread(executor, self.env.step, action)
                next_obs, reward, terminated, truncated, info = outcome
                self.replay.add(obs, action, float(reward), next_obs, done=bool(terminated),
                                episode_end=bool(terminated or truncated))
                self._episode_return += float(info.get("raw_reward", reward))
                self._episode_steps += 1
                self._obs = next_obs
                if terminated or truncated:
                    tracker.log_metrics({"train/episode_return": self._episode_return,
                                         "train/episode_length": self._episode_steps},
                                        step=env_step + self.action_repeat)
                    self._episode_return, self._episode_steps = 0.0, 0
                    self._obs, _ = self._on_env_thread(executor, self.env.reset)
                bar.update(self.action_repeat)
                if self._due(env_step + self.action_repeat, self.log_every):
                    metrics = self._flush(window, env_step + self.action_repeat)
                    tracker.log_metrics(metrics, step=env_step + self.action_repeat)
                    bar.set_postfix(updates_per_s=f"{metrics['throughput/updates_per_s']:.1f}")
                self._agent_steps_done = i + 1
                if checkpointer is not None:
                    due = self._due(env_step + self.action_repeat, self.checkpoint_every)
                    checkpointer.step_end(env_step + self.action_repeat, self.state_dict, "dmc", due)
        self._stop_env_thread()  # before the evaluation renders on this thread
        if window:
            tracker.log_metrics(self._flush(window, self.num_env_steps), step=self.num_env_steps)
        final_evaluation_note(bar, self.eval_episodes, getattr(self.env, "episode_length", None), "env steps")
        final = self._evaluation(final=True, env_step=self.num_env_steps)
        bar.close()
        tracker.log_metrics(final, step=self.num_env_steps)
        frames = self.record_episode() if self.video else None
        log_run_artifacts(tracker, tracker.curves, " ".join(self.run_tags().values()), frames, fps=self.video_fps)
        return final

    def _flush(self, window: MetricWindow, env_step: int) -> dict[str, float]:
        """The window's means, and with ``replays.transition.fixed_size_sequences`` how many aux
        batches so far had to repeat windows (see ``TransitionReplay``)."""
        metrics = window.flush(env_step, self.update_count)
        if getattr(self.replay, "fixed_size_sequences", False):
            metrics["replay/short_sequence_batches"] = float(self.replay.short_sequence_batches)
        return metrics

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
        ``overlap_env_step``, the env step on its own thread while the update runs. The results are
        the same: the action was chosen before the update (the reference's order), the update
        reads only the replay (the new transition is added after both), and the env draws from
        its own task RNG, never torch's or numpy's global ones (``tests/test_dmc_overlap.py``
        checks equality)."""
        if executor is None:
            metrics = self._update(wants_sequences)
            return metrics, self.env.step(action)
        return beside(executor, lambda: self.env.step(action), lambda: self._update(wants_sequences))

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the loop needs to continue exactly at an agent-step boundary: agent,
        replay, training and evaluation envs (physics, task RNG, frame stacks), the warm-up
        action RNG, the global RNGs, the current observation, the open episode, the metric
        window and the learning curves so far. Only valid between steps of :meth:`train`."""
        return {"trainer": "dmc", "step": self._agent_steps_done * self.action_repeat,
                "agent_steps": self._agent_steps_done, "agent": self.agent.checkpoint_state(),
                "replay": self.replay.state_dict(), "env": self.env.get_state(),
                "eval_env": self._eval_env.get_state() if self._eval_env is not None else None,
                "rng": global_rng_state(), "trainer_rng": generator_state(self._rng),
                "generators": seeded_generator_states(self.agent),
                "loop": {"obs": np.asarray(self._obs), "episode_return": self._episode_return,
                         "episode_steps": self._episode_steps, "update_count": self.update_count,
                         "window": self._window.state_dict(), "curves": self._curves.state_dict()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load agent, replay and envs now (errors surface before anything runs); the RNGs and
        the loop state are applied when :meth:`train` starts."""
        if state.get("trainer") != "dmc":
            raise CheckpointError(f"checkpoint is from trainer {state.get('trainer')!r}, not dmc")
        self.agent.load_checkpoint_state(state["agent"])
        self.replay.load_state_dict(state["replay"])
        self.env.set_state(state["env"])
        if state["eval_env"] is not None:
            if self._eval_env is None:
                self._eval_env = self.env_factory(seed=self.seed + EVAL_SEED_OFFSET)
            self._eval_env.set_state(state["eval_env"])
        set_seeded_generator_states(self.agent, state["generators"])
        self._resume = state

    def _restore_loop(self, state: dict[str, Any]) -> None:
        loop = state["loop"]
        self._agent_steps_done = int(state["agent_steps"])
        self._obs = np.array(loop["obs"])
        self._episode_return, self._episode_steps = float(loop["episode_return"]), int(loop["episode_steps"])
        self.update_count = int(loop["update_count"])
        self._window = MetricWindow()
        self._window.load_state_dict(loop["window"])
        self._curves.load_state_dict(loop["curves"])
        set_generator_state(self._rng, state["trainer_rng"])
        set_global_rng_state(state["rng"])

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

    def _eval_metrics(self, scores: np.ndarray, final: bool = False) -> dict[str, float]:
        metrics = {"eval/return_mean": float(np.mean(scores)), "eval/return_std": float(np.std(scores))}
        if final:
            metrics["final_return"] = metrics["eval/return_mean"]
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
