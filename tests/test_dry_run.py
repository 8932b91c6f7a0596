"""``--dry-run``: a config's whole pipeline at tiny size, tracked nowhere."""

from __future__ import annotations

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
