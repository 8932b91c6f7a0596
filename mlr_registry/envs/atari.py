"""Atari-100k environment: the official MLR/SPR protocol over ale-py (docs/faithfulness.md#atari-environment-protocol).

Why not gymnasium's ``AtariPreprocessing`` + ``FrameStackObservation``: they differ from the
protocol the paper's numbers come from. AtariPreprocessing resizes with ``INTER_AREA`` (the
official code uses cv2's default ``INTER_LINEAR`` on the full 210x160 frame), draws
``0..noop_max`` agent-level noops, and with ``terminal_on_life_loss`` ends the episode so that
the next ``reset`` restarts the game; the official env keeps playing after a life loss and only
zeroes the frame stack. So this module talks to the ALE directly and reproduces
``src/rlpyt_atari_env.py:AtariEnv`` frame by frame, while keeping gymnasium's API.

The 26 Atari-100k games and Table 1's Human / Random scores live in
:mod:`mlr_registry.atari_scores`.
"""

from __future__ import annotations

from typing import Any

import cv2
import gymnasium
import numpy as np
from ale_py import Action, ALEInterface, ALEState, LoggerMode, roms
from gymnasium import spaces

from mlr_registry.errors import ConfigError, check_range, closest_names
from mlr_registry.registry import register

ALEInterface.setLoggerMode(LoggerMode.Error)  # the ALE prints a banner per ROM load otherwise


def rom_path(game: str) -> str:
    """The ROM file of ALE game ``game`` (a ROM id such as 'pong'); an unknown or uninstalled
    id is a ConfigError naming the closest ids."""
    if not isinstance(game, str):
        raise ConfigError(f"atari.game = {game!r} is a {type(game).__name__}; expected an ALE ROM id such as 'pong'")
    ids = roms.get_all_rom_ids()
    if game not in ids:
        close = closest_names(game, ids)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown Atari game {game!r}{hint} (game takes an ALE ROM id in snake_case, "
                          f"e.g. 'battle_zone', 'ms_pacman'; ale_py.roms.get_all_rom_ids() lists all "
                          f"{len(ids)})")
    path = roms.get_rom_path(game)
    if path is None:  # listed but not shipped with this ale-py build
        raise ConfigError(f"the ROM of Atari game {game!r} is not installed with ale-py")
    return str(path)


