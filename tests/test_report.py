"""``python -m mlr_registry.report``: the paper's tables from MLflow runs.

One temporary SQLite MLflow store holds three experiments: ``paper`` (Table 1's MLR column as one
seed per game), ``seeds`` (several seeds on a few games, plus runs that must not count) and
``dmc`` (DMC-100k, four of the six tasks). Every number is checked against numpy by hand.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mlr_registry.report.build import REPORT_EXPERIMENT, analyse
from mlr_registry.report.cli import main
from mlr_registry.report.data import reference
from mlr_registry.report.runs import NoRunsError, ReportError, RunFilter, find_runs, metric_histories
from mlr_registry.report.tables import NO_RUNS, per_task_table

ATARI = reference("atari100k")
PAPER_MLR = ATARI.paper["MLR"]
SEED_GAMES = {"alien": 3, "pong": 3, "boxing": 3, "breakout": 2}  # game -> seeds of objective mlr
DMC_TASKS = {"finger-spin": [900.0, 950.0, 870.0], "cartpole-swingup": [800.0, 760.0, 840.0],
             "cheetah-run": [480.0, 500.0, 430.0], "walker-walk": [600.0, 700.0, 650.0]}


def _hns(game: str, score):
    return (np.asarray(score) - ATARI.random[game]) / (ATARI.human[game] - ATARI.random[game])


def _seed_score(game: str, seed: int) -> float:
    return PAPER_MLR[game] * (0.8 + 0.2 * seed)


def _add_run(client, exp_id, tags, final=None, status="FINISHED", curve=None, params=None):
    run_id = client.create_run(exp_id, tags={k: str(v) for k, v in tags.items()}).info.run_id
    if params:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    now = int(time.time() * 1000)
    metrics = [Metric("eval/return_mean", v, now, s) for s, v in (curve or [])]
    if final is not None:
        metrics.append(Metric("final_return", float(final), now, 100_000))
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'store.db'}"
    client = MlflowClient(tracking_uri=uri)

    def experiment(name):
        return client.create_experiment(name, artifact_location=(root / name).as_uri())

    paper = experiment("paper")
    for game in ATARI.tasks:
        _add_run(client, paper, dict(benchmark="atari100k", env=game, agent="rainbow", objective="paper_mlr",
                                     seed=0), final=PAPER_MLR[game])
    seeds = experiment("seeds")
    for game, n in SEED_GAMES.items():
        for seed in range(n):
            score = _seed_score(game, seed)
            _add_run(client, seeds, dict(benchmark="atari100k", env=game, agent="rainbow", objective="mlr",
                                         seed=seed), final=score,
                     curve=[(0, ATARI.random[game]), (50_000, score / 2), (100_000, score)])
        if game in ("alien", "pong"):
            for seed in range(2):
                tags = dict(benchmark="atari100k", env=game, agent="rainbow", objective="baseline", seed=seed)
                _add_run(client, seeds, tags, final=ATARI.paper["Baseline"][game])
    common = dict(benchmark="atari100k", env="alien", agent="rainbow", objective="mlr", seed=7)
    _add_run(client, seeds, common, final=1e9, status="FAILED")
    _add_run(client, seeds, common, final=1e9, status="RUNNING")
    _add_run(client, seeds, common, final=None)  # FINISHED without a final evaluation
    _add_run(client, seeds, {**common, "env": "tetris", "seed": 0}, final=123.0)
    dmc = experiment("dmc")
    for task, returns in DMC_TASKS.items():
        for seed, ret in enumerate(returns):
            tags = dict(benchmark="dmc100k", env=task, agent="sac", objective="mlr", seed=seed)
            _add_run(client, dmc, tags, final=ret, curve=[(0, 10.0), (100_000, ret)])
    return uri, client


def test_package_data_matches_the_paper_and_the_score_module():
    from mlr_registry.atari_scores import ATARI_100K_GAMES, HUMAN_SCORES, RANDOM_SCORES

    assert ATARI.tasks == ATARI_100K_GAMES
    assert ATARI.human == HUMAN_SCORES and ATARI.random == RANDOM_SCORES
    assert PAPER_MLR["pong"] == 4.9 and ATARI.paper["Baseline"]["kangaroo"] == 5036.0
    assert ATARI.paper_aggregates["iqm"]["MLR"] == 0.432
    assert ATARI.paper_aggregates["optimality_gap"]["Baseline"] == 0.614
    dmc = reference("dmc500k")
    assert dmc.paper["MLR"]["walker-walk"] == 939 and dmc.paper_std["MLR"]["walker-walk"] == 10
    assert dmc.paper_aggregates["mean"]["MLR"] == 896.5
    assert dmc.paper_aggregates["median"]["Baseline"] == 907.0
    assert "SLAC" not in {m for m, by in reference("dmc100k").paper.items() if "cartpole-swingup" in by}


def test_paper_mlr_column_gives_the_hand_computed_aggregates(store):
    uri, client = store
    report = analyse(client, RunFilter("atari100k", uri, ("paper",)), reps=50)
    assert report.objectives == ["paper_mlr"]
    h = np.array([_hns(g, PAPER_MLR[g]) for g in ATARI.tasks])
    by_hand = {"iqm": np.sort(h)[6:20].mean(),  # 25% trimmed: 6 of 26 off each end
               "optimality_gap": np.mean(np.maximum(1.0 - h, 0.0)),
               "median": np.median(h), "mean": np.mean(h)}
    got = report.intervals["paper_mlr"]
    for metric, value in by_hand.items():
        assert got[metric].point == pytest.approx(value, abs=1e-12)
        # one seed per game: the stratified bootstrap over seeds cannot move anything
        assert got[metric].low == pytest.approx(value) and got[metric].high == pytest.approx(value)
    spec = {"iqm": 0.435, "optimality_gap": 0.522, "median": 0.428, "mean": 0.679}  # the paper's per-game means
    for metric, value in spec.items():
        assert got[metric].point == pytest.approx(value, abs=5e-4)
    assert any("zero width" in n for n in report.notes)
    assert not any("no runs on" in n for n in report.notes)


def test_several_seeds_means_cis_and_notes(store):
    uri, client = store
    report = analyse(client, RunFilter("atari100k", uri, ("seeds",)), reps=300, seed=1)
    assert report.objectives == ["baseline", "mlr"]
    alien = report.stats["mlr"]["alien"]
    assert alien.n == 3 and alien.seeds == ("0", "1", "2")  # FAILED, RUNNING and metric-less runs left out
    assert "2 run(s) not FINISHED left out (1 FAILED, 1 RUNNING): resume or rerun them to count them" in report.notes
    assert alien.mean == pytest.approx(np.mean([_seed_score("alien", s) for s in range(3)]))
    assert alien.std == pytest.approx(np.std([_seed_score("alien", s) for s in range(3)], ddof=1))
    assert alien.normalized_mean == pytest.approx(_hns("alien", alien.mean))
    # uneven seeds: aggregates take the first 2 seeds of every game
    matrix = report.matrices["mlr"]
    assert matrix.seeds_per_task == 2 and matrix.tasks == ("alien", "boxing", "breakout", "pong")
    expected = np.array([[_hns(g, _seed_score(g, s)) for g in matrix.tasks] for s in range(2)])
    np.testing.assert_allclose(matrix.scores, expected)
    for metric, iv in report.intervals["mlr"].items():
        assert iv.low <= iv.point <= iv.high, metric
    assert report.intervals["mlr"]["iqm"].low < report.intervals["mlr"]["iqm"].high
    assert report.intervals["mlr"]["mean"].point == pytest.approx(expected.mean())
    notes = "\n".join(report.notes)
    assert "mlr: no runs on 22 of 26 games" in notes and "up_n_down" in notes
    assert "fewer seeds than the most (3) on: breakout (2)" in notes
    assert "aggregates over the 4 of 26 games with runs only (the paper's cover all 26)" in notes
    assert "tetris" in notes and report.extra_tasks == ["tetris"]
    assert "1 FINISHED run(s) without final_return" in notes
    text = per_task_table(report).to_text()
    assert NO_RUNS in text and "Alien" in text


def test_dmc_mean_std_per_task_and_over_tasks(store):
    uri, client = store
    report = analyse(client, RunFilter("dmc100k", uri, ("dmc",), ("mlr",)), reps=100)
    for task, returns in DMC_TASKS.items():
        st = report.stats["mlr"][task]
        assert st.mean == pytest.approx(np.mean(returns)) and st.std == pytest.approx(np.std(returns, ddof=1))
    means = [np.mean(r) for r in DMC_TASKS.values()]
    assert report.summaries["mlr"]["mean"] == pytest.approx(np.mean(means))
    assert report.summaries["mlr"]["median"] == pytest.approx(np.median(means))
    assert report.intervals["mlr"]["mean"].point == pytest.approx(np.mean(means) / 1000)
    text = per_task_table(report).to_text()
    finger = next(line for line in text.splitlines() if line.startswith("Finger, spin"))
    assert "907 ± 40 (3)" in finger and "907 ± 58" in finger and "853 ± 112" in finger
    assert text.count(NO_RUNS) == 2  # reacher and ball_in_cup
    assert "772.8" in text and "836.0" in text  # the paper's Mean and Median rows
    assert "mlr: no runs on 2 of 6 tasks: reacher-easy, ball_in_cup-catch" in report.notes


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_no_matching_runs_is_a_one_line_error_naming_the_filters(store, capsys, tmp_path):
    uri, client = store
    args = ["--benchmark", "atari100k", "--tracking-uri", uri, "--out", str(tmp_path / "r")]
    assert main([*args, "--experiment", "seeds", "--tag", "agent=nope", "--objective", "mlr"]) == 2
    line = _error_line(capsys)
    assert "no FINISHED runs with metric final_return" in line
    for part in ("benchmark=atari100k", "experiments=seeds", "objectives=mlr", "tag agent=nope", uri):
        assert part in line
    assert main([*args, "--experiment", "nosuch"]) == 2
    assert "no experiment 'nosuch'" in _error_line(capsys)
    assert main([*args, "--tag", "agent"]) == 2
    assert "key=value" in _error_line(capsys)
    with pytest.raises(NoRunsError):
        main([*args, "--benchmark", "dmc500k", "--debug"])
    assert not (tmp_path / "r").exists()
    # a mistyped store path is named, not created (and then reported as holding no runs)
    typo = tmp_path / "nodir" / "mlruns.db"
    assert main(["--benchmark", "atari100k", "--tracking-uri", f"sqlite:///{typo}", "--out", str(tmp_path / "r")]) == 2
    assert f"no MLflow store at {typo} (the file does not exist)" in _error_line(capsys)
    assert not typo.parent.exists()
    a_file = tmp_path / "report.txt"
    a_file.write_text("not a folder")
    assert main(["--benchmark", "atari100k", "--tracking-uri", uri, "--experiment", "seeds", "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file" in _error_line(capsys)


def test_cli_writes_tables_plots_and_a_report_run(store, capsys, tmp_path):
    uri, client = store
    out = tmp_path / "report"
    assert main(["--benchmark", "atari100k", "--tracking-uri", uri, "--experiment", "seeds",
                 "--objective", "mlr", "--objective", "baseline", "--out", str(out), "--reps", "100"]) == 0
    stdout = capsys.readouterr().out
    assert "Alien" in stdout and NO_RUNS in stdout and "IQM" in stdout and "Notes:" in stdout
    header = stdout.splitlines()[2]
    assert header.index("mlr (n)") < header.index("baseline (n)") < header.index("Paper MLR")
    pngs = ["aggregates.png", "performance_profiles.png", "per_game.png", "learning_curves.png"]
    for name in ["table.md", "per_game.csv", "aggregates.csv", *pngs]:
        assert (out / name).stat().st_size > 0, name
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(out / "per_game.csv")))
    assert len(rows) == 2 * 27  # 26 games + tetris, per objective
    pong = next(r for r in rows if r["objective"] == "mlr" and r["task"] == "pong")
    assert int(pong["n_seeds"]) == 3 and float(pong["paper_MLR"]) == 4.9
    assert float(pong["mean"]) == pytest.approx(np.mean([_seed_score("pong", s) for s in range(3)]))
    aggs = list(csv.DictReader(open(out / "aggregates.csv")))
    assert {(r["objective"], r["metric"]) for r in aggs} >= {("mlr", "iqm"), ("baseline", "optimality_gap")}
    assert "![learning_curves.png](learning_curves.png)" in (out / "table.md").read_text()

    exp = client.get_experiment_by_name(REPORT_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], "tags.report = 'true' and tags.benchmark = 'atari100k'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "report · atari100k · mlr vs baseline" and run.info.status == "FINISHED"
    db = Path(uri[len("sqlite:///"):])  # its artifacts beside the store, as a training run's
    assert run.info.artifact_uri == (db.parent / "mlartifacts" / run.info.run_id / "artifacts").as_uri()
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"table.md", "aggregates.csv", *pngs}
    assert "mlr/iqm" in run.data.metrics
    assert run.data.tags["comparable"] == "true"  # these runs record no budget: nothing held against them
    # a later report over all experiments does not count the report run as a training run
    again = analyse(client, RunFilter("atari100k", uri), reps=10)
    assert "1 FINISHED run(s) without final_return left out" in again.notes


def test_dmc_cli_without_plots_or_mlflow(store, capsys, tmp_path):
    uri, client = store
    out = tmp_path / "dmc"
    assert main(["--benchmark", "dmc100k", "--tracking-uri", uri, "--out", str(out), "--reps", "50",
                 "--no-plots", "--no-mlflow"]) == 0
    assert "Mean (over tasks)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["aggregates.csv", "per_game.csv", "table.md"]
    rows = {r["metric"]: r for r in csv.DictReader(open(out / "aggregates.csv"))}
    means = [np.mean(r) for r in DMC_TASKS.values()]
    assert float(rows["task_median"]["point"]) == pytest.approx(np.median(means))
    assert float(rows["task_mean"]["paper_MLR"]) == 772.8


def test_runs_of_other_configurations_never_stand_in_for_the_main_ones(tmp_path):
    """A smoke or ablation run of the same (objective, env, seed) is not a rerun: the report
    refuses to pick one and says how to choose; true reruns keep the latest; runs of several
    configurations pooled under one objective get a note (found by an audit: a later smoke run
    had silently replaced a real one)."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=uri)
    main_exp = client.create_experiment("atari100k", artifact_location=(tmp_path / "a").as_uri())
    smoke_exp = client.create_experiment("smoke", artifact_location=(tmp_path / "s").as_uri())
    real = dict(benchmark="atari100k", env="breakout", agent="rainbow", objective="mlr", gin_files="gin/atari_mlr.gin")
    for seed, score in enumerate((16.8, 17.8, 18.8)):
        _add_run(client, main_exp, {**real, "seed": seed}, final=score)
    _add_run(client, main_exp, {**real, "seed": 2}, final=19.0)  # a rerun of seed 2: the latest counts
    records, notes = find_runs(client, RunFilter("atari100k", uri))
    assert [r.final_return for r in records] == [16.8, 17.8, 19.0]
    assert any("1 run(s) repeat an (objective, env, seed) of the same configuration" in n for n in notes)
    # a smoke run of seed 0 ends later: it must not replace the real one
    _add_run(client, smoke_exp, {**real, "seed": 0, "gin_files": "gin/smoke/tiny_atari.gin"}, final=0.0)
    with pytest.raises(ReportError) as err:
        find_runs(client, RunFilter("atari100k", uri))
    message = str(err.value)
    assert "objective=mlr env=breakout seed=0" in message and "gin/smoke/tiny_atari.gin" in message
    assert "experiment 'atari100k', gin gin/atari_mlr.gin" in message and "--experiment" in message
    records, notes = find_runs(client, RunFilter("atari100k", uri, experiments=("atari100k",)))
    assert [r.final_return for r in records] == [16.8, 17.8, 19.0]
    # an ablation run on a seed the main file did not run: counted, with a note naming both
    _add_run(client, main_exp, {**real, "seed": 3, "gin_files": "gin/ablations/mask_ratio_025.gin"}, final=1.5)
    records, notes = find_runs(client, RunFilter("atari100k", uri, experiments=("atari100k",)))
    assert len(records) == 4
    (note,) = [n for n in notes if "pools runs of 2 configurations" in n]
    assert "gin/atari_mlr.gin (3 runs)" in note and "gin/ablations/mask_ratio_025.gin (1 run)" in note
    records, notes = find_runs(client, RunFilter("atari100k", uri, tags=(("gin_files", "gin/atari_mlr.gin"),)))
    assert len(records) == 3 and not any("pools" in n for n in notes)


