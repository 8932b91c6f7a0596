"""The GPU session's scripts (tools/gpu_*.{sh,py}, tools/trim_wheel.py) and the GPU profilers
(benchmarks/gpu/) run on a lent GPU machine, never in CI; these tests keep them runnable: the
shell script parses and names benchmarks that exist, the summary computes the projection from
MLflow windows, and the profilers run their code paths on a CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
PROFILERS = ROOT / "benchmarks" / "gpu"
sys.path[:0] = [str(TOOLS), str(PROFILERS)]


def test_gpu_check_parses_and_its_benchmarks_exist():
    script = (TOOLS / "gpu_check.sh").read_text()
    for name in ("gpu_check.sh", "gpu_wheels.sh"):  # syntax only: they fetch and install
        subprocess.run(["bash", "-n", str(TOOLS / name)], check=True)
    text = script.replace("$F", "$B/test_bench_fast_path.py").replace("$B", "benchmarks")
    ids = re.findall(r"benchmarks/test_\w+\.py(?:::[\w\[\]-]+)?", text)
    assert len(ids) >= 8
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *ids],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "test_bench_fast_path_rainbow_update[bf16_compile_update-mlr]" in out.stdout


def test_gpu_summary_projects_a_full_game_from_the_steady_windows(tmp_path, capsys):
    import gpu_summary
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.create_experiment("atari100k", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp, start_time=1_000_000, tags={"gpu_check": "game", "fast_path.compile": "x/y/update"})
    # windows of 1000 env steps: warm-up (no updates), one with compilation, then steady ones
    for step, ups in [(1000, 0.0), (2000, 0.0), (3000, 20.0), (4000, 64.0), (5000, 50.0), (6000, 70.0),
                      (7000, 60.0)]:
        client.log_metric(run.info.run_id, "throughput/updates_per_s", ups, step=step)
        client.log_metric(run.info.run_id, "throughput/env_steps_per_s", ups / 2 or 2000.0, step=step)
    client.set_terminated(run.info.run_id, "KILLED", end_time=1_000_000 + 240_000)  # 4 minutes
    evaluation = client.create_run(exp, start_time=2_000_000, tags={"gpu_check": "eval_workers_-1"})
    client.log_metric(evaluation.info.run_id, "throughput/eval_seconds", 6.25, step=1)
    client.log_metric(evaluation.info.run_id, "final_return", -20.5, step=1)
    client.set_terminated(evaluation.info.run_id, "FINISHED", end_time=2_000_000 + 30_000)
    (tmp_path / "bench.json").write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "Test CPU"}}, "benchmarks": [
        {"fullname": "t.py::test_env", "stats": {"median": 0.05, "min": 0.04}, "extra_info": {"steps_per_round": 200}},
        {"fullname": "t.py::test_update[mlr]", "stats": {"median": 0.0125, "min": 0.012},
         "extra_info": {"device": "cuda", "precision": "bf16", "compile": "inductor/default/update"}}]}))
    (tmp_path / "game_util.csv").write_text("timestamp, utilization.gpu [%], memory.used [MiB]\n"
                                           "t0, 10 %, 100 MiB\nt1, 40 %, 200 MiB\nt2, 60 %, 300 MiB\n")
    gpu_summary.main(["gpu_summary.py", str(tmp_path)])
    out = capsys.readouterr().out
    # steady = the windows after the first two with updates: 50, 70, 60 -> median 60 updates/s, 30 env steps/s
    assert "60.0 updates/s, 30.0 env steps/s" in out
    projected = (100_000 - 7000) / 30.0 / 60 + 4.0
    assert f"{projected:.1f} min" in out
    assert "(game_util, nvidia-smi, 1 s samples): second half mean 50%, max 60%" in out
    assert re.search(r"test_env\s+50\.00\s+40\.00\s+4000\.0", out)  # env: steps per round / median
    assert re.search(r"test_update\[mlr\]\s+12\.50\s+12\.00\s+80\.0", out)
    assert "eval_workers_-1: status=FINISHED evaluation 6.2 s of a 30 s run, mean score -20.50" in out


def test_gpu_summary_projects_a_run_left_running_from_its_last_window(tmp_path, capsys):
    """A game whose process died without ending its MLflow run (no end time, as the H100's DMC
    game on 26 November 2026) still counts its elapsed minutes, up to its last window."""
    import gpu_summary
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.create_experiment("dmc", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp, start_time=1_000_000, tags={"gpu_check": "game_dmc"})
    for i, ups in enumerate([0.0, 0.0, 5.0, 20.0, 22.0, 22.0, 22.0]):
        for key, value in (("throughput/updates_per_s", ups), ("throughput/env_steps_per_s", ups * 4 or 1000.0)):
            client.log_metric(run.info.run_id, key, value, step=500 * (i + 1), timestamp=1_000_000 + 30_000 * (i + 1))
    gpu_summary.main(["gpu_summary.py", str(tmp_path)])
    out = capsys.readouterr().out
    assert "status=RUNNING" in out and "22.0 updates/s, 88.0 env steps/s" in out
    projected = (100_000 - 3500) / 88.0 / 60 + 3.5  # 7 windows, 30 s apart
    assert f"{projected:.1f} min" in out


def test_gpu_summary_reports_missing_parts_without_failing(tmp_path, capsys):
    import gpu_summary

    gpu_summary.main(["gpu_summary.py", str(tmp_path)])
    out = capsys.readouterr().out
    assert "game: no mlruns.db" in out and "bench: no bench.json" in out and "eval: no mlruns.db" in out


def test_gpu_profile_runs_its_loop_and_variants_on_a_cpu(tmp_path):
    cmd = [sys.executable, str(PROFILERS / "gpu_profile.py"), "--out", str(tmp_path), "--cpu", "--tiny",
           "--variants", "fast,eager_fp32"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    times = dict(re.findall(r"^(loop without the emulator(?:, pipeline_updates)?|update alone): ([\d.]+) ms",
                            out.stdout, re.M))
    assert set(times) == {"loop without the emulator", "loop without the emulator, pipeline_updates", "update alone"}
    assert all(float(v) > 0 for v in times.values())
    act = re.search(r"^act \(with its host sync\): ([\d.]+) ms as the loop runs it \(eager\), ([\d.]+) ms eagerly",
                    out.stdout, re.M)
    assert act and float(act[1]) > 0 and float(act[2]) > 0, out.stdout  # eager on a CPU: no compiled act
    table = dict(re.findall(r"^  (\w+) +([\d.]+) ms", out.stdout, re.M))
    assert set(table) == {"fast", "eager_fp32"} and all(float(v) > 0 for v in table.values())
    assert "by self_cpu_time_total" in (tmp_path / "profile.txt").read_text()
    bad = subprocess.run([*cmd[:-1], "fast,bogus"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown variants ['bogus']" in bad.stderr


def test_update_floor_arithmetic_and_its_tiny_run():
    import update_floor

    per_param = sum(update_floor.BYTES_PER_PARAM.values())
    assert per_param == 38  # gradient write 4, norm read 4, Adam 28, bf16 weight copy 2
    f = update_floor.floor(flops=1e12, params=100_000_000, tflops=1000.0, tbps=3.8)
    assert abs(f["compute_ms"] - 1.0) < 1e-9 and abs(f["memory_ms"] - 1.0) < 1e-9  # 3.8 GB at 3.8 TB/s
    assert abs(f["updates_per_s"] - 500.0) < 1e-6 and abs(f["run_minutes"] - 196_000 * 2e-3 / 60) < 1e-9
    assert abs(f["goal_ms"] - 15 * 60e3 / 196_000) < 1e-9
    out = subprocess.run([sys.executable, str(PROFILERS / "update_floor.py"), "--tiny"], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    flops, params = re.search(r"mlr \(tiny\): ([\d.]+) TFLOP per update, ([\d.]+) M optimized", out.stdout).groups()
    assert float(flops) > 0 and float(params) > 0
    assert "196,000 updates take at least" in out.stdout


def test_trim_wheel_drops_the_prefixes_and_their_record_lines(tmp_path):
    import zipfile

    import trim_wheel

    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    files = {"pkg/__init__.py": "x = 1\n", "pkg/assets/big.bin": "0" * 5000, "pkg/assets/more.xml": "<a/>",
             "pkg/keep.png": "png"}
    record = "".join(f"{name},sha256=abc,{len(data)}\n" for name, data in files.items())
    record += "pkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in {**files, "pkg-1.0.dist-info/RECORD": record}.items():
            z.writestr(name, data)
    assert trim_wheel.trim(str(wheel), ["pkg/assets/"])[0] == 2
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == ["pkg-1.0.dist-info/RECORD", "pkg/__init__.py", "pkg/keep.png"]
        assert z.read("pkg/__init__.py") == b"x = 1\n"
        assert "assets" not in z.read("pkg-1.0.dist-info/RECORD").decode()
    out = subprocess.run([sys.executable, str(TOOLS / "trim_wheel.py"), str(wheel), "pkg/assets/"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "nothing under" in out.stderr  # a stale prefix is an error, not a no-op


def test_gpu_profile_dmc_times_its_variants_on_a_cpu(tmp_path):
    cmd = [sys.executable, str(PROFILERS / "gpu_profile_dmc.py"), "--out", str(tmp_path), "--cpu", "--tiny",
           "--variants", "fast,reference_draw,channels_last"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^profiled updates: [\d.]+ ms per update; .* host waits [\d.]+ per update", out.stdout, re.M)
    table = dict(re.findall(r"^  (\w+) +([\d.]+) ms", out.stdout, re.M))
    assert set(table) == {"fast", "reference_draw", "channels_last"} and all(float(v) > 0 for v in table.values())
    assert "memory_format" in re.search(r"^channels_last: .*$", out.stdout, re.M).group()  # the switch took effect
    assert "by self_cpu_time_total" in (tmp_path / "profile_dmc.txt").read_text()
    bad = subprocess.run([*cmd[:-1], "fast,bogus"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown variants ['bogus']" in bad.stderr
    bad = subprocess.run([*cmd, "--task", "cheetah_walk"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no gin/dmc/cheetah_walk.gin" in bad.stderr and "cheetah_run" in bad.stderr
