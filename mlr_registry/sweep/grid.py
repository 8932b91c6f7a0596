"""The trials of a sweep: every combination of the grid's values and seeds, as ``run.py`` arguments.

An axis (``axes.py``) is one gin parameter and the values it takes (``--grid
"envs.atari.game=[alien,pong]"``, ``--games atari26``, ``--tasks dmc6``, ``--seeds 5``). A
trial is one combination: the sweep's gin files (plus, for a DMC task, its per-task overlay
``gin/dmc/<task>.gin``, placed as ``task_overlays.py`` says), the sweep's ``--bind`` lines,
then one binding per axis.

A trial's identity (the MLflow tag ``sweep_trial``) is a hash of its parsed gin config: every
binding of its files, their includes and its ``--bind`` lines, seed included. Running the same
sweep again finds the same identities and skips what finished; changing a value in a file
makes new trials.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from mlr_registry.errors import ConfigError

# Re-exported: grid.py held the axes and the task overlays before axes.py and task_overlays.py.
from mlr_registry.sweep.axes import GAME_SELECTOR as GAME_SELECTOR
from mlr_registry.sweep.axes import TASK_SELECTOR as TASK_SELECTOR
from mlr_registry.sweep.axes import Axis
from mlr_registry.sweep.axes import check_env_axis as check_env_axis
from mlr_registry.sweep.axes import games_axis as games_axis
from mlr_registry.sweep.axes import parse_grid as parse_grid
from mlr_registry.sweep.axes import resolve_selector as resolve_selector
from mlr_registry.sweep.axes import seeds_axis as seeds_axis
from mlr_registry.sweep.axes import split_values as split_values
from mlr_registry.sweep.axes import tasks_axis as tasks_axis
from mlr_registry.sweep.axes import to_gin_literal as to_gin_literal
from mlr_registry.sweep.axes import trainer_selector as trainer_selector
from mlr_registry.sweep.task_overlays import DMC_OVERLAY_DIR as DMC_OVERLAY_DIR
from mlr_registry.sweep.task_overlays import _check_no_later_task, _kept_over_overlays, _overlay_first
from mlr_registry.sweep.task_overlays import task_overlay as task_overlay

TRIAL_TAG = "sweep_trial"
_ID_LENGTH = 16


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: what ``python -m mlr_registry.run`` gets, and who it is."""

    gin_files: tuple[str, ...]
    bindings: tuple[str, ...]
    label: str       # e.g. "game=pong seed=1", for people
    trial_id: str    # the sweep_trial tag: a hash of the parsed config
    experiment: str  # the MLflow experiment its run goes to (gin's experiment.name)

    @property
    def variant(self) -> str:
        """The label without the game, task and seed (which the report's cells already tell
        apart): what sets this trial's configuration apart from the sweep's others, e.g.
        ``mask_ratio=0.25``; ``default`` for a sweep over games, tasks and seeds only."""
        parts = [p for p in self.label.split() if p.split("=", 1)[0] not in ("game", "task", "seed")]
        return " ".join(parts) or "default"

    def run_args(self) -> list[str]:
        """The ``--gin``/``--bind`` arguments of ``python -m mlr_registry.run``."""
        args: list[str] = []
        for path in self.gin_files:
            args += ["--gin", path]
        for binding in self.bindings:
            args += ["--bind", binding]
        return args


def _experiment_name() -> str:
    """gin's ``experiment.name``, else the default of ``experiment``'s signature."""
    import inspect

    import gin

    from mlr_registry.training.experiment import experiment

    try:
        return str(gin.query_parameter("experiment.name"))
    except ValueError:
        return str(inspect.signature(experiment).parameters["name"].default)


def _plain(value: str) -> str:
    return value.strip("'\"")


def expand(gin_files: Sequence[str], bindings: Sequence[str], axes: Sequence[Axis]) -> list[Trial]:
    """Every combination of the axes' values (the first axis varies slowest), each parsed once
    to check it and to compute its identity. Needs the registry loaded."""
    from mlr_registry import ablations, config

    ablations.check_order(gin_files)  # before reading the first file for what it sets
    selectors = [a.selector for a in axes]
    repeated = {s for s in selectors if selectors.count(s) > 1}
    if repeated:
        raise ConfigError(f"{', '.join(sorted(repeated))} is swept twice (by --grid and --games/--tasks/--seeds?)")
    trials, seen = [], {}
    for combo in itertools.product(*(range(len(a.values)) for a in axes)):
        extra_files = [f for axis, i in zip(axes, combo, strict=True) for f in axis.files_for(i)]
        files = _overlay_first(list(gin_files), extra_files)
        kept = _kept_over_overlays(gin_files[0], extra_files) if gin_files else []
        if extra_files:
            _check_no_later_task(gin_files[1:])
        own = [f"{axis.selector} = {axis.values[i]}" for axis, i in zip(axes, combo, strict=True)]
        config.parse(files, [*kept, *bindings, *own])
        trial_id = hashlib.sha256(config.config_str().encode()).hexdigest()[:_ID_LENGTH]
        label = " ".join(f"{axis.param}={_plain(axis.values[i])}" for axis, i in zip(axes, combo, strict=True))
        if trial_id in seen:
            raise ConfigError(f"trials {seen[trial_id]!r} and {label!r} have the same config "
                              "(a value repeated in the grid?)")
        seen[trial_id] = label
        trials.append(Trial(tuple(files), (*kept, *bindings, *own), label or "default", trial_id,
                            _experiment_name()))
    return trials
