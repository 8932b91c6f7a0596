"""The DeepMind Control trainer: the loop of the reference train.py (MLR_SPEC Part 2 §1.2, §2, §6).

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
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mlr_registry.agents.sac import SAC
from mlr_registry.envs.dmc import DMCEnv
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.registry import register
from mlr_registry.replay.transition_replay import TransitionReplay
from mlr_registry.training.artifacts import CurveTracker, log_run_artifacts
from mlr_registry.training.common import (
    MetricWindow,
    objective_of,
    registered_name,
    resolve_device,
    seed_everything,
)
from mlr_registry.training.trainer import Tracker

EVAL_SEED_OFFSET = 10_000


@register("trainer", "dmc")
class DMCTrainer:
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
        progress: bool = True,
        video: bool = True,
        video_max_steps: int = 2000,
    ):
        """num_env_steps, eval_every and log_every count env steps; init_steps counts agent
        steps (the reference multiplies its 1000 by the action repeat)."""
        check_range("dmc.num_env_steps", num_env_steps, 1)
        check_range("dmc.init_steps", init_steps, 0)
        check_range("dmc.batch_size", batch_size, 1)
        check_range("dmc.aux_batch_size", aux_batch_size, 1)
        check_range("dmc.eval_every", eval_every, 0)
        check_range("dmc.eval_episodes", eval_episodes, 1)
        check_range("dmc.log_every", log_every, 1)
        self.device = resolve_device(device)
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
        self.progress = progress
        self.video = video
        self.video_max_steps = video_max_steps
        self.update_count = 0
        self._rng = np.random.default_rng(seed)
        self._eval_env = None

    def run_tags(self) -> dict[str, str]:
        return {"benchmark": self.benchmark, "env": str(self.env.game),
                "agent": registered_name("agent", self.agent), "objective": self.objective,
                "seed": str(self.seed)}

    def _due(self, env_step: int, every: int) -> bool:
        """True when a multiple of ``every`` env steps falls in this agent step's AR env steps
        (exactly ``env_step % every == 0`` when ``every`` is a multiple of the action repeat)."""
        return every > 0 and env_step % every < self.action_repeat

    def train(self, tracker: Tracker) -> dict[str, float]:
        tracker = CurveTracker(tracker)
        agent_steps = self.num_env_steps // self.action_repeat
        wants_sequences = len(getattr(self.agent, "aux_losses", [])) > 0
        obs, _ = self.env.reset(seed=self.seed)
        episode_return, episode_steps = 0.0, 0
        window = MetricWindow()
        bar = tqdm(total=self.num_env_steps, disable=not self.progress, unit="env step", dynamic_ncols=True,
                   desc=f"{self.benchmark}:{self.env.game}:{self.objective}")
        for i in range(agent_steps):
            env_step = i * self.action_repeat
            if self._due(env_step, self.eval_every) and (env_step > 0 or self.eval_at_start):
                tracker.log_metrics(self._eval_metrics(self.evaluate()), step=env_step)
            if i < self.init_steps:
                action = self._rng.uniform(-1.0, 1.0, self.env.action_dim).astype(np.float32)
            else:
                obs_t = torch.as_tensor(obs, device=self.device)
                action = self.agent.act(obs_t, greedy=False).reshape(-1).cpu().numpy()
            if i >= self.init_steps:
                window.add(self._update(wants_sequences))
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            self.replay.add(obs, action, float(reward), next_obs, done=bool(terminated),
                            episode_end=bool(terminated or truncated))
            episode_return += float(info.get("raw_reward", reward))
            episode_steps += 1
            obs = next_obs
            if terminated or truncated:
                tracker.log_metrics({"train/episode_return": episode_return,
                                     "train/episode_length": episode_steps}, step=env_step + self.action_repeat)
                episode_return, episode_steps = 0.0, 0
                obs, _ = self.env.reset()
            bar.update(self.action_repeat)
            if self._due(env_step + self.action_repeat, self.log_every):
                metrics = window.flush(env_step + self.action_repeat, self.update_count)
                tracker.log_metrics(metrics, step=env_step + self.action_repeat)
                bar.set_postfix(updates_per_s=f"{metrics['throughput/updates_per_s']:.1f}")
        bar.close()
        if window:
            tracker.log_metrics(window.flush(self.num_env_steps, self.update_count), step=self.num_env_steps)
        final = self._eval_metrics(self.evaluate(), final=True)
        tracker.log_metrics(final, step=self.num_env_steps)
        frames = self.record_episode() if self.video else None
        log_run_artifacts(tracker, tracker.curves, " ".join(self.run_tags().values()), frames, fps=self.video_fps)
        return final

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

    def evaluate(self) -> np.ndarray:
        """``eval_episodes`` episodes with the deterministic action tanh(mu) on center crops."""
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
        """Real time: dm_control's control step is 0.01 s for these tasks, times the action repeat."""
        return max(1, round(100 / self.action_repeat))

    def record_episode(self) -> list[np.ndarray]:
        """Newest RGB frames (h w 3) of one deterministic evaluation episode, for the run's video."""
        env = self.env_factory(seed=self.seed + 2 * EVAL_SEED_OFFSET)
        obs, _ = env.reset()
        frames = [np.moveaxis(obs[-3:], 0, -1)]
        for _ in range(self.video_max_steps):
            action = self.agent.act(torch.as_tensor(obs, device=self.device), greedy=True)
            obs, _, terminated, truncated, _ = env.step(action.reshape(-1).cpu().numpy())
            frames.append(np.moveaxis(obs[-3:], 0, -1))
            if terminated or truncated:
                break
        return frames