def test_runs_that_differ_only_in_their_bind_options_are_different_configurations(tmp_path):
    """Runs of one gin file with different --bind values (a plugin masker, a grid over the mask
    ratio) are not reruns of each other; bindings of the seed, game or task (a sweep's per-trial
    ones) only pick the cell, so they do not split a configuration."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("smoke", artifact_location=(tmp_path / "a").as_uri())
    cube = dict(benchmark="atari100k", env="breakout", agent="rainbow", objective="mlr",
                gin_files="gin/smoke/atari_mlr.gin",
                bindings="trainers.atari100k.seed = 0; envs.atari.game = 'breakout'")
    _add_run(client, exp, {**cube, "seed": 0}, final=2.0)
    _add_run(client, exp, {**cube, "seed": 1, "bindings": "trainers.atari100k.seed = 1"}, final=3.0)
    records, notes = find_runs(client, RunFilter("atari100k", uri))
    assert [r.final_return for r in records] == [2.0, 3.0] and not any("pools" in n for n in notes)
    _add_run(client, exp, {**cube, "seed": 0, "bindings": "losses.mlr.masker = @maskers.checkerboard()"}, final=9.0)
    with pytest.raises(ReportError) as err:
        find_runs(client, RunFilter("atari100k", uri))
    assert "bind losses.mlr.masker = @maskers.checkerboard()" in str(err.value) and "--tag bindings" in str(err.value)
    # a DMC task file, relative or absolute (a sweep started outside the repo), only picks the cell
    from mlr_registry.report.runs import config_of

    absolute = config_of("dmc", {"gin_files": "gin/dmc_mlr.gin,/repo/gin/dmc/walker_walk.gin"})
    relative = config_of("dmc", {"gin_files": "gin/dmc_mlr.gin,gin/dmc/cheetah_run.gin"})
    assert absolute == relative == "experiment 'dmc', gin gin/dmc_mlr.gin"


def test_dmc100k_scores_also_come_from_500k_runs_at_their_100k_evaluation(tmp_path):
    """A DMC-500k run evaluates every 5,000 env steps, so it holds its DMC-100k score at env step
    100,000 (the reference read both of the paper's columns off the same runs)."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("dmc", artifact_location=(tmp_path / "a").as_uri())
    long = dict(benchmark="dmc500k", env="cheetah-run", agent="sac", objective="mlr",
                gin_files="gin/dmc_mlr.gin,gin/dmc500k.gin")
    for seed in range(2):
        curve = [(0, 5.0), (95_000, 400.0 + seed), (100_000, 500.0 + seed), (500_000, 800.0 + seed)]
        _add_run(client, exp, {**long, "seed": seed}, final=800.0 + seed, curve=curve)
    _add_run(client, exp, {**long, "seed": 2}, final=801.0, curve=[(0, 5.0), (500_000, 801.0)])  # no 100k point
    records, notes = find_runs(client, RunFilter("dmc100k", uri))
    assert [(r.seed, r.final_return, r.at_step) for r in records] == [("0", 500.0, 100_000), ("1", 501.0, 100_000)]
    assert "2 run(s) of dmc500k counted at their evaluation at env step 100,000" in notes
    assert "1 longer run(s) without eval/return_mean at the benchmark's env step left out" in notes
    steps, values = metric_histories(client, records)[records[0].run_id]
    assert steps.tolist() == [0, 95_000, 100_000] and values[-1] == 500.0  # the curve stops at 100k
    records, _ = find_runs(client, RunFilter("dmc500k", uri))
    assert [r.final_return for r in records] == [800.0, 801.0, 801.0] and all(r.at_step is None for r in records)
    # a 100k run of the same seed is another configuration: the report will not pick one silently
    short = {**long, "benchmark": "dmc100k", "gin_files": "gin/dmc_mlr.gin", "seed": 0}
    _add_run(client, exp, short, final=480.0, curve=[(100_000, 480.0)])
    with pytest.raises(ReportError, match="objective=mlr env=cheetah-run seed=0"):
        find_runs(client, RunFilter("dmc100k", uri))
    records, _ = find_runs(client, RunFilter("dmc100k", uri, tags=(("gin_files", "gin/dmc_mlr.gin"),)))
    assert [r.final_return for r in records] == [480.0]


# ---- runs off the benchmark's protocol --------------------------------------------------------

# The params a run records (its operative gin config), at the Atari-100k protocol and as
# gin/smoke/atari_mlr.gin runs: 200 agent steps, 2 evaluation games capped at 100 steps.
ATARI_PROTOCOL = {"trainers.atari100k.num_env_steps": "100000", "trainers.atari100k.eval_episodes": "100",
                  "trainers.atari100k.eval_max_steps": "None", "envs.atari.max_episode_steps": "27000",
                  "envs.atari.frame_skip": "4"}
ATARI_SMOKE = {**ATARI_PROTOCOL, "trainers.atari100k.num_env_steps": "200",
               "trainers.atari100k.eval_episodes": "2", "trainers.atari100k.eval_max_steps": "100"}


def _protocol_store(tmp_path, params, curve_points=1):
    """Two games x 2 seeds of objective mlr with ``params``; each run evaluated once at the end
    (Atari-100k's default), or at ``curve_points`` steps."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("atari100k", artifact_location=(tmp_path / "a").as_uri())
    steps = [100_000 * (i + 1) // curve_points for i in range(curve_points)]
    for game in ("pong", "breakout"):
        for seed in range(2):
            score = _seed_score(game, seed)
            tags = dict(benchmark="atari100k", env=game, agent="rainbow", objective="mlr", seed=seed)
            _add_run(client, exp, tags, final=score, curve=[(s, score) for s in steps], params=params)
    return uri, client


def _report_files(tmp_path, uri, capsys):
    out = tmp_path / "report"
    assert main(["--benchmark", "atari100k", "--tracking-uri", uri, "--out", str(out), "--reps", "20",
                 "--no-mlflow"]) == 0
    return out, capsys.readouterr()


def test_smoke_sized_runs_are_flagged_as_not_comparable_with_the_paper(tmp_path, capsys):
    """A report over smoke runs used to print them beside the paper's 100k columns without a
    word (pong's 0.53 HNS came from an evaluation capped at 100 steps)."""
    uri, _ = _protocol_store(tmp_path, ATARI_SMOKE)
    out, printed = _report_files(tmp_path, uri, capsys)
    table = (out / "table.md").read_text()
    headline = ("4 of 4 runs are not at the atari100k protocol (100,000 agent steps (400k frames), then 100 "
                "evaluation games of up to 27,000 agent steps): their scores are NOT comparable with the "
                "paper's columns")
    details = ("4 run(s) (mlr on breakout, pong): trained 200 agent steps (protocol: 100,000); 2 evaluation "
               "games (protocol: 100); evaluation games capped at 100 agent steps (protocol: 27,000)")
    assert f"> **WARNING: {headline}.**" in table and f"> - {details}" in table
    assert table.index("WARNING") < table.index("## Per game")  # above the tables, not in the notes
    assert "| Paper MLR (not comparable) | Paper Baseline (not comparable) |" in table
    assert printed.out.splitlines()[2] == f"WARNING: {headline}."
    assert f"warning: {headline}" in printed.err  # again after the long table
    assert "Paper MLR (not comparable)" in printed.out
    for name in ("per_game.csv", "aggregates.csv"):
        assert {r["comparable_with_paper"] for r in csv.DictReader(open(out / name))} == {"false"}, name


def test_runs_at_the_protocol_get_no_warning(tmp_path, capsys):
    uri, _ = _protocol_store(tmp_path, ATARI_PROTOCOL)
    out, printed = _report_files(tmp_path, uri, capsys)
    table = (out / "table.md").read_text()
    assert "WARNING" not in table and "not comparable" not in table and "| Paper MLR | Paper Baseline |" in table
    assert "WARNING" not in printed.out and "warning" not in printed.err
    assert not any("was not checked" in n for n in table.splitlines())
    for name in ("per_game.csv", "aggregates.csv"):
        assert {r["comparable_with_paper"] for r in csv.DictReader(open(out / name))} == {"true"}, name


@pytest.mark.parametrize("params, bench, deviations", [
    ({**ATARI_PROTOCOL, "trainers.atari100k.eval_max_steps": "27000"}, "atari100k", ()),  # a cap no shorter than a game
    ({**ATARI_PROTOCOL, "envs.atari.frame_skip": "2"}, "atari100k", ("frame skip 2 (protocol: 4)",)),
    ({"trainers.dmc.num_env_steps": "100000", "trainers.dmc.eval_episodes": "1", "envs.dmc.episode_length": "1000"},
     "dmc100k", ("1 evaluation episodes (protocol: 10)",)),
    ({"trainers.dmc.num_env_steps": "240", "envs.dmc.episode_length": "80"}, "dmc500k",
     ("trained 240 env steps (protocol: 500,000)", "episodes of 80 env steps (protocol: 1,000)")),
])
def test_protocol_verdicts(params, bench, deviations):
    from mlr_registry.report.protocol import judge

    verdict = judge(bench, params)
    assert verdict.checked and verdict.deviations == deviations


def test_a_500k_run_counted_at_100k_is_at_the_100k_protocol_and_params_less_runs_are_unchecked():
    from mlr_registry.report.protocol import judge

    long = {"trainers.dmc.num_env_steps": "500000", "trainers.dmc.eval_episodes": "10"}
    assert judge("dmc100k", long, at_step=100_000).deviations == ()
    assert judge("dmc100k", long).deviations == ("trained 500,000 env steps (protocol: 100,000)",)
    assert not judge("atari100k", {}).checked  # a plugin trainer's run: nothing to judge it by


def test_plots_warn_and_one_point_learning_curves_have_markers(tmp_path, monkeypatch, capsys):
    """Atari-100k runs evaluate once, at the end: a line without markers drew nothing."""
    from mlr_registry.report import plots

    figures = {}
    real_save = plots._save

    def keep(fig, path):
        figures[path.name] = fig
        fig.canvas.draw()  # lay it out as the saved PNG is
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    uri, _ = _protocol_store(tmp_path, ATARI_SMOKE)
    _report_files(tmp_path, uri, capsys)
    curves = figures["learning_curves.png"]
    drawn = [line for ax in curves.axes if ax.get_visible() for line in ax.get_lines() if line.get_label() == "mlr"]
    assert len(drawn) == 2  # pong, breakout
    assert all(line.get_marker() == "o" and len(line.get_xdata()) == 1 for line in drawn)
    for name, fig in figures.items():  # every plot says its runs are not comparable with the paper
        assert any(t.get_text().startswith("NOT COMPARABLE WITH THE PAPER") for t in fig.texts), name


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("objectives", [1, 3])
def test_the_aggregates_x_label_stays_clear_of_the_tick_labels(tmp_path, monkeypatch, objectives):
    from mlr_registry.report import plots

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(path.name, fig) and path)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("atari100k", artifact_location=(tmp_path / "a").as_uri())
    for k in range(objectives):
        for game in ("pong", "breakout", "alien"):
            for seed in range(2):
                tags = dict(benchmark="atari100k", env=game, agent="rainbow", objective=f"o{k}", seed=seed)
                _add_run(client, exp, tags, final=_seed_score(game, seed) * (1 + k), params=ATARI_PROTOCOL)
    report = analyse(client, RunFilter("atari100k", uri), reps=20)
    plots.plot_aggregates(report, tmp_path / "aggregates.png")
    fig = figures["aggregates.png"]
    renderer = fig.canvas.get_renderer()
    (label,) = [t for t in fig.texts if t.get_text() == "Human-normalized score"]
    box = label.get_window_extent(renderer)
    ticks = [t.get_window_extent(renderer) for ax in fig.axes for t in ax.get_xticklabels() if t.get_text()]
    assert ticks and not any(_overlaps(box, t) for t in ticks)
    assert box.y1 <= min(t.y0 for t in ticks)  # below them
