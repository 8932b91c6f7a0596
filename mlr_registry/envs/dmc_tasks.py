"""DeepMind Control's tasks by ``domain-task`` id: the six tasks of the paper (``DMC6_TASKS``),
their action repeats (``ACTION_REPEAT``, docs/faithfulness.md#dmc-per-task-settings), and the
check of a task id against ``dm_control.suite`` (imported on first use)."""

from __future__ import annotations

import difflib
import os
from typing import Any

from mlr_registry.errors import ConfigError

# The six DMControl-100k/500k tasks of the paper, as `domain-task` ids.
DMC6_TASKS: tuple[str, ...] = (
    "ball_in_cup-catch", "cartpole-swingup", "cheetah-run", "finger-spin", "reacher-easy", "walker-walk",
)

# Per-domain action repeat of the paper (the PlaNet convention); other domains get 4.
ACTION_REPEAT: dict[str, int] = {
    "cartpole": 8, "reacher": 4, "cheetah": 4, "finger": 2, "ball_in_cup": 4, "walker": 2,
}
DEFAULT_ACTION_REPEAT = 4


def _suite() -> Any:
    """``dm_control.suite``, imported on first use so that the registry loads without it.

    MuJoCo picks its GL backend at import; headless machines need EGL (or osmesa), and without
    a setting dm_control tries GLFW and warns about the missing display. An explicit
    ``MUJOCO_GL`` wins.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from dm_control import suite
    except ImportError as exc:  # pragma: no cover - depends on the installation
        msg = f"the dmc env needs dm_control and mujoco (pip install dm-control): {exc}"
        raise ConfigError(msg) from None
    return suite


def all_task_ids() -> list[str]:
    """Every dm_control suite task as a `domain-task` id."""
    return [f"{domain}-{task}" for domain, task in _suite().ALL_TASKS]


def split_task(task: str) -> tuple[str, str]:
    """(domain, task) of a ``domain-task`` id such as 'cheetah-run'; an unknown id is a
    ConfigError naming the closest ids."""
    if not isinstance(task, str):
        raise ConfigError(f"dmc.task = {task!r} is a {type(task).__name__}; expected a `domain-task` id "
                          "such as 'cheetah-run'")
    ids = all_task_ids()
    if task not in ids:
        squashed = {i.replace("_", ""): i for i in ids}
        key = str(task).lower().replace("_", "").replace("/", "-").replace(" ", "")
        close = [squashed[c] for c in difflib.get_close_matches(key, list(squashed), n=3, cutoff=0.6)]
        close += [c for c in difflib.get_close_matches(str(task), ids, n=3) if c not in close]
        hint = f"; did you mean {', '.join(repr(c) for c in close[:3])}?" if close else ""
        raise ConfigError(f"unknown DMC task {task!r}{hint} (task takes a `domain-task` id, e.g. "
                          f"{', '.join(repr(t) for t in DMC6_TASKS)}; dm_control.suite.ALL_TASKS lists "
                          f"all {len(ids)})")
    domain, name = task.split("-", 1)  # domain and task names contain '_' but never '-'
    return domain, name
