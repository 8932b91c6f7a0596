"""The trials of a sweep: every combination of the grid's values and seeds, as ``run.py`` arguments.

An axis is one gin parameter and the values it takes (``--grid "envs.atari.game=[alien,pong]"``,
``--games atari26``, ``--tasks dmc6``, ``--seeds 5``). A trial is one combination: the sweep's
gin files (plus, for a DMC task, its per-task overlay ``gin/dmc/<task>.gin``), the sweep's
``--bind`` lines, then one binding per axis.

A trial's identity (the MLflow tag ``sweep_trial``) is a hash of its parsed gin config: every
binding of its files, their includes and its ``--bind`` lines, seed included. Running the same
sweep again finds the same identities and skips what finished; changing a value in a file
makes new trials.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlr_registry.errors import ConfigError

GAME_SELECTOR = "envs.atari.game"
TASK_SELECTOR = "envs.dmc.task"
# Overlays of the DMC tasks (action repeat and per-task values, docs/faithfulness.md#dmc-per-task-settings).
DMC_OVERLAY_DIR = Path("gin") / "dmc"
TRIAL_TAG = "sweep_trial"
_ID_LENGTH = 16


@dataclass(frozen=True)
class Axis:
    """One swept gin parameter: ``selector`` (complete, e.g. ``envs.atari.game``), ``param``
    (its short name for labels, e.g. ``game``), gin literals ``values``, and per value the gin
    files the value needs (the DMC task overlays; empty otherwise)."""

    selector: str
    param: str
    values: tuple[str, ...]
    overlays: tuple[tuple[str, ...], ...] = ()

    def files_for(self, i: int) -> tuple[str, ...]:
        return self.overlays[i] if self.overlays else ()


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


def split_values(text: str) -> list[str]:
    """``[alien, pong]`` or ``alien,pong`` -> ``['alien', 'pong']``; commas inside (), [] or
    quotes do not split (``[(2, 4, 4), (4, 8, 8)]`` has two values)."""
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    items, depth, quote, current = [], 0, "", []
    for ch in body:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    items.append("".join(current).strip())
    return [item for item in items if item]


def to_gin_literal(item: str) -> str:
    """A grid value as gin writes it: Python literals stay (``3``, ``1e-4``, ``'pong'``, ``(2, 4)``,
    ``True``), references stay (``@maskers.tube()``, ``%CONSTANT``), bare words become strings
    (``pong`` -> ``'pong'``)."""
    if item.startswith(("@", "%")):
        return item
    try:
        return repr(ast.literal_eval(item))
    except (ValueError, SyntaxError):
        return repr(item)


def resolve_selector(key: str, source: str) -> tuple[str, str]:
    """``atari.game`` -> (``envs.atari.game``, ``game``) by gin's own matching; an unknown or
    ambiguous name is a ConfigError naming the candidates. Needs the registry loaded."""
    import gin.config as gin_config

    key = key.strip()
    if "." not in key:
        raise ConfigError(f"{source}: {key!r} is not a gin parameter; write <configurable>.<parameter>, "
                          f"e.g. {GAME_SELECTOR} (`python -m mlr_registry.run --list` shows them)")
    selector, _, param = key.rpartition(".")
    candidates = gin_config._REGISTRY.matching_selectors(selector)
    if len(candidates) > 1:
        # `dmc.task`: trainers.dmc and envs.dmc match, and only envs.dmc has a task parameter.
        candidates = [c for c in candidates if param in _parameters(c)] or candidates
        if len(candidates) > 1:
            full = ", ".join(f"{c}.{param}" for c in sorted(candidates))
            raise ConfigError(f"{source}: {selector!r} is ambiguous; write one of {full}")
        key = f"{candidates[0]}.{param}"
    try:
        parsed = gin_config.ParsedBindingKey.parse(key)
    except (ValueError, KeyError) as exc:
        from mlr_registry.config import translate_gin_message

        # run.py's wording, did-you-mean included: "component 'atari' has no parameter 'gamez';
        # did you mean 'game'?"
        message = translate_gin_message(str(exc.args[0] if isinstance(exc, KeyError) else exc))
        raise ConfigError(f"{source}: {message} (`python -m mlr_registry.run --list` shows every "
                          "component's gin name and parameters)") from None
    return f"{parsed.complete_selector}.{parsed.arg_name}", parsed.arg_name


def _parameters(selector: str) -> set[str]:
    """The parameter names of the registered component (or gin configurable) ``selector``."""
    from mlr_registry import registry

    component = registry.find_selector(selector)
    return set(component.parameters()) if component is not None else set()


def parse_grid(text: str) -> Axis:
    """``--grid "atari.game=[alien,pong]"`` -> the axis over ``envs.atari.game``."""
    key, sep, values = text.partition("=")
    if not sep or not values.strip():
        raise ConfigError(f"--grid {text!r}: expected PARAMETER=[V1,V2,...], "
                          f"e.g. --grid \"{GAME_SELECTOR}=[alien,pong]\"")
    selector, param = resolve_selector(key, f"--grid {text!r}")
    items = split_values(values)
    if not items:
        raise ConfigError(f"--grid {text!r}: no values")
    if selector == TASK_SELECTOR:
        return tasks_axis(",".join(items))
    if selector == GAME_SELECTOR:
        return games_axis(",".join(items))
    return Axis(selector, param, tuple(to_gin_literal(v) for v in items))


def _named_set(spec: str, sets: dict[str, tuple[str, ...]], what: str) -> list[str]:
    names = split_values(spec)
    if len(names) == 1 and names[0].lower() in sets:
        return list(sets[names[0].lower()])
    if not names:
        raise ConfigError(f"--{what}: no names given (give {' or '.join(sets)}, or a comma-separated list)")
    return [n.strip("'\"") for n in names]


def games_axis(spec: str) -> Axis:
    """``atari26`` (the paper's 26 Atari-100k games) or ``alien,pong`` (ALE ROM ids)."""
    from mlr_registry.atari_scores import ATARI_100K_GAMES
    from mlr_registry.envs.atari import rom_path

    games = _named_set(spec, {"atari26": ATARI_100K_GAMES}, "games")
    for game in games:  # an unknown id stops the sweep here, not inside each trial
        rom_path(game)
    return Axis(GAME_SELECTOR, "game", tuple(repr(g) for g in games))


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


def tasks_axis(spec: str) -> Axis:
    """``dmc6`` (the paper's six tasks) or ``cheetah-run,walker-walk``; each task brings its
    overlay (action repeat, per-task learning rates, block size, tau) where one exists."""
    from mlr_registry.envs.dmc import DMC6_TASKS, split_task

    tasks = _named_set(spec, {"dmc6": DMC6_TASKS}, "tasks")
    for task in tasks:  # an unknown id stops the sweep here, not inside each trial
        split_task(task)
    overlays = tuple((o,) if (o := task_overlay(t)) else () for t in tasks)
    return Axis(TASK_SELECTOR, "task", tuple(repr(t) for t in tasks), overlays)


def trainer_selector() -> str:
    """The configured trainer (``trainers.atari100k``) of the parsed config."""
    import gin

    try:
        reference = gin.query_parameter("experiment.trainer")
    except ValueError:
        raise ConfigError("the gin files bind no experiment.trainer (e.g. experiment.trainer = "
                          "@trainers.atari100k)") from None
    return reference.selector


def check_env_axis(axis: Axis, gin_files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """A game axis needs a config that trains on ``envs.atari``, a task axis one on ``envs.dmc``:
    otherwise every trial would run the config's own env under a wrong label."""
    import gin

    from mlr_registry import config

    wanted = {GAME_SELECTOR: ("envs.atari", "--games"), TASK_SELECTOR: ("envs.dmc", "--tasks")}.get(axis.selector)
    if wanted is None:
        return
    config.parse(gin_files, bindings)
    try:
        env = gin.query_parameter(f"{trainer_selector()}.env").selector
    except (ValueError, AttributeError):
        return  # a trainer without an env reference (a plugin): nothing to compare
    if env != wanted[0]:
        other = "--tasks" if wanted[1] == "--games" else "--games"
        raise ConfigError(f"{wanted[1]} sweeps {axis.selector}, but {gin_files[0]} trains on {env}: "
                          f"use {other} with this config, or a config on {wanted[0]}")


def seeds_axis(count: int, gin_files: Sequence[str], bindings: Sequence[str] = (), first: int = 0) -> Axis:
    """Seeds ``first .. first+count-1`` of the trainer the gin files configure (its ``seed``)."""
    from mlr_registry import config, registry

    if count < 1:
        raise ConfigError(f"--seeds {count}: give at least 1 seed")
    config.parse(gin_files, bindings)
    selector = trainer_selector()
    component = registry.find_selector(selector)
    if component is not None and "seed" not in component.parameters():
        raise ConfigError(f"--seeds: trainer {selector} has no seed parameter "
                          f"(its parameters: {', '.join(component.parameters())})")
    return Axis(f"{selector}.seed", "seed", tuple(str(s) for s in range(first, first + count)))


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


def _overlay_first(base: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """Overlays go right after the first file (the base config), so later files (budgets,
    ablations, smoke sizes) still override the per-task values, as in the README's examples."""
    return (*base[:1], *extra, *base[1:])


def _every_overlay() -> set[Path]:
    from mlr_registry.config import REPO_ROOT

    return {p.resolve() for p in (*DMC_OVERLAY_DIR.glob("*.gin"), *(REPO_ROOT / DMC_OVERLAY_DIR).glob("*.gin"))}


def _check_no_later_task(later: Sequence[str]) -> None:
    """A file after the first that includes a task overlay (an ablation that includes
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
    than the task overlays) and a task overlay placed after it would undo: an ablation on
    ``gin/dmc_mlr.gin`` that sets τ or the block size keeps its value on every task, instead of
    running as the plain MLR config on the tasks whose overlay sets that value too."""
    from mlr_registry.config import file_bindings

    if not overlays:
        return []
    own = file_bindings(first, skip=_every_overlay())
    undone = set().union(*(file_bindings(f) for f in overlays)) & set(own)
    return [f"{key} = {own[key]}" for key in sorted(undone)]


def expand(gin_files: Sequence[str], bindings: Sequence[str], axes: Sequence[Axis]) -> list[Trial]:
    """Every combination of the axes' values (the first axis varies slowest), each parsed once
    to check it and to compute its identity. Needs the registry loaded."""
    from mlr_registry import config

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
