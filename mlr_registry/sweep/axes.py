"""The axes of a sweep: one gin parameter each and the values it takes, from the command line.

``--grid "envs.atari.game=[alien,pong]"`` (a short name that gin resolves uniquely works:
``atari.game``), ``--games atari26``, ``--tasks dmc6`` (each task with its gin overlay) and
``--seeds 5`` (the configured trainer's ``seed``). Values are checked here, before any trial
runs: an unknown parameter, game or task, or a game axis on a DMC config, is a ConfigError.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass

from mlr_registry.errors import ConfigError
from mlr_registry.sweep.task_overlays import task_overlay

GAME_SELECTOR = "envs.atari.game"
TASK_SELECTOR = "envs.dmc.task"


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
