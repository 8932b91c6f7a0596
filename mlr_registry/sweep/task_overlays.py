"""The DMC tasks' gin overlays in a sweep: where a task's overlay file is, and where it goes
among a trial's gin files.

A task overlay (``gin/dmc/<domain>_<task>.gin``: action repeat and per-task values,
docs/faithfulness.md#dmc-per-task-settings) goes right after the sweep's first gin file, so
that later files still override it; bindings restore what the first file sets itself and an
overlay would undo, and a later file that includes a task overlay is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlr_registry.errors import ConfigError

# Overlays of the DMC tasks (action repeat and per-task values, docs/faithfulness.md#dmc-per-task-settings).
DMC_OVERLAY_DIR = Path("gin") / "dmc"


def task_overlay(task: str) -> str | None:
    """``gin/dmc/<domain>_<task>.gin`` for a ``domain-task`` id when it exists (relative to the
    working directory, else to the repository), else None."""
    from mlr_registry.config import REPO_ROOT

    relative = DMC_OVERLAY_DIR / f"{task.replace('-', '_')}.gin"
    if relative.is_file():
        return str(relative)
    if (REPO_ROOT / relative).is_file():
        return str(REPO_ROOT / relative)
    return None


def _overlay_first(base: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """Overlays go right after the first file (the base config), so later files (budgets,
    ablations, smoke sizes) still override the per-task values, as in the README's examples."""
    return (*base[:1], *extra, *base[1:])


def _every_overlay() -> set[Path]:
    from mlr_registry.config import REPO_ROOT

    return {p.resolve() for p in (*DMC_OVERLAY_DIR.glob("*.gin"), *(REPO_ROOT / DMC_OVERLAY_DIR).glob("*.gin"))}


def _check_no_later_task(later: Sequence[str]) -> None:
    """A file after the first that includes a task overlay (a user's file that includes
    ``gin/dmc_mlr.gin``, which includes cheetah-run's) would undo the swept task's overlay."""
    from mlr_registry.config import included_files

    for name in later:
        hidden = sorted(str(DMC_OVERLAY_DIR / p.name) for p in set(included_files(name)) & _every_overlay())
        if hidden:
            raise ConfigError(
                f"{name} includes the task file {hidden[0]}, which would undo each trial's task overlay "
                f"(every task would run with {hidden[0]}'s values): give {name} as the first --gin file "
                "(it includes its base config itself)")


def _kept_over_overlays(first: str, overlays: Sequence[str]) -> list[str]:
    """Bindings that restore what the first file sets itself (or through its includes other
    than the task overlays) and a task overlay placed after it would undo: a file that includes
    ``gin/dmc_mlr.gin`` and sets τ or the block size keeps its value on every task, instead of
    running as the plain MLR config on the tasks whose overlay sets that value too. (The shipped
    ablations include no base: they come after the overlays.)"""
    from mlr_registry.config import file_bindings

    if not overlays:
        return []
    own = file_bindings(first, skip=_every_overlay())
    undone = set().union(*(file_bindings(f) for f in overlays)) & set(own)
    return [f"{key} = {own[key]}" for key in sorted(undone)]
