"""The 26 Atari-100k games and the Random and Human scores of the paper's Table 1, which define
the human-normalized score: what the Atari trainer logs (``eval/hns``) and the report aggregates.

The numbers are read from the one copy, the package data file
``mlr_registry/report/data/atari100k.csv`` (columns ``game``, ``random``, ``human``); reading
it here imports nothing of the report, so the env and the trainer do not depend on that layer.
"""

from __future__ import annotations

import csv
import io
from importlib import resources

from mlr_registry.errors import ConfigError, closest_names


def _table_1() -> list[dict[str, str]]:
    text = resources.files("mlr_registry").joinpath("report", "data", "atari100k.csv").read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


_ROWS = _table_1()
ATARI_100K_GAMES: tuple[str, ...] = tuple(row["game"] for row in _ROWS)  # ALE ROM ids, the run tag ``env``
HUMAN_SCORES: dict[str, float] = {row["game"]: float(row["human"]) for row in _ROWS}
RANDOM_SCORES: dict[str, float] = {row["game"]: float(row["random"]) for row in _ROWS}


def human_normalized(game: str, score: float) -> float:
    """(score - random) / (human - random), with the Human and Random columns of Table 1."""
    if game not in HUMAN_SCORES:
        close = closest_names(game, ATARI_100K_GAMES)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ConfigError(f"no human/random reference score for game {game!r}{hint} "
                          f"(known: the 26 Atari-100k games, {', '.join(ATARI_100K_GAMES)})")
    random = RANDOM_SCORES[game]
    return (float(score) - random) / (HUMAN_SCORES[game] - random)