@register("env", "atari")
class AtariEnv(gymnasium.Env):
    """One ALE game under the official MLR (rlpyt ``AtariEnv``) protocol, as a gymnasium env.

    Per agent step: the action is repeated ``frame_skip`` times; the grayscale
    screen is read after the (frame_skip-1)-th and the last act, their elementwise max is
    resized (full 210x160 frame, cv2 INTER_LINEAR) to ``image_size`` and pushed on a stack of
    ``frame_stack`` frames ordered oldest -> newest. The reward is the sum of the raw rewards,
    sign-clipped when ``clip_rewards``; the raw sum is ``info["raw_reward"]``.

    Observation: ``uint8 (frame_stack, image_size, image_size)`` = ``(c h w)``.

    Episodes (gymnasium semantics for the official "done without reset" of ``episodic_lives``):

    - game over, or the horizon (``max_episode_steps`` agent steps since the last hard reset,
      plus one with ``horizon_extra_step``, see below): the game ends,
      ``info["game_over"] = True`` (``terminated`` for a real game over, ``truncated`` for the
      horizon; the trainer stores both as done). The next ``reset()`` is a hard reset.
    - a life lost while the game goes on: ``info["life_loss"] = True``. With
      ``terminal_on_life_loss`` (training), ``terminated = True``, the frame stack is zeroed
      except the newest frame, and the ALE is *not* reset: the following ``reset()`` is a soft
      reset that returns that same observation without touching the ALE (``info["soft_reset"]``).
      Without it (evaluation) nothing else happens. (Calling ``step`` instead of ``reset``
      after a life-loss terminal also continues the game, exactly like the official sampler.)

    Hard reset: ``reset_game``, one noop frame, then ``np_random.integers(1, noop_max + 1)``
    single-frame noops (1..30), restarted if a life is lost during them; the stack is zeroed and
    the newest frame is the current screen. No FIRE on reset; no sticky actions; minimal action
    set.

    Faithful details kept from the official code: a lost life is followed by one extra noop
    frame (rlpyt's ``_life_reset``) whose reward is discarded, and with
    ``terminal_on_life_loss`` the newest frame after a life loss is that screen alone (the raw
    frames are zeroed before the max); a life is "lost" only when ``0 < lives < lives at the
    last reset or loss`` (a bonus life is not recorded, as in rlpyt); the horizon check runs
    before the step counter moves, so an episode is cut after ``max_episode_steps + 1`` agent
    steps (27,001; ``horizon_extra_step = False`` cuts at exactly ``max_episode_steps``).
    Deviation (reachable only in a corner case): a life lost during the reset noops restarts the
    reset cleanly (rlpyt recursed and then ran the rest of the outer noop loop).

    Seeding: ``seed`` (or ``reset(seed=...)``) seeds ``self.np_random`` (noop counts) and,
    unless ``ale_seed`` is given, the ALE's ``random_seed`` (the ROM is reloaded on
    ``reset(seed=...)``). The official env derives the ALE seed of every env from the run seed,
    and ``seed * 100 + i`` seeds only evaluation env i's noop RNG (env 0 and the training env:
    the run seed); the trainer reproduces this by passing ``ale_seed`` = the run seed.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        game: str = "alien",
        frame_skip: int = 4,
        frame_stack: int = 4,
        image_size: int = 84,
        noop_max: int = 30,
        terminal_on_life_loss: bool = True,
        max_episode_steps: int = 27_000,
        horizon_extra_step: bool = True,
        clip_rewards: bool = True,
        seed: int = 0,
        ale_seed: int | None = None,
    ) -> None:
        """
        Args:
            game: ALE ROM id in snake_case (``pong``, ``battle_zone``, ``up_n_down``); also the
                MLflow ``env`` tag. An unknown id is a ConfigError naming the closest ids.
            frame_skip: emulator frames per agent step (4); the max-pool uses the last two.
            frame_stack: frames per observation (4).
            image_size: side of the square resized frame (84).
            noop_max: a hard reset runs 1..noop_max single-frame noops (30); 0 disables them.
            terminal_on_life_loss: a lost life ends the (training) episode without resetting
                the game (True for training, False for evaluation: ``episodic_lives``).
            max_episode_steps: the horizon: agent steps per game before it is cut (27,000 =
                108k frames).
            horizon_extra_step: the official env compares its step counter with the horizon
                before incrementing it, so one more step runs: a game is cut after
                ``max_episode_steps + 1`` steps (True, faithful); False cuts it after exactly
                ``max_episode_steps``.
            clip_rewards: reward = sign(raw reward) (True for training; scores use the raw sum).
            seed: seeds the noop draws, and the ALE when ``ale_seed`` is None.
            ale_seed: the seed the ALE's stream derives from, kept across ``reset(seed=...)``;
                None: ``seed``. (The official evaluation envs share the run seed's ALE stream.)
        """
        super().__init__()
        for name, value, low in (("frame_skip", frame_skip, 1), ("frame_stack", frame_stack, 1),
                                 ("image_size", image_size, 1), ("noop_max", noop_max, 0),
                                 ("max_episode_steps", max_episode_steps, 1)):
            check_range(name, value, low, integer=True)
        for name, value in (("seed", seed), ("ale_seed", 0 if ale_seed is None else ale_seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"{name} = {value!r} must be a non-negative integer")
        self.ale_seed = None if ale_seed is None else int(ale_seed)
        self.game = game
        self._rom = rom_path(game)
        self.frame_skip = int(frame_skip)
        self.frame_stack = int(frame_stack)
        self.image_size = int(image_size)
        self.noop_max = int(noop_max)
        self.terminal_on_life_loss = bool(terminal_on_life_loss)
        self.max_episode_steps = int(max_episode_steps)
        self.horizon_extra_step = bool(horizon_extra_step)
        self.clip_rewards = bool(clip_rewards)

        self._ale = ALEInterface()
        self._seed(int(seed))
        self._action_set: list[Action] = list(self._ale.getMinimalActionSet())
        self.num_actions = len(self._action_set)
        self.observation_shape: tuple[int, int, int] = (self.frame_stack, self.image_size, self.image_size)
        self.action_space = spaces.Discrete(self.num_actions)
        self.observation_space = spaces.Box(0, 255, self.observation_shape, dtype=np.uint8)

        height, width = self._ale.getScreenDims()
        self._raw_frame_1 = np.zeros((height, width), np.uint8)  # after the (frame_skip-1)-th act
        self._raw_frame_2 = np.zeros((height, width), np.uint8)  # after the last act
        self._max_frame = np.zeros((height, width), np.uint8)
        self._stack = np.zeros(self.observation_shape, np.uint8)  # oldest -> newest
        self._lives = 0
        self._steps = 0  # agent steps since the last hard reset
        self._started = False
        self._game_over = False
        self._soft_reset_pending = False

    # --- gymnasium API -------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Soft reset after a life-loss terminal (same observation, ALE untouched), else hard."""
        if seed is not None:
            self._seed(int(seed))  # also reloads the ROM: a seeded reset is always hard
        elif self._soft_reset_pending:
            self._soft_reset_pending = False
            return self._stack.copy(), self._info(soft_reset=True)
        self._soft_reset_pending = False
        noops = self._hard_reset()
        return self._stack.copy(), self._info(soft_reset=False, noops=noops)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self._started or self._game_over:
            raise RuntimeError("AtariEnv.step called " + ("before reset()" if not self._started else
                               "after the game ended (info['game_over']); call reset() first"))
        index = int(action)
        if not 0 <= index < self.num_actions:
            raise ValueError(f"action {action!r} out of range for {self.game} "
                             f"({self.num_actions} actions: 0..{self.num_actions - 1})")
        self._soft_reset_pending = False
        ale, a = self._ale, self._action_set[index]
        raw_reward = 0
        for _ in range(self.frame_skip - 1):
            raw_reward += ale.act(a)
        ale.getScreenGrayscale(self._raw_frame_1)
        raw_reward += ale.act(a)
        life_loss = self._check_life()
        if life_loss and self.terminal_on_life_loss:
            self._zero_frames()
        self._push_frame()
        # rlpyt checks ``counter >= horizon`` and then increments: the counter before this step
        counted = self._steps if self.horizon_extra_step else self._steps + 1
        self._steps += 1

        ale_over = ale.game_over()
        truncated = not ale_over and counted >= self.max_episode_steps
        self._game_over = ale_over or truncated
        terminated = ale_over or (life_loss and self.terminal_on_life_loss)
        self._soft_reset_pending = terminated and not self._game_over
        reward = float(np.sign(raw_reward)) if self.clip_rewards else float(raw_reward)
        info = self._info(raw_reward=float(raw_reward), life_loss=life_loss)
        return self._stack.copy(), reward, bool(terminated), bool(truncated), info

    # --- checkpoints ---------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Everything the next ``step``/``reset`` depends on, as arrays and plain values: the
        emulator (``cloneState(include_rng=True)``, serialized), the noop RNG, the max-pool
        frames, the frame stack, and the life / step / episode flags."""
        ale_state = self._ale.cloneState(include_rng=True).serialize()
        return {"game": self.game, "ale": np.frombuffer(ale_state, np.uint8).copy(),
                "np_random": self.np_random.bit_generator.state,
                "raw_frame_1": self._raw_frame_1.copy(), "raw_frame_2": self._raw_frame_2.copy(),
                "max_frame": self._max_frame.copy(), "stack": self._stack.copy(), "lives": self._lives,
                "steps": self._steps, "started": self._started, "game_over": self._game_over,
                "soft_reset_pending": self._soft_reset_pending}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned (same game; the ROM stays loaded)."""
        if state["game"] != self.game:
            raise ValueError(f"env state is for game {state['game']!r}, this env plays {self.game!r}")
        self._ale.restoreState(ALEState(np.asarray(state["ale"], np.uint8).tobytes()))
        self.np_random.bit_generator.state = state["np_random"]
        for name in ("raw_frame_1", "raw_frame_2", "max_frame", "stack"):
            getattr(self, f"_{name}")[...] = state[name]
        self._lives, self._steps = int(state["lives"]), int(state["steps"])
        self._started, self._game_over = bool(state["started"]), bool(state["game_over"])
        self._soft_reset_pending = bool(state["soft_reset_pending"])

    # --- internals -----------------------------------------------------------------------------

    def _seed(self, seed: int) -> None:
        self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(seed)
        # An independent stream for the ALE, below 2**31 as the ALE's int setting needs.
        root = seed if self.ale_seed is None else self.ale_seed
        ale_seed = int(np.random.SeedSequence([root, 1]).generate_state(1)[0] % 2**31)
        self._ale.setInt("random_seed", ale_seed)  # must precede loadROM to take effect
        self._ale.setFloat("repeat_action_probability", 0.0)  # no sticky actions
        self._ale.loadROM(self._rom)
        self._started = False
        self._game_over = False
        self._soft_reset_pending = False

    def _hard_reset(self) -> int:
        while True:
            self._ale.reset_game()
            self._zero_frames()
            self._life_reset()
            noops = int(self.np_random.integers(1, self.noop_max + 1)) if self.noop_max > 0 else 0
            life_lost = False
            for _ in range(noops):
                self._ale.act(Action.NOOP)
                if self._check_life():
                    life_lost = True
                    break
            if not life_lost:
                break
        self._push_frame()  # raw frame 1 is zero, so this is the current screen
        self._steps = 0
        self._started = True
        self._game_over = False
        return noops

    def _check_life(self) -> bool:
        lives = self._ale.lives()
        lost = 0 < lives < self._lives
        if lost:
            self._life_reset()
        return lost

    def _life_reset(self) -> None:
        self._ale.act(Action.NOOP)  # one frame past the life-loss (or reset) state, as rlpyt
        self._lives = self._ale.lives()

    def _zero_frames(self) -> None:
        self._stack[:] = 0
        self._raw_frame_1[:] = 0
        self._raw_frame_2[:] = 0
        self._max_frame[:] = 0

    def _push_frame(self) -> None:
        self._ale.getScreenGrayscale(self._raw_frame_2)
        np.maximum(self._raw_frame_1, self._raw_frame_2, out=self._max_frame)
        frame = cv2.resize(self._max_frame, (self.image_size, self.image_size),
                           interpolation=cv2.INTER_LINEAR)  # (h w), full frame, no crop
        self._stack[:-1] = self._stack[1:]
        self._stack[-1] = frame

    def _info(self, **extra: Any) -> dict[str, Any]:
        info: dict[str, Any] = {"raw_reward": 0.0, "life_loss": False, "game_over": self._game_over,
                                "lives": self._ale.lives(), "episode_steps": self._steps}
        info.update(extra)
        return info
