"""Ablation files (``gin/ablations/``) are diffs composed after a base config:
``--gin gin/atari_mlr.gin --gin gin/ablations/mask_ratio_025.gin``, the same file after
``gin/dmc_mlr.gin`` (and a task file). They include no base, so given alone, or in an order or
under a name that an older layout used, they would parse into a config without a trainer or
fail far from the cause; :func:`check_order` and :func:`check_benchmark` say what to write
instead, in one line. :func:`mlr_registry.config.parse` calls both, so the run, dry-run and
sweep CLIs all check the same way.

A file that only makes sense on one benchmark (a patch size must divide the frame: Atari's 84
pixels, DMC's 100) says so in a header line, ``# Benchmark: DMC only (...)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from mlr_registry.errors import ConfigError

BASES = {"Atari": "gin/atari_mlr.gin", "DMC": "gin/dmc_mlr.gin"}
# The benchmark of each built-in trainer (``experiment.trainer``).
TRAINER_BENCHMARK = {"atari100k": "Atari", "dmc": "DMC"}
# DMC twins of the former layout, each of which included gin/dmc_mlr.gin: now the one file
# composed after that base.
REMOVED_TWINS = {f"{stem}_dmc.gin": f"{stem}.gin" for stem in (
    "block_size_4", "decoder_depth_1", "decoder_depth_4", "decoder_no_actions", "mask_ratio_025",
    "mask_ratio_075", "masker_spatial", "masker_tube", "sequence_length_24", "sequence_length_8")}
_BENCHMARK_LINE = re.compile(r"^# Benchmark: (?P<benchmark>Atari|DMC) only(?P<note>.*)$", re.MULTILINE)


def is_ablation(path: str | Path) -> bool:
    """A file of a ``gin/ablations/`` folder (the shipped one, or a copy of the layout)."""
    return Path(path).parent.name == "ablations"


def _is_task_overlay(path: Path) -> bool:
    return path.parent.name == "dmc" and path.parent.parent.name == "gin"


def benchmark_of(path: str | Path) -> str | None:
    """"Atari" or "DMC" for a file that declares it is for that benchmark only, else None."""
    match = _BENCHMARK_LINE.search(Path(path).read_text())
    return match.group("benchmark") if match else None


def _shown(path: Path) -> str:
    """``gin/ablations/x.gin`` for a file of the repo's layout, however it was given."""
    return f"gin/ablations/{path.name}" if is_ablation(path) else str(path)


def check_order(gin_files: Sequence[str | Path]) -> None:
    """Before parsing: a removed DMC twin gets its new spelling, and an ablation needs a base
    config (a file that is neither an ablation nor a task overlay) before it."""
    seen_base = False
    for given in gin_files:
        path = Path(given)
        if is_ablation(path) and path.name in REMOVED_TWINS and not path.is_file():
            new = REMOVED_TWINS[path.name]
            raise ConfigError(f"{_shown(path)} is gone: ablations are diffs after their base config, one file for "
                              f"Atari and DMC; write --gin {BASES['DMC']} --gin gin/ablations/{new} "
                              "(a task file goes between them)")
        if is_ablation(path) and not seen_base:
            only = benchmark_of(path) if path.is_file() else None
            either = "" if only else f" (or {BASES['DMC']} in its place)"
            raise ConfigError(f"{_shown(path)} is a diff on a base config and includes none: give the base "
                              f"first: --gin {BASES[only or 'Atari']} --gin {_shown(path)}{either}")
        seen_base = seen_base or not (is_ablation(path) or _is_task_overlay(path))


def check_benchmark(gin_files: Sequence[str | Path], trainer: str | None) -> None:
    """After parsing: a benchmark's own ablation does not follow the other benchmark's base.
    ``trainer`` is the parsed config's trainer name (None if it binds none)."""
    benchmark = TRAINER_BENCHMARK.get(trainer or "")
    if benchmark is None:
        return
    for given in gin_files:
        path = Path(given)
        if not is_ablation(path):
            continue
        match = _BENCHMARK_LINE.search(path.read_text())
        if match and match.group("benchmark") != benchmark:
            raise ConfigError(f"{_shown(path)} is for {match.group('benchmark')} configs only, and this config "
                              f"trains {benchmark} (trainers.{trainer}){match.group('note')}")
