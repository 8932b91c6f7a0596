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

from mlr_registry import config, registry
from mlr_registry.agents.rainbow import Rainbow
from mlr_registry.dry_run import tiny_bindings
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


ALL_GIN = sorted(str(p.relative_to(GIN)) for p in GIN.rglob("*.gin"))


@pytest.fixture(autouse=True)
def _registry():
    registry.load_all()
    yield
    gin.clear_config()


def test_every_gin_file_is_listed():
    assert {"atari_baseline.gin", "atari_mlr.gin", "dmc_baseline.gin", "dmc_mlr.gin", "dmc500k.gin",
            "smoke/atari_mlr.gin", "smoke/dmc_mlr.gin", "learning/catch_mlr.gin"} <= set(ALL_GIN)
    assert len([g for g in ALL_GIN if g.startswith("dmc/")]) == 6


@pytest.mark.parametrize("name", ALL_GIN)
def test_gin_file_builds_and_runs_a_few_steps(name):
    files = [str(REPO / f) for f in (*OVERLAYS.get(name, []), f"gin/{name}")]
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
    assert trainer.overlap_env_step == name.startswith("fast/")
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
    assert _query(["gin/fast/atari_mlr_fast.gin"], "agents.rainbow.compile_mode") == "reduce-overhead"
    assert _query(["gin/fast/dmc_mlr_fast.gin"], "agents.sac.compile_mode") == "default"


def test_dmc_fast_config_keeps_convolutions_channels_last_on_cuda():
    # measured on an H100 (README): DMC's update 30.4 vs 38.7 ms; Atari's got slower, so stays NCHW
    assert _query(["gin/fast/dmc_mlr_fast.gin"], "agents.sac.channels_last") == "auto"
    with pytest.raises(ValueError, match="channels_last"):  # unbound there: the agent's default, NCHW
        _query(["gin/fast/atari_mlr_fast.gin"], "agents.rainbow.channels_last")
    assert inspect.signature(Rainbow).parameters["channels_last"].default is False


def _query(files: list[str], selector: str):
    """The parsed value of ``selector``, a macro resolved (``%N_STEP`` -> 10)."""
    config.parse([REPO / f for f in files])
    value = gin.query_parameter(selector)
    reference = getattr(value, "configurable", None)
    if reference is not None and reference.name == "macro":
        value = gin.query_parameter("%" + value.scoped_selector.split("/", 1)[0])
    return value


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
        assert gin.query_parameter(selector) == lr
    assert gin.query_parameter("maskers.cube.block_size") == block
    assert gin.query_parameter("losses.mlr.target_tau") == tau
    assert gin.query_parameter("envs.dmc.task") == task.replace("_", "-", 1) if task != "ball_in_cup_catch" \
        else gin.query_parameter("envs.dmc.task") == "ball_in_cup-catch"


def test_dmc_shared_values_and_budgets():
    assert _query(["gin/dmc_mlr.gin"], "trainers.dmc.batch_size") == 512
    for selector, value in [("trainers.dmc.aux_batch_size", 128), ("trainers.dmc.eval_every", 5000),
                            ("trainers.dmc.eval_episodes", 10), ("trainers.dmc.init_steps", 1000),
                            ("agents.sac.critic_tau", 0.01), ("agents.sac.encoder_tau", 0.05),
                            ("agents.sac.hidden_dim", 1024), ("encoders.pixel_encoder.num_filters", 64),
                            ("maskers.cube.patch_size", 10), ("losses.mlr.projector", "mlp"),
                            ("losses.mlr.unnormalized_masked_input", False), ("trainers.dmc.num_env_steps", 100_000)]:
        assert gin.query_parameter(selector) == value, selector
    assert _query(["gin/dmc_mlr.gin", "gin/dmc500k.gin"], "trainers.dmc.num_env_steps") == 500_000


def test_every_ablation_file_says_what_it_ablates_and_the_docs_list_it():
    listing = (REPO / "docs" / "ablations.md").read_text()
    files = sorted((REPO / "gin/ablations").glob("*.gin"))
    assert len(files) >= 30
    for path in files:
        assert path.read_text().startswith("# Ablation ("), f"{path.name}: header '# Ablation (<axis>): ...'"
        assert f"`{path.name}`" in listing, f"{path.name} is missing from docs/ablations.md"
