"""Whether a run was trained and evaluated as its benchmark's protocol says, from its params.

A report compares our runs with the paper's columns, which is only fair for runs at the
benchmark's protocol: Atari-100k trains 100,000 agent steps (400k frames at frame skip 4) and
scores 100 evaluation games of up to 27,000 agent steps each; DMC-100k / DMC-500k train 100,000
/ 500,000 env steps and score 10 evaluation episodes of 1,000 env steps. A smoke run (200 steps,
2 evaluation games capped at 100 steps) is tagged ``atari100k`` too; its scores say nothing
about the paper's. The run's params (the operative gin config, ``trainers.atari100k.num_env_steps``
...) tell which; a run without them (a plugin trainer's) cannot be checked, and is said so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# (param, what a run did as a phrase around its value, the protocol's value, how a run's value is
# judged) per benchmark. Params hold repr strings of the operative config.
Check = tuple[str, str, int | None, Callable[[int | None, int | None], bool]]


def _equal(value: int | None, protocol: int | None) -> bool:
    return value == protocol


def _uncapped(value: int | None, protocol: int | None) -> bool:
    """An evaluation cap (``eval_max_steps``) is fine when absent or no shorter than a game."""
    return value is None or (protocol is not None and value >= protocol)


def _at_least(value: int | None, protocol: int | None) -> bool:
    return value is not None and protocol is not None and value >= protocol


ATARI_STEPS = 100_000
ATARI_EVAL_EPISODES = 100
ATARI_MAX_EPISODE_STEPS = 27_000  # agent steps = 108k frames
DMC_EVAL_EPISODES = 10
DMC_EPISODE_LENGTH = 1000

_ATARI: tuple[Check, ...] = (
    ("trainers.atari100k.num_env_steps", "trained {} agent steps", ATARI_STEPS, _equal),
    ("envs.atari.frame_skip", "frame skip {}", 4, _equal),
    ("trainers.atari100k.eval_episodes", "{} evaluation games", ATARI_EVAL_EPISODES, _equal),
    ("envs.atari.max_episode_steps", "games cut at {} agent steps", ATARI_MAX_EPISODE_STEPS, _equal),
    ("trainers.atari100k.eval_max_steps", "evaluation games capped at {} agent steps", ATARI_MAX_EPISODE_STEPS,
     _uncapped),
)


def _dmc(steps: int) -> tuple[Check, ...]:
    return (("trainers.dmc.num_env_steps", "trained {} env steps", steps, _equal),
            ("trainers.dmc.eval_episodes", "{} evaluation episodes", DMC_EVAL_EPISODES, _equal),
            ("envs.dmc.episode_length", "episodes of {} env steps", DMC_EPISODE_LENGTH, _equal))


PROTOCOLS: dict[str, tuple[Check, ...]] = {"atari100k": _ATARI, "dmc100k": _dmc(100_000), "dmc500k": _dmc(500_000)}
# What a benchmark's protocol is, in words, for the report's warning.
DESCRIPTIONS: dict[str, str] = {
    "atari100k": "100,000 agent steps (400k frames), then 100 evaluation games of up to 27,000 agent steps",
    "dmc100k": "100,000 env steps, then 10 evaluation episodes of 1,000 env steps",
    "dmc500k": "500,000 env steps, then 10 evaluation episodes of 1,000 env steps",
}


@dataclass(frozen=True)
class Verdict:
    """A run against its benchmark's protocol: ``checked`` is False when its params do not say
    (no budget param recorded); ``deviations`` are one phrase each, e.g. ``trained 200 agent
    steps (protocol: 100,000)``."""

    checked: bool
    deviations: tuple[str, ...] = ()

    @property
    def off_protocol(self) -> bool:
        return bool(self.deviations)


def _int(text: str | None) -> int | None:
    """A param's value as an int (``'100000'``, ``'None'`` -> None); None when it is no number."""
    if text is None or text.strip() in ("None", ""):
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


def _show(value: int | None) -> str:
    return "none" if value is None else f"{value:,}"


def judge(benchmark: str, params: Mapping[str, str], at_step: int | None = None) -> Verdict:
    """``params`` (a run's MLflow params) against ``benchmark``'s protocol. ``at_step``: the run
    counts at that evaluation of a longer run (a DMC-500k run in a DMC-100k report), so its
    budget must reach that step rather than equal it. Params a run lacks (other than the
    budget) are not held against it: older runs and other envs record fewer."""
    checks = PROTOCOLS.get(benchmark)
    if checks is None or checks[0][0] not in params:
        return Verdict(checked=False)
    deviations = []
    for i, (param, what, protocol, ok) in enumerate(checks):
        if param not in params:
            continue
        value = _int(params[param])
        if i == 0 and at_step is not None:
            ok, protocol = _at_least, at_step
        if not ok(value, protocol):
            deviations.append(f"{what.format(_show(value))} (protocol: {_show(protocol)})")
    return Verdict(checked=True, deviations=tuple(deviations))


def warning_lines(benchmark: str, records: Sequence) -> list[str]:
    """The report's warning when any counted run is off ``benchmark``'s protocol, else []: a
    headline, then one line per kind of deviation naming its runs (``records``: RunRecords)."""
    off = [r for r in records if r.protocol.off_protocol]
    if not off:
        return []
    groups: dict[tuple[str, ...], list] = {}
    for record in off:
        groups.setdefault(record.protocol.deviations, []).append(record)
    lines = [f"{len(off)} of {len(records)} runs are not at the {benchmark} protocol "
             f"({DESCRIPTIONS[benchmark]}): their scores are NOT comparable with the paper's columns"]
    for deviations, runs in groups.items():
        by_objective: dict[str, set[str]] = {}
        for r in runs:
            by_objective.setdefault(r.objective, set()).add(r.env)
        which = "; ".join(f"{obj} on {', '.join(sorted(envs))}" for obj, envs in sorted(by_objective.items()))
        lines.append(f"{len(runs)} run(s) ({which}): {'; '.join(deviations)}")
    return lines


def unchecked_note(benchmark: str, records: Sequence) -> list[str]:
    """A note counting the runs whose params do not say their budget (not held against them)."""
    unchecked = [r for r in records if not r.protocol.checked]
    if not unchecked or benchmark not in PROTOCOLS:
        return []
    return [f"{len(unchecked)} run(s) record no {PROTOCOLS[benchmark][0][0]} param, so whether they follow the "
            f"{benchmark} protocol ({DESCRIPTIONS[benchmark]}) was not checked"]
