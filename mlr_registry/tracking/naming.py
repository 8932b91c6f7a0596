"""Run names that say what a run is: ``mlr · breakout · seed 0``, with what sets its config apart
from its benchmark's shipped one, if anything, after the objective: an ablation or other gin
file (``mlr · mask_ratio_025 · alien · seed 0``), ``--bind`` options (``mlr · distance=mse ·
...``), or a sweep's variant (its ``sweep_variant`` tag, which names the swept values). The
configuration comes before the env and seed (its replicates) because MLflow's runs table cuts
names at about 25 characters.

Names are built from the run's tags and command line only, never from a random source: the
trainer seeds Python's ``random``, and MLflow's generated names come from it, so every run of
one seed used to get the same "random" name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

SEPARATOR = " · "
MAX_LENGTH = 120  # MLflow allows longer names; the runs table shows far less
VARIANT_TAG = "sweep_variant"
# Bindings that add nothing to a name: what it shows already (env, seed), and run control that
# does not change results (the checkpoint's RUN_CONTROL_PARAMS, display, logging, the device).
_UNNAMED_PARAMS = ("seed", "game", "task", "progress", "checkpoint_every", "log_every", "device", "video",
                   "video_max_steps")
# Shipped config folders whose files are not variants of their own: their folder says it all.
_FOLDER_NAMED = ("smoke", "fast", "learning")
# The paper's base agent of each benchmark; another one there (BBF) is named, since it is what
# sets the run apart. Runs of other benchmarks (a plugin's) are named as before.
_PAPER_AGENTS = {"atari100k": "rainbow", "dmc100k": "sac", "dmc500k": "sac"}


def gin_file_label(path: str | Path) -> str | None:
    """What a gin file adds to a run's name: None for a benchmark's config (``gin/*.gin``) and a
    DMC task overlay (``gin/dmc/*.gin``: the env is in the name already); the folder for the
    shipped smoke, fast and learning configs; else the file's stem (an ablation's
    ``mask_ratio_025``, a user's ``my_idea``)."""
    p = Path(path)
    parent, grandparent = p.parent.name, p.parent.parent.name
    if parent == "gin" or (parent == "dmc" and grandparent == "gin"):
        return None
    if parent in _FOLDER_NAMED and grandparent == "gin":
        return parent
    return p.stem


def binding_label(binding: str) -> str | None:
    """``maskers.cube.mask_ratio = 0.25`` -> ``mask_ratio=0.25``; None for the seed, game and
    task, which the name shows already, and for run control (progress, checkpoints, ...)."""
    selector, sep, value = binding.partition("=")
    param = selector.strip().rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    if not sep:
        return binding.strip() or None
    if param in _UNNAMED_PARAMS:
        return None
    return f"{param}={value.strip().strip(chr(39) + chr(34))}"


def run_name(tags: Mapping[str, str], gin_files: Sequence[str | Path] = (),
             bindings: Sequence[str] = ()) -> str:
    """``<objective> · [<variant> · ]<env> · seed <seed>``, the variant being the base agent when
    it is not the paper's (``spr · bbf · alien · seed 0``), the labels of the gin files and, for a
    sweep's trial, its ``sweep_variant`` (its other bindings are the sweep's own), else the
    bindings."""
    agent, paper_agent = tags.get("agent"), _PAPER_AGENTS.get(tags.get("benchmark", ""))
    labels = [agent] if agent and paper_agent and agent != paper_agent else []
    labels += [label for label in map(gin_file_label, gin_files) if label]
    variant = tags.get(VARIANT_TAG)
    if variant is not None:
        labels += [variant] if variant != "default" else []
    else:
        labels += [label for label in map(binding_label, bindings) if label]
    parts = [tags.get("objective", "run"), *([" ".join(dict.fromkeys(labels))] if labels else []),
             tags.get("env", "?"), f"seed {tags.get('seed', '?')}"]
    name = SEPARATOR.join(parts)
    return name if len(name) <= MAX_LENGTH else name[:MAX_LENGTH - 1] + "…"
