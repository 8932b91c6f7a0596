"""The CLI end to end: listing, composing gin files, MLflow runs and their end states, and the
one-line errors (exit 2, no traceback unless --debug)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, make_distribution, mlflow_runs, run_cli


def _single_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_list_shows_every_kind_with_origin_and_defaults(tmp_path, toy_site):
    proc = run_cli(["--list"], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for kind in ("masker", "encoder", "decoder", "loss", "agent", "replay", "env", "trainer"):
        assert f"\n{kind}:" in "\n" + out
    assert "cube  [built-in]  gin: maskers.cube" in out
    assert "toy  [toy-plugin]  gin: trainers.toy" in out
    assert "      lr = 0.1" in out and "      crash = False" in out
    execution = out[out.index("execution (how a run executes"):]  # the settings after the components
    assert "      precision = 'fp32'" in execution and "      overlap_env_step = False" in execution


def test_run_creates_mlflow_run_with_params_tags_and_config(tmp_path, toy_site, toy_gin):
    override = tmp_path / "override.gin"
    override.write_text("trainers.toy.steps = 4\n")
    db = tmp_path / "store.db"
    proc = run_cli(["--gin", str(toy_gin), "--gin", str(override), "--bind", "trainers.toy.lr = 0.5",
                    "--tag", "sweep=s1", "--tag", "note=a=b",
                    "--tracking-uri", f"sqlite:///{db}"], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 0, proc.stderr
    client, runs = mlflow_runs(db, "toy")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    # composition: the later file and the binding win
    assert run.data.params["trainers.toy.steps"] == "4"
    assert run.data.params["trainers.toy.lr"] == "0.5"
    tags = run.data.tags
    assert {tags[k] for k in ("benchmark", "env", "agent", "objective", "seed")} == {
        "toy", "toy-env", "none", "baseline", "0"}
    assert tags["plugins"] == "toy-plugin"
    assert tags["mlr_registry_version"] and tags["git_commit"]
    assert tags["sweep"] == "s1" and tags["note"] == "a=b"  # --tag KEY=VALUE, split at the first '='
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert history[-1].value == pytest.approx(0.25)
    config_text = client.download_artifacts(run.info.run_id, "config/operative_config.gin", str(tmp_path))
    assert "toy.steps = 4" in open(config_text).read()


def test_malformed_tag_is_a_usage_error(tmp_path, toy_site, toy_gin):
    proc = run_cli(["--gin", str(toy_gin), "--tag", "no-equals-sign"], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 2
    assert "--tag 'no-equals-sign': expected KEY=VALUE" in proc.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_default_store_is_local_sqlite(tmp_path, toy_site, toy_gin):
    proc = run_cli(["--gin", str(toy_gin)], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mlruns.db").is_file()
    _, runs = mlflow_runs(tmp_path / "mlruns.db", "toy")
    assert runs[0].info.status == "FINISHED"
    assert (tmp_path / "mlartifacts").is_dir()


def test_crash_ends_failed_with_logged_metrics(tmp_path, toy_site, toy_gin):
    db = tmp_path / "store.db"
    proc = run_cli(["--gin", str(toy_gin), "--bind", "trainers.toy.crash = True",
                    "--tracking-uri", f"sqlite:///{db}"], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 1 and "toy trainer crashed on purpose" in proc.stderr
    client, runs = mlflow_runs(db, "toy")
    assert runs[0].info.status == "FAILED"
    assert len(client.get_metric_history(runs[0].info.run_id, "train/loss")) == 1
    # the run keeps why it failed (not only the console), and which process wrote it
    assert "toy trainer crashed on purpose" in runs[0].data.tags["error"]
    assert runs[0].data.tags["pid"].isdigit() and runs[0].data.tags["host"]


def _started_toy_run(tmp_path, toy_site, toy_gin, db) -> subprocess.Popen:
    """The CLI training the toy trainer slowly, returned once its MLflow run exists and has metrics."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(toy_site)]))
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "mlr_registry.run", "--gin", str(toy_gin),
                             "--bind", "trainers.toy.steps = 1000", "--bind", "trainers.toy.sleep_s = 0.05",
                             "--tracking-uri", f"sqlite:///{db}"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    # Wait for the CLI's "MLflow run ... in experiment" line, printed once the run exists. The test
    # must not open the store itself meanwhile: two processes creating the SQLite schema race.
    deadline = time.time() + 120
    seen = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if line.startswith("MLflow run ") or not line:
            break
    assert any(line.startswith("MLflow run ") for line in seen), "".join(seen)
    time.sleep(1.0)  # a few toy steps: metrics are in the store
    return proc


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, "KILLED"), (signal.SIGINT, "KILLED")])
def test_interrupt_ends_killed(tmp_path, toy_site, toy_gin, sig, status):
    db = tmp_path / "store.db"
    proc = _started_toy_run(tmp_path, toy_site, toy_gin, db)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    client, runs = mlflow_runs(db, "toy")
    assert runs[0].info.status == status
    assert client.get_metric_history(runs[0].info.run_id, "train/loss")


