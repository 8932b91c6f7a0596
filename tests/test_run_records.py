"""What a run records for a reader of the MLflow UI: its name, its description (the command that
reproduces it), its experiment's kind, previewable config copies, its environment, and where a
SQLite store keeps its artifacts."""

from __future__ import annotations

import platform
import random
import shlex
from importlib import metadata

import pytest
import torch
from conftest import TOY_GIN, TOY_PLUGIN, make_distribution, mlflow_runs, run_cli

from mlr_registry.tracking import environment, naming
from mlr_registry.tracking.mlflow_run import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, TrackedRun
from mlr_registry.tracking.reproduce import NOTE_TAG


def _toy_run(cwd, site, *args: str, db: str = "store.db", printed: list[str] | None = None):
    """The toy trainer's run through the CLI in ``cwd`` (which holds toy.gin): (client, run);
    what it printed goes to ``printed``."""
    proc = run_cli(["--gin", "toy.gin", *args, "--tracking-uri", f"sqlite:///{db}"], cwd=cwd, site=site)
    assert proc.returncode == 0, proc.stderr
    if printed is not None:
        printed.append(proc.stderr)
    client, runs = mlflow_runs(cwd / db, "toy")
    return client, runs[0]  # newest first


BINDING = "trainers.toy.steps = 4"


@pytest.fixture(scope="module")
def toy_cwd(tmp_path_factory):
    """A folder with toy.gin and the toy plugin's site (one set-up for the module's CLI runs)."""
    cwd = tmp_path_factory.mktemp("records")
    (cwd / "toy.gin").write_text(TOY_GIN)
    (cwd / "stores").mkdir()
    return cwd, make_distribution(cwd / "site", "toy-plugin", {"toy_plugin": TOY_PLUGIN}, {"toy": "toy_plugin"})


@pytest.fixture(scope="module")
def bound_run(toy_cwd):
    """One run with a --bind and a --tag, in a SQLite store in a subfolder: (cwd, client, run,
    what the CLI printed)."""
    cwd, site = toy_cwd
    printed: list[str] = []
    client, run = _toy_run(cwd, site, "--bind", BINDING, "--tag", "sweep=s1", db="stores/x.db", printed=printed)
    return cwd, client, run, printed[0]


def _artifact_text(client, run, path: str, into) -> str:
    return (into / client.download_artifacts(run.info.run_id, path, str(into))).read_text()


@pytest.mark.parametrize("path, label", [
    ("gin/atari_mlr.gin", None), ("gin/dmc/walker_walk.gin", None),  # a benchmark's config, a task overlay
    ("gin/ablations/mask_ratio_025.gin", "mask_ratio_025"), ("/abs/gin/smoke/atari_mlr.gin", "smoke"),
    ("gin/fast/atari_mlr_fast.gin", "fast"), ("experiments/my_idea.gin", "my_idea")])
def test_gin_file_labels(path, label):
    assert naming.gin_file_label(path) == label


def test_run_names_tell_ablations_and_sweep_variants_from_their_baseline():
    tags = {"objective": "mlr", "env": "breakout", "seed": "0"}
    assert naming.run_name(tags, ["gin/atari_mlr.gin"]) == "mlr · breakout · seed 0"
    # an ablation is a diff after its base (and, on DMC, a task file): the base adds nothing
    assert naming.run_name(tags, ["gin/atari_mlr.gin", "gin/ablations/mask_ratio_025.gin"]) \
        == "mlr · mask_ratio_025 · breakout · seed 0"
    assert naming.run_name(tags, ["gin/dmc_mlr.gin", "gin/dmc/walker_walk.gin", "gin/ablations/patch_size_5_dmc.gin"]) \
        == "mlr · patch_size_5_dmc · breakout · seed 0"
    # the seed, game and task are in the name already; other bindings say what changed
    assert naming.run_name(tags, ["gin/atari_mlr.gin"], ["trainers.atari100k.seed = 3", "atari.game = 'pong'",
                                                         "trainers.atari100k.progress = False",
                                                         "losses.mlr.distance = 'mse'"]) \
        == "mlr · distance=mse · breakout · seed 0"
    # a sweep's trial: its variant (the swept values), not the bindings that carry them
    swept = {**tags, "sweep_variant": "mask_ratio=0.25"}
    assert naming.run_name(swept, ["gin/dmc_mlr.gin", "gin/dmc/walker_walk.gin"],
                           ["maskers.cube.mask_ratio = 0.25", "trainers.dmc.seed = 0"]) \
        == "mlr · mask_ratio=0.25 · breakout · seed 0"
    assert naming.run_name({**tags, "sweep_variant": "default"}, ["gin/atari_mlr.gin"], ["x.y = 1"]) \
        == "mlr · breakout · seed 0"
    assert len(naming.run_name(tags, [], [f"a.b{i} = {'x' * 50}" for i in range(10)])) == naming.MAX_LENGTH


def test_cli_runs_are_named_after_what_they_run(toy_cwd, bound_run):
    cwd, site = toy_cwd
    _, plain = _toy_run(cwd, site)
    _, swept = _toy_run(cwd, site, "--bind", "trainers.toy.lr = 0.5", "--tag", "sweep_variant=lr=0.5")
    assert plain.info.run_name == "baseline · toy · toy-env · seed 0"  # toy.gin: a user's own config
    assert bound_run[2].info.run_name == "baseline · toy steps=4 · toy-env · seed 0"
    assert swept.info.run_name == "baseline · toy lr=0.5 · toy-env · seed 0"
    assert plain.data.tags["mlflow.runName"] == plain.info.run_name


