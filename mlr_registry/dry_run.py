"""A dry run: any config's whole pipeline at tiny size, in seconds, with nothing tracked.

``python -m mlr_registry.run --gin gin/atari_mlr.gin --dry-run`` parses the files and
bindings as a real run would, then overrides the step budget and the built-in components'
widths (:data:`TINY`) and trains: env -> replay -> updates -> evaluation. It catches what a
config can get wrong (unknown names, bad values, shape mismatches between components) before
hours of GPU time are spent, and writes nothing to the MLflow store.

The overrides are bindings applied after the user's own, so everything else the config says
(game, task, masker, decoder, loss options) is what runs. Components from plugins keep their
sizes. The same overrides drive ``tests/test_gin_configs.py``, which dry-runs every shipped
gin file.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import gin

from mlr_registry.errors import ConfigError

_COMMON = ("encoders.nature_cnn.channels = (2, 4, 4)", "agents.rainbow.hidden_size = 16",
           "encoders.pixel_encoder.num_filters = 4", "encoders.pixel_encoder.feature_dim = 8",
           "agents.sac.hidden_dim = 16", "encoders.impala_cnn.width_scale = 1", "agents.bbf.hidden_size = 16")

# Per trainer: the budget (a handful of updates, one short evaluation) and small replays.
TINY: dict[str, tuple[str, ...]] = {
    "atari100k": (
        "trainers.atari100k.num_env_steps = 48", "trainers.atari100k.learning_starts = 40",
        "trainers.atari100k.batch_size = 2", "trainers.atari100k.eval_episodes = 1",
        "trainers.atari100k.eval_max_steps = 5", "trainers.atari100k.eval_every = 0",
        "trainers.atari100k.log_every = 16", "trainers.atari100k.device = 'cpu'",
        "trainers.atari100k.progress = False", "trainers.atari100k.video = False",
        "replays.prioritized_sequence.capacity = 200", "replays.uniform_sequence.capacity = 200",
        *_COMMON),
    # 160 env steps: a multiple of every action repeat (1, 2, 4, 8), one episode, > 17 agent steps.
    "dmc": (
        "trainers.dmc.num_env_steps = 160", "trainers.dmc.init_steps = 17", "trainers.dmc.eval_every = 0",
        "trainers.dmc.eval_episodes = 1", "trainers.dmc.batch_size = 4", "trainers.dmc.aux_batch_size = 2",
        "trainers.dmc.log_every = 80", "trainers.dmc.device = 'cpu'", "trainers.dmc.progress = False",
        "trainers.dmc.video = False", "envs.dmc.episode_length = 160", "replays.transition.capacity = 400",
        *_COMMON),
}


def trainer_name() -> str:
    """The registered name of the trainer the parsed config selects (``experiment.trainer``)."""
    try:
        reference = gin.query_parameter("experiment.trainer")
    except ValueError as exc:
        raise ConfigError("the config sets no experiment.trainer; bind one, e.g. "
                          "experiment.trainer = @trainers.atari100k") from exc
    return str(getattr(getattr(reference, "configurable", None), "name", reference))


def tiny_bindings(gin_files: Sequence[str], bindings: Sequence[str]) -> list[str]:
    """``bindings`` followed by the tiny overrides for the trainer that the config selects."""
    from mlr_registry import config
    from mlr_registry.training import experiment  # noqa: F401 - registers the `experiment` configurable

    config.parse(gin_files, bindings)
    name = trainer_name()
    if name not in TINY:
        raise ConfigError(f"--dry-run knows the sizes of trainers {', '.join(sorted(TINY))}, not "
                          f"trainers.{name}; run it with a small budget bound instead")
    _check_device(name)
    return [*bindings, *TINY[name]]


def _check_device(trainer: str) -> None:
    """The dry run trains on the CPU, so the config's own device is checked here: a 'cuda'
    on a machine without one would otherwise pass the dry run and fail the real run."""
    from mlr_registry.training.common import resolve_device

    try:
        device = gin.query_parameter(f"trainers.{trainer}.device")
    except ValueError:
        return  # not bound: the trainer's default, 'auto'
    try:
        resolve_device(device)
    except ConfigError as exc:
        raise ConfigError(f"trainers.{trainer}.{exc} (the dry run itself trains on the CPU; the real run would "
                          "stop here)") from None


# Overrides that control how the dry run runs, not what a config builds (device is checked apart).
_RUN_CONTROL = ("device", "progress", "video")


def replaced_values(overrides: Sequence[str]) -> list[str]:
    """``"selector = value"`` for each of ``overrides`` whose parameter the parsed config binds to
    another value: what the dry run does not exercise at the config's own size (a batch size of
    0, say, passes it and fails the real run)."""
    replaced = []
    for override in overrides:
        selector, literal = (part.strip() for part in override.split("=", 1))
        if selector.rsplit(".", 1)[-1] in _RUN_CONTROL:
            continue
        try:
            own = _resolved(gin.query_parameter(selector))
        except ValueError:
            continue  # not bound: the component's default
        if own != ast.literal_eval(literal):
            replaced.append(f"{selector} = {own!r}")
    return replaced


def _resolved(value: Any) -> Any:
    """A macro's value (``%BATCH`` -> 2), and lists as tuples (gin reads either for a tuple)."""
    reference = getattr(value, "configurable", None)
    if reference is not None and reference.name == "macro":
        value = gin.query_parameter("%" + value.scoped_selector.split("/", 1)[0])
    return tuple(value) if isinstance(value, list) else value


class _MemoryTracker:
    """Keeps the last value of each metric; the dry run tracks nothing anywhere else."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:  # noqa: ARG002
        self.last.update({k: float(v) for k, v in metrics.items()})

    def log_artifact(self, *args, **kwargs) -> None:
        pass

    def log_text(self, *args, **kwargs) -> None:
        pass

    def set_tags(self, *args, **kwargs) -> None:
        pass


def dry_run(gin_files: Sequence[str], bindings: Sequence[str], out: TextIO | None = None) -> dict[str, float]:
    """Build and train the config at tiny size; returns the final metrics. Reports to ``out``
    (default: the current ``sys.stderr``, looked up at the call)."""
    out = sys.stderr if out is None else out
    from mlr_registry import config
    from mlr_registry.training.experiment import experiment

    overrides = tiny_bindings(gin_files, bindings)  # leaves the config's own parse behind
    replaced = replaced_values(overrides[len(bindings):])
    config.parse(gin_files, overrides)
    try:
        trainer = experiment().trainer()
    except (ValueError, TypeError) as exc:
        translated = config.translate_call_error(exc)
        if translated is None:
            raise
        raise translated from exc
    tracker = _MemoryTracker()
    final = trainer.train(tracker)
    tags = " ".join(f"{k}={v}" for k, v in trainer.run_tags().items())
    updates = getattr(trainer, "update_count", "?")
    losses = ", ".join(f"{k}={v:.4g}" for k, v in sorted(tracker.last.items()) if k.endswith("_loss"))
    if replaced:
        print(f"not run at the config's own values (the dry run's tiny ones replaced them; the real run "
              f"checks them): {', '.join(replaced)}", file=out)
    print(f"dry run OK ({tags}): {updates} updates, {losses or 'no losses logged'}; nothing was tracked",
          file=out)
    return final
