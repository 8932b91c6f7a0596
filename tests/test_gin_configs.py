"""Every shipped gin file is exercised: it parses, builds every component it names, and runs a
handful of steps at tiny size. The full configs also read as the paper's hyperparameter tables
(docs/faithfulness.md#atari-training-loop-and-budget,
docs/faithfulness.md#dmc-per-task-settings)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import gin
import pytest
from conftest import RecordingTracker

from mlr_registry import ablations, config, registry
from mlr_registry.dry_run import tiny_bindings
from mlr_registry.errors import ConfigError
from mlr_registry.execution import Execution
from mlr_registry.training.experiment import experiment

REPO = Path(__file__).resolve().parent.parent
GIN = REPO / "gin"
# Overlays are not runnable alone: they are composed after the base named here.
OVERLAYS = {
    "smoke/tiny_atari.gin": ["gin/atari_mlr.gin"],
    "smoke/tiny_dmc.gin": ["gin/dmc_mlr.gin"],
    "dmc500k.gin": ["gin/dmc_mlr.gin"],
}
for task in (GIN / "dmc").glob("*.gin"):
    OVERLAYS[f"dmc/{task.name}"] = ["gin/dmc_mlr.gin"]
# Ablations are diffs too: each runs after every base it applies to (a benchmark's own file,
# `# Benchmark: DMC only`, after that benchmark's base only).
for ablation in (GIN / "ablations").glob("*.gin"):
    only = ablations.benchmark_of(ablation)
    OVERLAYS[f"ablations/{ablation.name}"] = [base for benchmark, base in ablations.BASES.items()
                                              if only in (None, benchmark)]


ALL_GIN = sorted(str(p.relative_to(GIN)) for p in GIN.rglob("*.gin"))
# (base or None, file): an overlay once after each of its bases, any other file alone.
RUNS = [(base, name) for name in ALL_GIN for base in OVERLAYS.get(name, [None])]


@pytest.fixture(autouse=True)
def _registry():
    registry.load_all()
    yield
    gin.clear_config()


def test_every_gin_file_is_listed():
    assert {"atari_baseline.gin", "atari_mlr.gin", "dmc_baseline.gin", "dmc_mlr.gin", "dmc500k.gin",
            "smoke/atari_mlr.gin", "smoke/dmc_mlr.gin", "learning/catch_mlr.gin"} <= set(ALL_GIN)
    assert len([g for g in ALL_GIN if g.startswith("dmc/")]) == 6


@pytest.mark.parametrize("base, name", RUNS, ids=[f"{b.split('/')[-1] if b else ''}+{n}" for b, n in RUNS])
def test_gin_file_builds_and_runs_a_few_steps(base, name):
    files = [str(REPO / f) for f in ([base] if base else []) + [f"gin/{name}"]]
    config.parse(files, tiny_bindings(files, []))  # the CLI's --dry-run sizes
    trainer = experiment().trainer()
    tags = trainer.run_tags()
    assert set(tags) >= {"benchmark", "env", "agent", "objective", "seed"}
    # what the fast path really runs; on this CPU, compile = 'auto' stays off
    assert tags["fast_path.precision"] == ("bf16" if name.startswith("fast/") else "fp32")
    assert tags["fast_path.compile"] == "off"
    if tags["agent"] == "rainbow":
        assert tags["fast_path.replay_compile"] == "off"
        assert ("compile_note" in str(list(tags))) == (name == "fast/atari_mlr_fast.gin")  # 'auto': CUDA only
    # the fast files evaluate in worker processes (one per core, at most one per episode)
    workers = min(len(os.sched_getaffinity(0)), trainer.eval_episodes) if name.startswith("fast/") else 0
    assert trainer.eval_workers == workers
    # and step the training env while the updates run
    assert trainer.execution.overlap_env_step == name.startswith("fast/")
    tracker = RecordingTracker()
    final = trainer.train(tracker)
    assert "final_return" in final and trainer.update_count > 0
    logged = set(tracker.history)
    assert "train/rl_loss" in logged or "train/critic_loss" in logged
    # every evaluation logs its wall time, the final one included
    assert len(tracker.history["throughput/eval_seconds"]) == len(tracker.history["eval/return_mean"]) >= 1
    assert min(tracker.history["throughput/eval_seconds"]) > 0
    if "mlr" in trainer.objective:  # mlr_loss, or pixel_mlr_loss for the pixel objective
        assert any(key.endswith("mlr_loss") for key in logged)
    # the DMC fast file draws MLR batches at a fixed size and logs the batches it had to fill
    short = tracker.history.get("replay/short_sequence_batches", [])
    assert bool(short) == (name == "fast/dmc_mlr_fast.gin")
    assert short == sorted(short) and all(float(v).is_integer() for v in short)


def test_atari_fast_config_captures_cuda_graphs():
    # measured on an H100 (README): 99 vs 65.5 updates/s in a game; DMC's SAC is not measured yet
    assert _query(["gin/fast/atari_mlr_fast.gin"], "execution.compile_mode") == "reduce-overhead"
    assert _query(["gin/fast/dmc_mlr_fast.gin"], "execution.compile_mode") == "default"


def test_dmc_fast_config_keeps_convolutions_channels_last_on_cuda():
    # measured on an H100 (README): DMC's update 30.4 vs 38.7 ms; Atari's got slower, so stays NCHW
    assert _query(["gin/fast/dmc_mlr_fast.gin"], "execution.channels_last") == "auto"
    with pytest.raises(ValueError, match="channels_last"):  # unbound there: the default, NCHW
        _query(["gin/fast/atari_mlr_fast.gin"], "execution.channels_last")
    assert inspect.signature(Execution).parameters["channels_last"].default is False


def _query(files: list[str], selector: str):
    """The parsed value of ``selector``, a macro resolved (``%N_STEP`` -> 10)."""
    config.parse([REPO / f for f in files])
    return _value(selector)


def _value(selector: str):
    """The parsed config's value, a macro's (``%PATCH_SIZE``) resolved."""
    return config.query(selector)


@pytest.mark.parametrize("selector, value", [
    ("trainers.atari100k.num_env_steps", 100_000), ("trainers.atari100k.learning_starts", 2000),
    ("trainers.atari100k.updates_per_step", 2), ("trainers.atari100k.batch_size", 32),
    ("trainers.atari100k.eval_episodes", 100), ("trainers.atari100k.eval_epsilon", 0.001),
    ("agents.rainbow.learning_rate", 1e-4), ("agents.rainbow.adam_eps", 1.5e-4),
    ("agents.rainbow.n_step", 10), ("replays.prioritized_sequence.n_step", 10), ("agents.rainbow.discount", 0.99),
    ("replays.prioritized_sequence.discount", 0.99), ("agents.rainbow.n_atoms", 51), ("agents.rainbow.noisy_std", 0.1),
    ("agents.rainbow.max_grad_norm", 10.0), ("agents.rainbow.target_update_period", 1),
    ("replays.prioritized_sequence.alpha", 0.5), ("replays.prioritized_sequence.beta_start", 0.4),
    ("losses.mlr.weight", 1.0), ("losses.mlr.sequence_length", 16), ("losses.mlr.target_tau", 1.0),
    ("losses.mlr.unnormalized_masked_input", True), ("maskers.cube.patch_size", 12),
    ("maskers.cube.block_size", 8), ("maskers.cube.mask_ratio", 0.5), ("decoders.transformer.depth", 2),
    ("decoders.transformer.num_heads", 1), ("decoders.transformer.mlp_ratio", 2.0),
    ("encoders.nature_cnn.channels", (32, 64, 64)), ("envs.atari.max_episode_steps", 27_000),
    ("envs.atari.horizon_extra_step", True), ("replays.prioritized_sequence.one_step_done_n", True),
])
def test_atari_mlr_reads_as_the_paper_table(selector, value):
    assert _query(["gin/atari_mlr.gin"], selector) == value


def test_a_macro_is_recorded_as_each_parameter_it_sets():
    """``N_STEP = 10`` bound to the agent and the replay is recorded (MLflow params, the
    checkpoint's config hash) as if each had been bound to 10, and the macro itself not at all."""

    @gin.configurable("macro_owner_test", module="tests")
    def owner(n_step=1, both=(0, 0)):
        return n_step, both

    gin.parse_config("N = 3\nmacro_owner_test.n_step = %N\nmacro_owner_test.both = (%N, 4)")
    try:
        assert owner() == (3, (3, 4))
        params = config.operative_params()
    finally:
        gin.clear_config()
    assert params == {"tests.macro_owner_test.both": "(3, 4)", "tests.macro_owner_test.n_step": "3"}


def test_atari_baseline_has_no_aux_loss():
    assert _query(["gin/atari_baseline.gin"], "agents.rainbow.aux_losses") == []


@pytest.mark.parametrize("task, ar, lr, block, tau", [
    ("cartpole_swingup", 8, 1e-3, 4, 0.05), ("reacher_easy", 4, 1e-3, 4, 0.05),
    ("cheetah_run", 4, 2e-4, 8, 0.05), ("finger_spin", 2, 1e-3, 8, 0.05),
    ("ball_in_cup_catch", 4, 1e-3, 8, 0.05), ("walker_walk", 2, 1e-3, 8, 0.1),
])
def test_dmc_task_files_carry_the_per_task_values(task, ar, lr, block, tau):
    files = ["gin/dmc_mlr.gin", f"gin/dmc/{task}.gin"]
    assert _query(files, "envs.dmc.action_repeat") == ar
    for selector in ("agents.sac.actor_lr", "agents.sac.critic_lr", "agents.sac.aux_lr"):
        assert _value(selector) == lr
    assert _value("maskers.cube.block_size") == block
    assert _value("losses.mlr.target_tau") == tau
    assert _value("envs.dmc.task") == task.replace("_", "-", 1) if task != "ball_in_cup_catch" \
        else _value("envs.dmc.task") == "ball_in_cup-catch"


def test_dmc_shared_values_and_budgets():
    assert _query(["gin/dmc_mlr.gin"], "trainers.dmc.batch_size") == 512
    for selector, value in [("trainers.dmc.aux_batch_size", 128), ("trainers.dmc.eval_every", 5000),
                            ("trainers.dmc.eval_episodes", 10), ("trainers.dmc.init_steps", 1000),
                            ("agents.sac.critic_tau", 0.01), ("agents.sac.encoder_tau", 0.05),
                            ("agents.sac.hidden_dim", 1024), ("encoders.pixel_encoder.num_filters", 64),
                            ("maskers.cube.patch_size", 10), ("losses.mlr.projector", "mlp"),
                            ("losses.mlr.unnormalized_masked_input", False), ("trainers.dmc.num_env_steps", 100_000)]:
        assert _value(selector) == value, selector
    assert _query(["gin/dmc_mlr.gin", "gin/dmc500k.gin"], "trainers.dmc.num_env_steps") == 500_000


def test_every_ablation_file_is_a_diff_that_says_what_it_ablates_and_the_docs_list_it():
    listing = (REPO / "docs" / "ablations.md").read_text()
    files = sorted((REPO / "gin/ablations").glob("*.gin"))
    assert len(files) >= 25
    for path in files:
        text = path.read_text()
        assert text.startswith("# Ablation ("), f"{path.name}: header '# Ablation (<axis>): ...'"
        assert "include" not in text, f"{path.name}: a diff composed after its base includes none"
        only = ablations.benchmark_of(path)
        base = ablations.BASES[only or "Atari"]
        assert f"# Usage: --gin {base} " in text and f"--gin gin/ablations/{path.name}\n" in text, path.name
        assert ("--gin gin/dmc_mlr.gin" in text) == (only != "Atari"), path.name
        assert f"`{path.name}`" in listing, f"{path.name} is missing from docs/ablations.md"


def test_one_ablation_file_ablates_either_benchmark():
    """The shared macros make one diff rebind the value on both bases: the sequence length of
    the loss and of each benchmark's replay, the masker variants' patch and block sizes; and
    an ablation after a task file holds on that task."""
    assert _query(["gin/atari_mlr.gin", "gin/ablations/sequence_length_24.gin"], "losses.mlr.sequence_length") == 24
    assert _value("replays.prioritized_sequence.sequence_length") == 24
    assert _query(["gin/dmc_mlr.gin", "gin/ablations/sequence_length_24.gin"], "losses.mlr.sequence_length") == 24
    assert _value("replays.transition.sequence_length") == 24
    assert _query(["gin/atari_mlr.gin", "gin/ablations/masker_tube.gin"], "maskers.tube.patch_size") == 12
    assert _query(["gin/dmc_mlr.gin", "gin/ablations/masker_tube.gin"], "maskers.tube.patch_size") == 10
    assert _query(["gin/atari_mlr.gin", "gin/ablations/masker_random.gin"], "maskers.random.block_size") == 8
    files = ["gin/dmc_mlr.gin", "gin/dmc/cartpole_swingup.gin", "gin/ablations/masker_random.gin"]
    assert _query(files, "maskers.random.block_size") == 4 and _value("maskers.random.patch_size") == 10
    files = ["gin/dmc_mlr.gin", "gin/dmc/walker_walk.gin", "gin/ablations/target_tau_001.gin"]
    assert _query(files, "losses.mlr.target_tau") == 0.01
    assert _query(["gin/dmc_mlr.gin", "gin/dmc/walker_walk.gin", "gin/ablations/block_size_4.gin"],
                  "maskers.cube.block_size") == 4


@pytest.mark.parametrize("files, message", [
    (["gin/ablations/mask_ratio_025.gin"], "gin/ablations/mask_ratio_025.gin is a diff on a base config and includes "
     "none: give the base first: --gin gin/atari_mlr.gin --gin gin/ablations/mask_ratio_025.gin "
     "\\(or gin/dmc_mlr.gin in its place\\)"),
    (["gin/dmc/walker_walk.gin", "gin/ablations/patch_size_5_dmc.gin"], "give the base first: --gin gin/dmc_mlr.gin "
     "--gin gin/ablations/patch_size_5_dmc.gin$"),
    (["gin/ablations/mask_ratio_025_dmc.gin", "gin/dmc/walker_walk.gin"], "gin/ablations/mask_ratio_025_dmc.gin is "
     "gone: .* write --gin gin/dmc_mlr.gin --gin gin/ablations/mask_ratio_025.gin \\(a task file goes between them\\)"),
    (["gin/dmc_mlr.gin", "gin/ablations/sequence_length_8_dmc.gin"], "write --gin gin/dmc_mlr.gin --gin "
     "gin/ablations/sequence_length_8.gin"),
    (["gin/dmc_mlr.gin", "gin/ablations/patch_size_21.gin"], "patch_size_21.gin is for Atari configs only, and this "
     "config trains DMC \\(trainers.dmc\\) .*for DMC: gin/ablations/patch_size_20_dmc.gin"),
    (["gin/smoke/atari_mlr.gin", "gin/ablations/objective_pixel_dmc.gin"], "for DMC configs only.*for Atari: "
     "gin/ablations/objective_pixel.gin"),
])
def test_an_ablation_out_of_place_is_one_line_naming_the_fix(files, message):
    with pytest.raises(ConfigError, match=message) as caught:
        config.parse([REPO / f for f in files])
    assert "\n" not in str(caught.value)


def test_logged_params_show_the_values_the_macros_carry():
    """MLflow's params are what ran, as before the bases shared macros: ``16``, not
    ``%SEQUENCE_LENGTH``, and no macro entries of their own."""
    files = [str(REPO / "gin/atari_mlr.gin"), str(REPO / "gin/ablations/masker_tube.gin")]
    config.parse(files, tiny_bindings(files, []))
    experiment().trainer()
    params = config.operative_params()
    assert params["losses.mlr.sequence_length"] == "16" and params["maskers.tube.patch_size"] == "12"
    assert params["replays.prioritized_sequence.sequence_length"] == "16"
    assert not [k for k in params if "macro" in k or "%" in params[k]]
