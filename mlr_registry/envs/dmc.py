"""DeepMind Control from pixels: the dmc2gym + FrameStack(3) pipeline of MLR
(docs/faithfulness.md#dmc-environment-protocol).

The reference builds its env as ``dmc2gym.make(domain, task, seed, visualize_reward=False,
from_pixels=True, height=100, width=100, frame_skip=AR)`` then ``FrameStack(k=3)``. This module
reproduces that pipeline over ``dm_control.suite`` directly (dmc2gym is an unmaintained gym-0.x
wrapper) and speaks gymnasium's API:

- an agent step repeats the action ``action_repeat`` times, summing the rewards (a ``None``
  reward counts 0) and stopping early if the dm_control episode ends; the camera is rendered
  ONCE, after the last repeat;
- the observation is the last ``frame_stack`` RGB renders, channels-first, concatenated on the
  channel axis oldest -> newest; on reset the first render is repeated ``frame_stack`` times;
- an episode lasts ``ceil(episode_length / action_repeat)`` agent steps (dmc2gym's gym
  ``TimeLimit``: 1000 env steps = 125 agent steps for cartpole at AR 8) or until dm_control's
  own time limit (1000 env steps on every suite task but the two ``lqr`` ones, which have none),
  whichever comes first, and ends with ``truncated=True``. The paper's tasks have no terminal
  states, so ``terminated`` stays False and the SAC agent bootstraps through the time limit
  ("infinite bootstrap"); only ``lqr`` can end in a true terminal (discount 0).

The paper's six tasks (``DMC6_TASKS``), their action repeats (``ACTION_REPEAT``) and the check
of a task id are in ``dmc_tasks.py``.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from mlr_registry.envs.dmc_tasks import ACTION_REPEAT, DEFAULT_ACTION_REPEAT, _suite, split_task
from mlr_registry.envs.dmc_tasks import DMC6_TASKS as DMC6_TASKS
from mlr_registry.envs.dmc_tasks import all_task_ids as all_task_ids
from mlr_registry.errors import ConfigError, check_range
from mlr_registry.registry import register


def _check_int(name: str, value: Any, low: int) -> int:
    check_range(name, value, low, integer=True)
    return int(value)


@register("env", "dmc")
class DMCEnv(gymnasium.Env):
    """A dm_control suite task seen from pixels, as MLR's DMC runs see it.

    Observation: ``uint8 (3 * frame_stack, image_size, image_size)`` = ``(c h w)``, RGB frames
    of camera ``camera_id`` oldest -> newest (``9x100x100`` by default; the agent crops to 84).
    Action: ``float (action_dim,)`` in ``[-1, 1]`` (mapped linearly onto the task's bounds,
    which are ``[-1, 1]`` for every suite task; values outside are clipped, where dmc2gym
    asserted).

    ``step`` returns ``(obs, reward, terminated, truncated, info)`` with ``reward`` the sum over
    the repeats (never clipped), ``terminated`` False (True only on a dm_control terminal,
    discount 0, which only ``lqr`` has), ``truncated`` True on the episode's last
    step, ``info["raw_reward"]`` = reward, ``info["game_over"]`` = the episode ended,
    ``info["episode_steps"]`` agent steps and ``info["env_steps"]`` env steps since reset.

    Seeding: ``seed`` (or ``reset(seed=...)``) seeds the task's ``RandomState`` (dmc2gym's
    ``task_kwargs={"random": seed}``: initial states and targets), gymnasium's ``np_random`` and
    ``action_space`` (the random warm-up actions). The reference seeds its one env with the
    run seed and evaluates on that same env (docs/faithfulness.md#dmc-evaluation).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        task: str = "cheetah-run",
        action_repeat: int | None = None,
        image_size: int = 100,
        camera_id: int = 0,
        frame_stack: int = 3,
        seed: int = 0,
        episode_length: int = 1000,
    ) -> None:
        """
        Args:
            task: a dm_control suite task as `domain-task` (``cheetah-run``, ``ball_in_cup-catch``,
                ``walker-walk``...); also the MLflow ``env`` tag. An unknown id is a ConfigError
                naming the closest ids.
            action_repeat: env steps per agent step; None takes the paper's value for the domain
                (``ACTION_REPEAT``: cartpole 8, finger and walker 2, reacher, cheetah and
                ball_in_cup 4) and 4 for other domains.
            image_size: side of the square render (100; the agent crops it to 84).
            camera_id: MuJoCo camera rendered (0, dmc2gym's default; -1 is the free camera).
            frame_stack: RGB frames per observation (3).
            seed: seeds the task (initial states), ``np_random`` and ``action_space``.
            episode_length: env steps per episode (1000); the agent sees
                ``ceil(episode_length / action_repeat)`` steps, as dmc2gym's time limit.
        """
        super().__init__()
        domain, name = split_task(task)
        self.game = f"{domain}-{name}"
        if action_repeat is None:
            action_repeat = ACTION_REPEAT.get(domain, DEFAULT_ACTION_REPEAT)
        self.action_repeat = _check_int("action_repeat", action_repeat, 1)
        self.image_size = _check_int("image_size", image_size, 1)
        self.frame_stack = _check_int("frame_stack", frame_stack, 1)
        self.episode_length = _check_int("episode_length", episode_length, 1)
        seed = _check_int("seed", seed, 0)
        camera_id = _check_int("camera_id", camera_id, -1)
        self.max_episode_steps = -(-self.episode_length // self.action_repeat)  # agent steps

        self._env = _suite().load(domain, name, task_kwargs={"random": seed},
                                  visualize_reward=False)
        ncam = int(self._env.physics.model.ncam)
        if camera_id >= ncam:
            raise ConfigError(f"camera_id = {camera_id} is out of range for {self.game}, which has "
                              f"{ncam} camera(s): use -1 (free camera) .. {ncam - 1}")
        self.camera_id = camera_id

        spec = self._env.action_spec()
        self._action_low = np.asarray(spec.minimum, np.float64)
        self._action_high = np.asarray(spec.maximum, np.float64)
        self.action_dim = int(np.prod(spec.shape))
        self.num_actions = self.action_dim  # the trainer's generic name for the action size
        # seconds of simulated time per env step: 0.01 (cartpole, cheetah), 0.02 (reacher, finger,
        # ball_in_cup), 0.025 (walker); an agent step lasts action_repeat times that
        self.control_timestep = float(self._env.control_timestep())
        self.observation_shape: tuple[int, int, int] = (3 * self.frame_stack, self.image_size,
                                                        self.image_size)
        self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), dtype=np.float32)
        self.observation_space = spaces.Box(0, 255, self.observation_shape, dtype=np.uint8)
        self._stack = np.zeros(self.observation_shape, np.uint8)  # oldest -> newest
        self._steps = 0  # agent steps since reset
        self._env_steps = 0
        self._started = False
        self._game_over = False
        self._seed(seed)

    # --- gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; the first render fills the whole stack."""
        if seed is not None:
            self._seed(_check_int("seed", seed, 0))
        self._env.reset()
        frame = self._render()
        self._stack[:] = np.concatenate([frame] * self.frame_stack, axis=0)
        self._steps = self._env_steps = 0
        self._started, self._game_over = True, False
        return self._stack.copy(), self._info(raw_reward=0.0)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._started or self._game_over:
            raise RuntimeError("DMCEnv.step called " + ("before reset()" if not self._started else
                               "after the episode ended (info['game_over']); call reset() first"))
        a = np.asarray(action, np.float64)
        if a.size != self.action_dim:
            raise ValueError(f"action of shape {a.shape} for {self.game}, which takes "
                             f"{self.action_dim} action dimension(s)")
        a = np.clip(a.reshape(self.action_dim), -1.0, 1.0)
        a = self._action_low + (a + 1.0) * 0.5 * (self._action_high - self._action_low)
        reward = 0.0
        for _ in range(self.action_repeat):
            time_step = self._env.step(a)
            self._env_steps += 1
            reward += float(time_step.reward or 0.0)
            if time_step.last():
                break
        self._push(self._render())
        self._steps += 1
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = not terminated and (time_step.last() or self._steps >= self.max_episode_steps)
        self._game_over = terminated or truncated
        return self._stack.copy(), reward, terminated, truncated, self._info(raw_reward=reward)

    def close(self) -> None:
        self._env.close()

    def release_rendering(self) -> None:
        """Free the physics' OpenGL and MuJoCo rendering contexts; the next render makes new ones.
        Call it on the thread that rendered (an EGL context is freed where it is current): the
        DMC trainer does so when it stepped this env on its own thread. Uses dm_control 1.0.50's
        private ``_contexts`` (pinned)."""
        physics = self._env.physics
        with physics._contexts_lock:
            if physics._contexts:
                physics._free_rendering_contexts()

    # --- checkpoints ---------------------------------------------------------------------------

    # Model fields dm_control tasks rewrite per episode (reacher's and finger's targets, ...).
    _MODEL_FIELDS = ("body_pos", "body_quat", "geom_pos", "geom_quat", "geom_size", "geom_rgba",
                     "site_pos", "site_quat", "site_size", "site_rgba", "mat_rgba")

    def get_state(self) -> dict[str, Any]:
        """Everything the next ``step``/``reset`` depends on, as arrays and plain values:
        MuJoCo's full integration state (``mj_getState(mjSTATE_INTEGRATION)``: time, qpos, qvel,
        act, controls, applied forces, warm start), the model fields tasks rewrite per episode,
        the task's ``RandomState``, the dm_control step counter, the gymnasium RNGs and the
        frame stack."""
        import mujoco

        physics = self._env.physics
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        model, data = physics.model._model, physics.data._data
        integration = np.empty(mujoco.mj_stateSize(model, spec), np.float64)
        mujoco.mj_getState(model, data, integration, spec)
        kind, keys, pos, has_gauss, cached = self._env.task.random.get_state()
        return {
            "game": self.game, "physics": integration,
            "model": {name: getattr(model, name).copy() for name in self._MODEL_FIELDS},
            "task_random": {"kind": kind, "keys": keys, "pos": int(pos), "has_gauss": int(has_gauss),
                            "cached_gaussian": float(cached)},
            "control_step_count": int(self._env._step_count),
            "control_reset_next_step": bool(self._env._reset_next_step),
            "np_random": self.np_random.bit_generator.state,
            "action_space_random": self.action_space.np_random.bit_generator.state,
            "stack": self._stack.copy(), "steps": self._steps, "env_steps": self._env_steps,
            "started": self._started, "game_over": self._game_over}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned, then recompute the position-dependent
        quantities (``mj_step1``), which is where dm_control leaves them after every step."""
        import mujoco

        if state["game"] != self.game:
            raise ValueError(f"env state is for task {state['game']!r}, this env is {self.game!r}")
        physics = self._env.physics
        model, data = physics.model._model, physics.data._data
        for name in self._MODEL_FIELDS:
            getattr(model, name)[...] = state["model"][name]
        mujoco.mj_setState(model, data, np.asarray(state["physics"], np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_step1(model, data)
        r = state["task_random"]
        self._env.task.random.set_state((r["kind"], r["keys"], r["pos"], r["has_gauss"], r["cached_gaussian"]))
        self._env._step_count = int(state["control_step_count"])
        self._env._reset_next_step = bool(state["control_reset_next_step"])
        self.np_random.bit_generator.state = state["np_random"]
        self.action_space.np_random.bit_generator.state = state["action_space_random"]
        self._stack[...] = state["stack"]
        self._steps, self._env_steps = int(state["steps"]), int(state["env_steps"])
        self._started, self._game_over = bool(state["started"]), bool(state["game_over"])

    # --- internals -----------------------------------------------------------------------------

    def _seed(self, seed: int) -> None:
        self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(seed)
        self._env.task.random.seed(seed)  # the RandomState dm_control draws initial states from
        self.action_space.seed(seed)
        self._started = False

    def _render(self) -> np.ndarray:
        frame = self._env.physics.render(height=self.image_size, width=self.image_size,
                                         camera_id=self.camera_id)  # (h w 3)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))  # (3 h w)

    def _push(self, frame: np.ndarray) -> None:
        self._stack[:-3] = self._stack[3:]
        self._stack[-3:] = frame

    def _info(self, raw_reward: float) -> dict[str, Any]:
        return {"raw_reward": raw_reward, "game_over": self._game_over,
                "episode_steps": self._steps, "env_steps": self._env_steps}