def test_an_unnamed_run_is_named_without_touching_pythons_random(tmp_path):
    """MLflow's generated names come from `random`, which the trainer seeds (every seed-0 run was
    'overjoyed-slug-911'); an unnamed TrackedRun neither uses nor advances it."""
    random.seed(0)
    state = random.getstate()
    run = TrackedRun(f"sqlite:///{tmp_path / 's.db'}", experiment="unnamed")
    run.start({}, {})
    run.end("FINISHED")
    assert random.getstate() == state
    assert run.client.get_run(run.run_id).info.run_name.startswith("unnamed · 20")


def test_the_description_is_the_command_that_reproduces_the_run(bound_run):
    _, _, run, _ = bound_run
    note = run.data.tags[NOTE_TAG]
    commit = run.data.tags["git_commit"]
    assert f"git commit `{commit}`" in note
    if commit != "unknown":
        assert f"git checkout {commit.removesuffix('-dirty')}\n" in note
    command = next(line for line in note.splitlines() if line.startswith("python -m mlr_registry.run"))
    # --tag and --tracking-uri file the run; they are not part of what it trains
    assert shlex.split(command) == ["python", "-m", "mlr_registry.run", "--gin", "toy.gin", "--bind", BINDING]


def test_experiments_open_in_the_model_training_view(tmp_path, bound_run):
    _, client, _, _ = bound_run
    assert client.get_experiment_by_name("toy").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == \
        "custom_model_development"
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    old = client.create_experiment("old")  # as an earlier version of mlr_registry left it: no kind
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("old", "chosen"):  # what the trainer does with the experiment a gin file names
        TrackedRun(uri, experiment=name)._experiment_id()
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"  # a user's choice stays


def test_the_cli_prints_where_the_ui_shows_the_run_as_model_training(bound_run):
    """MLflow 3.17's UI opens in its GenAI view unless the address asks for the other one."""
    _, _, run, printed = bound_run
    route = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    assert f"view it: mlflow ui --backend-store-uri sqlite:///stores/x.db, then http://127.0.0.1:5000/{route}" \
        in printed
    server = TrackedRun("http://tracking.example:5000/")
    server.experiment_id, server.run_id = "3", "abc"
    assert server.ui_hint() == \
        "http://tracking.example:5000/#/experiments/3/runs/abc?workflowType=machine_learning"


def test_config_artifacts_have_previewable_txt_copies(tmp_path, bound_run):
    _, client, run, _ = bound_run
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert paths == {"config/config.gin", "config/config.gin.txt",
                     "config/operative_config.gin", "config/operative_config.gin.txt"}
    for name in ("config", "operative_config"):
        gin_text = _artifact_text(client, run, f"config/{name}.gin", tmp_path)
        assert _artifact_text(client, run, f"config/{name}.gin.txt", tmp_path) == gin_text
        assert "toy.steps = 4" in gin_text


def test_a_sqlite_store_keeps_artifacts_in_mlartifacts_beside_it(bound_run):
    cwd, _, run, _ = bound_run
    folder = cwd / "stores" / "mlartifacts" / run.info.run_id / "artifacts"
    assert run.info.artifact_uri == folder.as_uri()
    assert (folder / "config" / "config.gin").is_file()
    assert not (cwd / "mlruns").exists()  # where MLflow put them for a store given on the command line


def test_the_environment_is_recorded(tmp_path, bound_run):
    _, client, run, _ = bound_run
    tags = run.data.tags
    assert tags["python_version"] == platform.python_version()
    assert tags["torch_version"] == torch.__version__
    cuda = torch.cuda.is_available()
    assert tags["device"] == ("cuda:0" if cuda else "cpu")
    assert (tags["cuda_version"] == "none") != cuda and (tags["cudnn_version"] == "none") != cuda
    assert tags["device_name"] == (torch.cuda.get_device_name(0) if cuda else environment.cpu_model())
    assert tags["device_name"] not in ("", "unknown")
    lines = _artifact_text(client, run, environment.PACKAGES_ARTIFACT, tmp_path).splitlines()
    assert lines == sorted(lines, key=lambda line: line.split("==")[0].lower()) and len(set(lines)) == len(lines) > 20
    assert f"mlflow=={metadata.version('mlflow')}" in lines and f"torch=={torch.__version__}" in lines
    assert "toy-plugin==0.1" in lines  # the plugin distributions a run loaded


def test_environment_tags_on_cpu_say_none_for_cuda():
    tags = environment.environment_tags("cpu")
    assert tags["device"] == "cpu" and tags["cuda_version"] == tags["cudnn_version"] == "none"
    assert tags["device_name"] == environment.cpu_model()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_environment_tags_on_cuda_name_the_gpu():
    tags = environment.environment_tags("cuda")
    assert tags["device"] == f"cuda:{torch.cuda.current_device()}"
    assert tags["device_name"] == torch.cuda.get_device_name(torch.cuda.current_device())
    assert tags["cuda_version"] == torch.version.cuda
    assert tags["cudnn_version"] == str(torch.backends.cudnn.version())
