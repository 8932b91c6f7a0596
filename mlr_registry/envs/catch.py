"""Catch: a tiny built-in pixel game for learning tests, with AtariEnv's interface.

Not part of the paper. It lets an integration test check, in seconds on a CPU, that the whole
pipeline (env -> replay -> masker -> agent -> trainer) learns something: the optimal policy
gets +1 per episode and a uniformly random one about -0.7 on the default 7x7 board.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from mlr_registry.errors import ConfigError, check_range
from mlr_registry.registry import register

LEFT, STAY, RIGHT = 0, 1, 2


@register("env", "catch")
class CatchEnv(gymnasium.Env):
    """A ball falls from a random column of the top row; catch it with the bottom-row paddle.

    Board ``grid x grid``; each step the paddle moves (0 left, 1 stay, 2 right, clipped at the
    walls) and the ball falls one row. When the ball reaches the bottom row, after ``grid - 1``
    steps, the episode ends (``terminated``) with reward +1 if the paddle is under the ball,
    else -1; every other step gives 0. The paddle starts in the middle column, so every ball can
    be caught.

    Observation: ``uint8 (frame_stack, image_size, image_size)``, ball and paddle at 255 on a
    0 background, each cell ``image_size // grid`` pixels (12 px by default, the size of an MLR
    mask patch), frames oldest -> newest, the stack zeroed on reset except the newest frame (as
    in AtariEnv). ``info`` carries ``raw_reward`` (= reward), ``game_over`` (= terminated) and
    ``life_loss`` (always False), so trainers treat it like an Atari game with one life.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, grid: int = 7, image_size: int = 84, frame_stack: int = 4, seed: int = 0,
                 terminal_on_life_loss: bool = True) -> None:
        """
        Args:
            grid: board side in cells (>= 2); episodes last ``grid - 1`` steps.
            image_size: side of the rendered square image; must be a multiple of ``grid``.
            frame_stack: frames per observation.
            seed: seeds the ball's start column (also ``reset(seed=...)``).
            terminal_on_life_loss: accepted for interface parity with ``atari`` (trainers pass
                it to eval envs); Catch has no lives, so it changes nothing.
        """
        super().__init__()
        for name, value, low in (("grid", grid, 2), ("image_size", image_size, 1),
                                 ("frame_stack", frame_stack, 1), ("seed", seed, 0)):
            check_range(name, value, low, integer=True)
        if image_size % grid:
            raise ConfigError(f"image_size = {image_size} must be a multiple of grid = {grid} "
                              f"(e.g. {grid * max(1, round(image_size / grid))})")
        self.game = "catch"
        self.grid = int(grid)
        self.image_size = int(image_size)
        self.frame_stack = int(frame_stack)
        self.num_actions = 3
        self.observation_shape: tuple[int, int, int] = (self.frame_stack, self.image_size, self.image_size)
        self.action_space = spaces.Discrete(self.num_actions)
        self.observation_space = spaces.Box(0, 255, self.observation_shape, dtype=np.uint8)
        self._cell = self.image_size // self.grid
        self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(int(seed))
        self._stack = np.zeros(self.observation_shape, np.uint8)  # oldest -> newest
        self._ball_row = self._ball_col = 0
        self._paddle = self.grid // 2
        self._done = True

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._ball_row = 0
        self._ball_col = int(self.np_random.integers(self.grid))
        self._paddle = self.grid // 2
        self._done = False
        self._stack[:] = 0
        self._push_frame()
        return self._stack.copy(), {"raw_reward": 0.0, "game_over": False, "life_loss": False}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("CatchEnv.step called before reset() or after the episode ended")
        index = int(action)
        if not 0 <= index < self.num_actions:
            raise ValueError(f"action {action!r} out of range for catch (3 actions: 0 left, 1 stay, 2 right)")
        self._paddle = min(max(self._paddle + index - STAY, 0), self.grid - 1)
        self._ball_row += 1
        terminated = self._ball_row == self.grid - 1
        reward = (1.0 if self._paddle == self._ball_col else -1.0) if terminated else 0.0
        self._done = terminated
        self._push_frame()
        info = {"raw_reward": reward, "game_over": terminated, "life_loss": False}
        return self._stack.copy(), reward, terminated, False, info

    def get_state(self) -> dict[str, Any]:
        """Board, frame stack and the ball-column RNG (arrays and plain values)."""
        return {"np_random": self.np_random.bit_generator.state, "stack": self._stack.copy(),
                "ball": (self._ball_row, self._ball_col), "paddle": self._paddle, "done": self._done}

    def set_state(self, state: dict[str, Any]) -> None:
        self.np_random.bit_generator.state = state["np_random"]
        self._stack[...] = state["stack"]
        self._ball_row, self._ball_col = (int(v) for v in state["ball"])
        self._paddle, self._done = int(state["paddle"]), bool(state["done"])

    def _push_frame(self) -> None:
        board = np.zeros((self.grid, self.grid), np.uint8)  # (rows cols)
        board[self._ball_row, self._ball_col] = 255
        board[self.grid - 1, self._paddle] = 255
        frame = board.repeat(self._cell, axis=0).repeat(self._cell, axis=1)  # (h w)
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = frame