def test_an_interrupt_lost_in_a_finalizer_still_ends_the_run_killed(tmp_path, toy_site, toy_gin):
    """A Ctrl-C whose KeyboardInterrupt Python discards (raised inside a __del__) is raised again
    at the run's next metric log: the run stops there instead of training on to FINISHED."""
    db = tmp_path / "store.db"
    proc = run_cli(["--gin", str(toy_gin), "--bind", "trainers.toy.steps = 50",
                    "--bind", "trainers.toy.interrupt_in_finalizer = 2", "--tracking-uri", f"sqlite:///{db}"],
                   cwd=tmp_path, site=toy_site)
    assert proc.returncode == 130, proc.stderr
    assert "Exception ignored" in proc.stderr  # the first KeyboardInterrupt was really lost
    client, runs = mlflow_runs(db, "toy")
    assert runs[0].info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [0, 1, 2]


def test_a_native_crash_prints_the_python_stacks(tmp_path, toy_site, toy_gin):
    # a crash in a driver or renderer cannot end the MLflow run, but it must not be silent
    proc = _started_toy_run(tmp_path, toy_site, toy_gin, tmp_path / "store.db")
    proc.send_signal(signal.SIGSEGV)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGSEGV, stderr
    assert "Fatal Python error: Segmentation fault" in stderr
    assert "Current thread" in stderr and "toy" in stderr  # the stack reaches the toy trainer's loop


def test_missing_gin_file(tmp_path, toy_site):
    line = _single_error_line(run_cli(["--gin", "nope.gin"], cwd=tmp_path, site=toy_site))
    assert "gin file not found: nope.gin" in line


def test_gin_syntax_error_names_file_and_line(tmp_path, toy_site, toy_gin):
    bad = tmp_path / "bad.gin"
    bad.write_text("trainers.toy.steps = 3\ntrainers.toy.lr = = 0.1\n")
    line = _single_error_line(run_cli(["--gin", str(toy_gin), "--gin", str(bad)], cwd=tmp_path, site=toy_site))
    assert f"{bad}:2: gin syntax error" in line


def test_an_unquoted_string_value_gets_the_binding_with_quotes(tmp_path):
    """gin's own message was Python's "malformed node or string ... <ast.Name object ...>"."""
    line = _single_error_line(run_cli(["--gin", "gin/smoke/atari_mlr.gin", "--bind", "atari.game = pong"],
                                      cwd=REPO))
    assert line == ("error: --bind 'atari.game = pong': pong is not a gin value; a string needs quotes: "
                    "--bind \"atari.game = 'pong'\"")


@pytest.mark.parametrize("args, expected", [
    (["--gin", "gin/ablations/mask_ratio_025_dmc.gin", "--gin", "gin/dmc/walker_walk.gin", "--dry-run"],
     "error: gin/ablations/mask_ratio_025_dmc.gin is gone: ablations are diffs after their base config, one file "
     "for Atari and DMC; write --gin gin/dmc_mlr.gin --gin gin/ablations/mask_ratio_025.gin (a task file goes "
     "between them)"),
    (["--gin", "gin/ablations/mask_ratio_025.gin"],
     "error: gin/ablations/mask_ratio_025.gin is a diff on a base config and includes none: give the base first: "
     "--gin gin/atari_mlr.gin --gin gin/ablations/mask_ratio_025.gin (or gin/dmc_mlr.gin in its place)"),
])
def test_an_ablation_in_its_old_usage_gets_the_new_spelling(args, expected):
    """The former layout's commands: a DMC twin that included its base, an ablation alone (it
    included the Atari base)."""
    assert _single_error_line(run_cli(args, cwd=REPO)) == expected


