"""``--dry-run``: a config's whole pipeline at tiny size, tracked nowhere."""

from __future__ import annotations

import pytest
from conftest import REPO, run_cli


def test_dry_run_trains_the_config_at_tiny_size_and_tracks_nothing(tmp_path):
    proc = run_cli(["--gin", str(REPO / "gin/atari_mlr.gin"), "--bind", "envs.atari.game = 'pong'",
                    "--dry-run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    # the user's bindings and the config's components run; only sizes and budget shrink
    assert line.startswith("dry run OK (benchmark=atari100k env=pong agent=rainbow objective=mlr seed=0 ")
    assert "fast_path.precision=fp32" in line and "): 16 updates" in line
    assert "train/mlr_loss=" in line and "train/rl_loss=" in line
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "mlartifacts").exists()


def test_dry_run_of_an_unknown_trainer_says_which_it_knows(tmp_path, toy_site, toy_gin):
    proc = run_cli(["--gin", str(toy_gin), "--dry-run"], cwd=tmp_path, site=toy_site)
    assert proc.returncode == 2
    assert "--dry-run knows the sizes of trainers atari100k, dmc, not trainers.toy" in proc.stderr


def test_dry_run_reports_config_errors_like_a_run(tmp_path):
    proc = run_cli(["--gin", str(REPO / "gin/atari_mlr.gin"), "--bind", "maskers.cube.mask_ratio = 1.5",
                    "--dry-run"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "mask_ratio" in proc.stderr and "1.5" in proc.stderr


@pytest.mark.parametrize("gin_file, binding, message", [
    ("gin/smoke/dmc_mlr.gin", "dmc.task = 'walker-walk'",
     "Ambiguous selector 'dmc', matches ['trainers.dmc', 'envs.dmc']; write the full name"),
    ("gin/smoke/atari_mlr.gin", "losses.mlr.masker = 'cube'",
     "losses.mlr.masker = 'cube' is a str; expected a masker, e.g. losses.mlr.masker = @maskers.cube()"),
    ("gin/smoke/atari_mlr.gin", "losses.mlr.masker = @encoders.nature_cnn()",
     "gin called nature_cnn itself and it failed: NatureCNN.__init__() missing 1 required positional argument"),
])
def test_miswired_bindings_are_one_line_errors(gin_file, binding, message, capsys):
    """An ambiguous short name, a string where a component goes, a component of another kind:
    each used to dump a traceback (or fail at the first update); now exit 2 and one line."""
    from mlr_registry import run

    assert run.main(["--gin", str(REPO / gin_file), "--bind", binding, "--dry-run"]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert message in line


def test_dry_run_checks_the_device_it_overrides(capsys):
    """The dry run trains on the CPU; a device the real run cannot use still fails it."""
    import torch

    from mlr_registry import run

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    args = ["--gin", str(REPO / "gin/smoke/atari_mlr.gin"), "--bind", "trainers.atari100k.device = 'cuda'", "--dry-run"]
    assert run.main(args) == 2
    assert "trainers.atari100k.device = 'cuda' but CUDA is not available" in capsys.readouterr().err


def test_dry_run_names_the_values_it_did_not_run(capsys):
    """Sizes the dry run replaces are not exercised: a batch size of 0 passes it and fails the
    real run, so it says which of the config's own values it replaced."""
    from mlr_registry import run

    args = ["--gin", str(REPO / "gin/smoke/atari_mlr.gin"), "--bind", "trainers.atari100k.batch_size = 0",
            "--bind", "STARTS = 40", "--bind", "trainers.atari100k.learning_starts = %STARTS",
            "--bind", "encoders.nature_cnn.channels = [2, 4, 4]", "--dry-run"]
    assert run.main(args) == 0
    err = capsys.readouterr().err.splitlines()
    (line,) = [x for x in err if x.startswith("not run at the config's own values")]
    assert "trainers.atari100k.batch_size = 0" in line
    # the dry run's own values, through a macro and as a list: not replaced
    assert "learning_starts" not in line and "channels" not in line
    assert "device" not in line and "progress" not in line  # how it runs, not what it builds
    assert err[-1].startswith("dry run OK")
