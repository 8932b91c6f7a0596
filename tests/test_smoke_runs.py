"""The README's main job and its DMC twin, end to end through the CLI: a real ALE game / a real
dm_control task at tiny size, producing an MLflow run with the conventions of DESIGN.md."""

from __future__ import annotations

import pytest
from conftest import REPO, mlflow_runs, run_cli


@pytest.mark.parametrize("gin_file, tags, extra_metrics", [
    ("gin/smoke/atari_mlr.gin",
     {"benchmark": "atari100k", "env": "breakout", "agent": "rainbow", "objective": "mlr"},
     ["final_hns", "eval/hns", "train/mlr_loss", "train/rl_loss", "train/mlr_cosine"]),
    ("gin/smoke/dmc_mlr.gin",
     {"benchmark": "dmc0k", "env": "cheetah-run", "agent": "sac", "objective": "mlr"},
     ["train/critic_loss", "train/mlr_loss", "train/actor_loss", "eval/return_mean", "train/episode_return"]),
])
def test_smoke_config_runs_to_an_mlflow_run(tmp_path, gin_file, tags, extra_metrics):
    db = tmp_path / "store.db"
    proc = run_cli(["--gin", str(REPO / gin_file), "--tracking-uri", f"sqlite:///{db}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = mlflow_runs(db, "smoke")
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key, value in {**tags, "seed": "0", "plugins": "none"}.items():
        assert run.data.tags[key] == value, key
    metrics = run.data.metrics
    for key in ["final_return", "throughput/env_steps_per_s",
                "throughput/updates_per_s", *extra_metrics]:
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
    assert run.data.params["losses.mlr.weight"] == "1.0"
    assert "maskers.cube.patch_size" in run.data.params
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert artifacts == {"config/config.gin", "config/operative_config.gin",
                         "config/config.gin.txt", "config/operative_config.gin.txt"}  # .txt: the UI previews them
    assert run.info.run_name == f"mlr · smoke · {tags['env']} · seed 0"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "environment")} == {"environment/packages.txt"}
    assert run.data.tags["device"] == "cpu" and run.data.tags["cuda_version"] == "none"
    # Output captured (no terminal): no progress bar's stream of updates; at the end, where to look.
    assert "%|" not in proc.stderr and "\r" not in proc.stderr
    folder = client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://")
    assert f"  artifacts:  {folder} (config/" in proc.stderr
    assert f"  view it:    mlflow ui --backend-store-uri sqlite:///{db}" in proc.stderr
    assert f"  store:      sqlite:///{db} (experiment 'smoke', run {run.info.run_id})" in proc.stderr
