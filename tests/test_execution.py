"""The execution layer's contract (mlr_registry/execution): configured once by ``execution.*``,
applied from outside to what agents and replays declare, with no switch left in the algorithm's
files. Its numbers (bf16 and compiled paths against the reference path) are checked in
tests/test_fast_path.py and tests/test_replay.py."""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import gin
import pytest
from conftest import tiny_trainer

from mlr_registry import config, registry
from mlr_registry.agents.rainbow import Rainbow
from mlr_registry.agents.sac import SAC
from mlr_registry.errors import ConfigError
from mlr_registry.execution.compilation import resolve_attribute
from mlr_registry.replay.sequence_replay import PrioritizedSequenceReplay, UniformSequenceReplay

REPO = Path(__file__).resolve().parent.parent
# Names that must never appear in an algorithm's code again (docs and comments may explain the
# layer): the switches and their mechanics.
EXECUTION_NAMES = {"autocast", "compile", "compile_mode", "compile_scope", "compile_step", "fast_path", "FastPath",
                   "precision", "channels_last", "cudnn", "cudnn_benchmark", "bfloat16", "memory_format",
                   "cudagraph_mark_step_begin", "run_stateless", "overlap_env_step", "pipeline_updates",
                   "scaled_dot_product_attention", "fused"}
# The files one update is read through (docs/faithfulness.md#reading-one-update).
ALGORITHM_FILES = tuple(f"mlr_registry/{name}.py" for name in (
    "agents/rainbow", "agents/sac", "agents/sac_networks", "agents/sac_aux", "agents/c51_head", "agents/bbf",
    "agents/bbf_head", "agents/annealing", "agents/n_step", "agents/resets", "losses/spr", "losses/mlr",
    "losses/common", "maskers/cube", "decoders/transformer"))


@pytest.mark.parametrize("path", ALGORITHM_FILES)
def test_the_algorithm_files_hold_no_execution_switch(path):
    with open(REPO / path, "rb") as source:
        names = [(t.start[0], t.string) for t in tokenize.tokenize(source.readline) if t.type == tokenize.NAME]
    assert [(line, name) for line, name in names if name in EXECUTION_NAMES] == []


@pytest.mark.parametrize("binding, new", [
    ("agents.rainbow.precision = 'bf16'", "execution.precision"),
    ("agents.rainbow.compile_mode = 'reduce-overhead'", "execution.compile_mode"),
    ("agents.sac.compile = True", "execution.compile"),
    ("agents.sac.channels_last = 'auto'", "execution.channels_last"),
    ("agents.sac.cudnn_benchmark = True", "execution.cudnn_benchmark"),
    ("agents.rainbow.compile_scope = 'update'", "execution.compile_scope"),
    ("replays.prioritized_sequence.compile = 'auto'", "execution.replay_compile"),
    ("replays.uniform_sequence.compile = True", "execution.replay_compile"),
    ("trainers.atari100k.overlap_env_step = True", "execution.overlap_env_step"),
    ("trainers.atari100k.pipeline_updates = True", "execution.pipeline_updates"),
    ("trainers.dmc.overlap_env_step = True", "execution.overlap_env_step"),
    ("decoders.transformer.attention = 'sdpa'", "execution.attention"),
])
def test_an_old_execution_binding_names_its_new_spelling(binding, new):
    registry.load_all()
    old = binding.split(" = ")[0]
    with pytest.raises(ConfigError) as err:
        config.parse([], [binding])
    assert str(err.value) == (f"--bind: {old} is gone; how a run executes is set once for the run: "
                              f"{new} (see docs/gpu.md)")
    assert "\n" not in str(err.value)
    gin.clear_config()


def test_no_shipped_gin_file_uses_an_old_execution_binding():
    old = re.compile(r"^(agents\.\w+\.(precision|compile\w*|channels_last|cudnn_benchmark)|replays\.\w+\.compile|"
                     r"trainers\.\w+\.(overlap_env_step|pipeline_updates)|decoders\.\w+\.attention)\s*=", re.M)
    assert [p.name for p in REPO.glob("gin/**/*.gin") if old.search(p.read_text())] == []


@pytest.mark.parametrize("component", [Rainbow, SAC, PrioritizedSequenceReplay, UniformSequenceReplay])
def test_declared_phases_and_rollback_name_real_methods(component):
    """What the execution layer compiles and guards is named by string: a rename in the class
    must not leave a stale name (it would fail only on a GPU, when the layer resolves it)."""
    names = [*component.compiled_phases, *getattr(component, "acting_phases", ()), *component.rollback_state]
    for dotted in names:
        if "." in dotted:  # an attribute of an attribute made in __init__ (the replay's generator)
            continue
        assert callable(getattr(component, dotted)), dotted
    assert len(component.rollback_state) == 2


def test_the_replay_rollback_pair_resolves_on_an_instance():
    replay = PrioritizedSequenceReplay(capacity=100, seed=0)
    get, put = (getattr(*resolve_attribute(replay, n)) for n in replay.rollback_state)
    state = get()
    replay._generator.manual_seed(123)
    put(state)
    assert (replay._generator.get_state() == state).all()


def test_the_run_applies_the_execution_bindings_and_tags_what_ran():
    with tiny_trainer("gin/atari_mlr.gin", bindings=("execution.precision = 'bf16'",
                                                     "execution.overlap_env_step = True")) as trainer:
        assert trainer.execution.precision == "bf16" and trainer.execution.overlap_env_step
        assert "forward" in vars(trainer.agent.encoder)  # wrapped on this instance by the layer
        tags = trainer.run_tags()
        assert tags["fast_path.precision"] == "bf16" and tags["fast_path.compile"] == "off"
        assert tags["fast_path.replay_compile"] == "off"


def test_pipelining_is_refused_on_dmc_with_the_alternative():
    with pytest.raises(ConfigError, match="execution.pipeline_updates = True applies to the atari100k trainer "
                                          "only; on DMC use execution.overlap_env_step = True"):
        with tiny_trainer("gin/dmc_baseline.gin", bindings=("execution.pipeline_updates = True",)):
            pass
