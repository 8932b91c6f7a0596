"""The top of a gin config: which trainer runs, and under which MLflow experiment.

A gin file says::

    experiment.trainer = @trainers.atari100k
    experiment.name = 'atari100k'

The trainer is passed uncalled so that the CLI constructs it (with all its gin bindings) only
after the config is parsed, and can report construction errors before an MLflow run exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gin


@dataclasses.dataclass(frozen=True)
class Experiment:
    trainer: Callable[..., Any]
    name: str
    run_name: str | None


@gin.configurable("experiment")
def experiment(trainer: Callable[..., Any] = gin.REQUIRED, name: str = "mlr_registry",
               run_name: str | None = None) -> Experiment:
    """trainer: a registered trainer (``@trainers.<name>``, uncalled); name: the MLflow
    experiment; run_name: the MLflow run name (None: named after what it runs, e.g.
    ``mlr · breakout · seed 0``; see :mod:`mlr_registry.tracking.naming`)."""
    return Experiment(trainer=trainer, name=name, run_name=run_name)