@pytest.mark.parametrize("text, hint", [
    ("maskers.cube.mode = spatial  # a comment", "maskers.cube.mode = 'spatial'"),
    ("atari100k.seeds = [alien, 'pong']", "atari100k.seeds = ['alien', 'pong']"),
])
def test_an_unquoted_word_in_a_file_names_file_line_and_fix(tmp_path, text, hint):
    from mlr_registry.config import parse
    from mlr_registry.errors import ConfigError

    bad = tmp_path / "bad.gin"
    bad.write_text(f"# header\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        parse([bad])
    word = hint.split("'")[1]
    assert str(caught.value) == f"{bad}:2: {word} is not a gin value; a string needs quotes: {hint}"


def test_unknown_component_names_kind_and_closest(tmp_path, toy_site, toy_gin):
    line = _single_error_line(run_cli(["--gin", str(toy_gin), "--bind", "experiment.trainer = @trainers.toyy"],
                                      cwd=tmp_path, site=toy_site))
    assert "unknown trainer 'toyy'; closest: toy" in line


def test_misspelt_parameter_lists_real_parameters(tmp_path, toy_site, toy_gin):
    line = _single_error_line(run_cli(["--gin", str(toy_gin), "--bind", "trainers.toy.step = 3"],
                                      cwd=tmp_path, site=toy_site))
    assert "trainer 'toy' has no parameter 'step'; did you mean 'steps'?" in line
    assert "steps, lr, crash, sleep_s" in line


def test_out_of_range_value(tmp_path, toy_site, toy_gin):
    db = tmp_path / "store.db"
    line = _single_error_line(run_cli(["--gin", str(toy_gin), "--bind", "trainers.toy.lr = 1.5",
                                       "--tracking-uri", f"sqlite:///{db}"], cwd=tmp_path, site=toy_site))
    assert "toy.lr = 1.5 is out of range; expected a number in (0, 1]" in line
    assert not db.exists()  # a config error creates no run


def test_debug_shows_traceback(tmp_path, toy_site):
    proc = run_cli(["--gin", "nope.gin", "--debug"], cwd=tmp_path, site=toy_site)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_broken_plugin_is_reported_and_the_rest_load(tmp_path, toy_site):
    make_distribution(toy_site, "broken-plugin", {"broken_plugin": "raise RuntimeError('boom at import')\n"},
                      {"broken": "broken_plugin"})
    proc = run_cli(["--list"], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 0, proc.stderr
    assert "plugin 'broken' (broken-plugin) failed to load: RuntimeError: boom at import" in proc.stderr
    assert "toy  [toy-plugin]" in proc.stdout and "cube  [built-in]" in proc.stdout


def test_a_plugin_that_fails_half_way_leaves_nothing_registered(tmp_path, toy_site, toy_gin):
    """What a plugin registered before its import failed is forgotten: a config naming it fails as
    an unknown component instead of running half a broken plugin."""
    source = """
        from mlr_registry import register
        @register("masker", "half_done")
        class HalfDone:
            def __call__(self, obs):
                raise AssertionError("never called")
        raise RuntimeError("boom after registering")
    """
    make_distribution(toy_site, "half-plugin", {"half_plugin": source}, {"half": "half_plugin"})
    listed = run_cli(["--list", "--debug"], cwd=tmp_path, site=toy_site)
    assert listed.returncode == 0, listed.stderr
    assert "plugin 'half' (half-plugin) failed to load: RuntimeError: boom after registering" in listed.stderr
    assert 'half_plugin.py", line 7' in listed.stderr  # --debug: the import's traceback
    assert "half_done" not in listed.stdout and "toy  [toy-plugin]" in listed.stdout
    bad = tmp_path / "half.gin"
    bad.write_text("trainers.toy.steps = 2\nmaskers.half_done.seed = 1\n")
    proc = run_cli(["--gin", str(toy_gin), "--gin", str(bad)], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 2 and "half_done" in proc.stderr, proc.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_a_plugin_that_exits_at_import_is_named_and_the_rest_load(tmp_path, toy_site):
    make_distribution(toy_site, "exiting-plugin", {"exiting_plugin": "import sys\nsys.exit('plugin exits')\n"},
                      {"exiting": "exiting_plugin"})
    proc = run_cli(["--list"], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 0, proc.stderr
    assert "plugin 'exiting' (exiting-plugin) failed to load: SystemExit: plugin exits" in proc.stderr
    assert "toy  [toy-plugin]" in proc.stdout


def test_dry_run_with_resume_is_a_usage_error(tmp_path):
    proc = run_cli(["--resume", "0123", "--dry-run"], cwd=tmp_path)
    assert proc.returncode == 2 and "--dry-run checks --gin files, not a run to resume" in proc.stderr


def test_plugin_registering_an_existing_name_never_replaces_it(tmp_path, toy_site):
    source = """
        from mlr_registry import register
        @register("masker", "cube")
        class FakeCube:
            pass
    """
    make_distribution(toy_site, "sneaky-plugin", {"sneaky_plugin": source}, {"sneaky": "sneaky_plugin"})
    proc = run_cli(["--list"], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 0
    assert "masker 'cube' is already registered by built-in" in proc.stderr
    assert "sneaky-plugin (sneaky_plugin) tried to register it again" in proc.stderr
    assert "cube  [built-in]" in proc.stdout


@pytest.mark.parametrize("uri, message", [("bogus://x", "UnsupportedModelRegistryStoreURIException"),
                                          ("{tmp}", "MlflowException: The filesystem tracking backend")])
def test_an_unusable_tracking_store_is_one_line_naming_it(tmp_path, toy_site, toy_gin, uri, message):
    """An unknown scheme or a plain folder as --tracking-uri: exit 2 and one line naming the
    store, instead of MLflow's traceback of 40 to 110 lines."""
    uri = uri.format(tmp=tmp_path)
    proc = run_cli(["--gin", str(toy_gin), "--tracking-uri", uri], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert f"cannot use the MLflow tracking store {uri!r}: {message}" in line


def test_faulthandler_is_skipped_where_stderr_is_no_file(monkeypatch):
    # pythonw-style processes have sys.stderr = None; faulthandler then refuses, and main must not
    import faulthandler

    from mlr_registry import run

    monkeypatch.setattr(faulthandler, "is_enabled", lambda: False)
    monkeypatch.setattr(sys, "stderr", None)
    run._enable_faulthandler()  # no RuntimeError: "sys.stderr is None"
