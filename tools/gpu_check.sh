#!/usr/bin/env bash
# The GPU fast path's checks in one call (about 9 minutes on one H100), from the repository root:
#   1. one full-length Atari-100k MLR game on the fast path (gin/fast/atari_mlr_fast.gin), logged
#      to MLflow and stopped with Ctrl-C after GAME_SECONDS (a full game needs ~196k updates; the
#      windows of throughput/updates_per_s, acting included, give its projected wall time), with
#      the GPU's utilisation sampled every second; with NO_CUDAGRAPHS_SECONDS > 0, the same game
#      again without CUDA graphs (compile_mode 'default'; the fast config captures them); with
#      PIPELINED_SECONDS > 0, again with execution.pipeline_updates = True; with
#      DMC_SECONDS > 0, a DMC game (DMC_TASK, default cheetah_run) on gin/fast/dmc_mlr_fast.gin;
#      with DMC_GRAPHS_SECONDS > 0, the same with CUDA graphs (agents.sac.compile_mode
#      'reduce-overhead', which the DMC fast config does not use yet); with DMC_VARIANT_SECONDS
#      > 0, the same with the binding DMC_VARIANT (default: cuDNN's autotuning);
#   2. the benchmark suite's GPU rows: full-size Rainbow(+MLR) and SAC+MLR updates, reference vs
#      fast path, replay sampling, acting, env steps;
#   3. with PROFILE_SECONDS > 0: benchmarks/gpu/gpu_profile.py --variants PROFILE_VARIANTS (the loop
#      without the emulator, acting compiled vs eager, the variants' updates alone); with
#      PROFILE_DMC_SECONDS > 0: benchmarks/gpu/gpu_profile_dmc.py --variants PROFILE_DMC_VARIANTS (DMC's
#      update as the trainer runs it, its host waits, the variants' updates);
#   4. the CUDA tests of tests/test_fast_path.py and tests/test_transfer.py (bf16, inductor and
#      CUDA graphs vs the reference; the Atari and DMC loops without host waits), PARITY_K as
#      pytest -k (default: all of them);
#   5. with EVAL_SECONDS > 0: the final evaluation alone, 100 games of an untrained agent (no
#      updates), with one worker process per core and in the trainer's process
#      (throughput/eval_seconds in MLflow).
# Each stage has its own time limit (GAME_SECONDS, BENCH_SECONDS, PROFILE_SECONDS, PARITY_SECONDS,
# EVAL_SECONDS per evaluation run; 0 skips it), so
# a stage that fails or hangs leaves the others' figures.
# Everything lands in $OUT (default gpu_out/): mlruns.db, bench.json, logs, *_util.csv;
# tools/gpu_summary.py prints the table. Packages a bare GPU machine lacks can travel as
# wheels in .whl/ (tools/gpu_wheels.sh fetches them; installed to /tmp/site when present).
set -u
OUT=${OUT:-gpu_out}
GAME=${GAME:-pong}
GAME_SECONDS=${GAME_SECONDS:-150}
BENCH_SECONDS=${BENCH_SECONDS:-150}
PARITY_SECONDS=${PARITY_SECONDS:-240}  # 10 CUDA tests: parity (CUDA graphs too), compiled acting, loops without host waits (Atari, DMC)
PARITY_K=${PARITY_K:-gpu}  # pytest -k for the parity stage (e.g. a rerun of the tests that failed last time)
PROFILE_SECONDS=${PROFILE_SECONDS:-0}  # opt in (e.g. 150: about a minute of compilation per variant)
PROFILE_VARIANTS=${PROFILE_VARIANTS:-cudagraphs,fast}  # gin/fast's Atari update, and without CUDA graphs
DMC_GAME_TASK=${DMC_TASK:-cheetah_run}  # the DMC stages' task (game() switches to DMC when DMC_TASK is set)
PROFILE_DMC_VARIANTS=${PROFILE_DMC_VARIANTS:-fast,nchw,cudnn_benchmark,reference_draw,cudagraphs}  # DMC: gin/fast (NHWC), NCHW, cuDNN autotuning, the reference's MLR draw, graphs
LOG_EVERY=${LOG_EVERY:-500}  # env steps per throughput window of the game (the trainer's default: 1000)
EVAL_SECONDS=${EVAL_SECONDS:-0}  # opt in (e.g. 90): the defaults above already fill ~9 of a call's 10 minutes
PY=${PY:-python3}
mkdir -p "$OUT"
source tools/device_setup.sh  # wheels in .whl/, EGL loaders in .gl/, PYTHONPATH
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
$PY - <<'EOF' 2>&1
import os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cpus", os.cpu_count(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA")
EOF

stage() { echo; echo "=== $1 ($(date +%T))"; }

# game NAME SECONDS [gin binding]: the fast config on GAME (with DMC_TASK set: the DMC fast config
# on that task), tagged gpu_check=NAME, logs in $OUT/NAME.log
game() {
  local name=$1 seconds=$2 extra=${3:-} gin=gin/fast/atari_mlr_fast.gin trainer=atari100k what=$GAME
  local task=()
  if [ -n "${DMC_TASK:-}" ]; then
    gin=gin/fast/dmc_mlr_fast.gin trainer=dmc what=$DMC_TASK
    task=(--gin "gin/dmc/$DMC_TASK.gin")
  else
    task=(--bind "atari.game = '$GAME'")
  fi
  stage "1. full-length $what ($name), stopped after ${seconds}s"
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$OUT/${name}_util.csv" 2>/dev/null &
  local smi=$! start
  start=$(date +%s)
  # --preserve-status: the trainer's own exit status (130 after a handled interrupt, with its
  # "interrupted" line; 128+N when signal N killed it: 139 a segfault, 134 an abort, 130 with no
  # line an unhandled SIGINT) instead of timeout's 124, which cannot tell them apart
  timeout --preserve-status -s INT -k 45 "$seconds" $PY -m mlr_registry.run --gin "$gin" "${task[@]}" \
    --bind "trainers.$trainer.video = False" \
    --bind "trainers.$trainer.progress = False" --bind "trainers.$trainer.checkpoint_every = 0" \
    --bind "trainers.$trainer.log_every = $LOG_EVERY" ${extra:+--bind "$extra"} --tracking-uri "sqlite:///$OUT/mlruns.db" --tag "gpu_check=$name" > "$OUT/$name.log" 2>&1
  echo "$name exit $? after $(( $(date +%s) - start ))s"
  kill "$smi" 2>/dev/null
  grep -v "^ *$" "$OUT/$name.log" | tail -n 8
}
[ "$GAME_SECONDS" -gt 0 ] && game game "$GAME_SECONDS"
# The same without CUDA graphs (compile_mode 'default'), when NO_CUDAGRAPHS_SECONDS > 0.
if [ "${NO_CUDAGRAPHS_SECONDS:-0}" -gt 0 ]; then
  game game_no_cudagraphs "$NO_CUDAGRAPHS_SECONDS" "agents.rainbow.compile_mode = 'default'"
fi
# The same with the step's updates queued before its action is read back, when PIPELINED_SECONDS > 0.
if [ "${PIPELINED_SECONDS:-0}" -gt 0 ]; then
  game game_pipelined "$PIPELINED_SECONDS" "execution.pipeline_updates = True"
fi
# A DMC game (cheetah-run by default) on gin/fast/dmc_mlr_fast.gin, when DMC_SECONDS > 0: needs
# the DMC wheels (DMC=1 tools/gpu_wheels.sh) and EGL's loaders in .gl/ (unpacked above).
if [ "${DMC_SECONDS:-0}" -gt 0 ]; then
  DMC_TASK=$DMC_GAME_TASK game game_dmc "$DMC_SECONDS"
fi
if [ "${DMC_GRAPHS_SECONDS:-0}" -gt 0 ]; then
  DMC_TASK=$DMC_GAME_TASK game game_dmc_cudagraphs "$DMC_GRAPHS_SECONDS" \
    "agents.sac.compile_mode = 'reduce-overhead'"
fi
# Any one binding on top of the DMC fast config (DMC's update is ≈3.7 TFLOP of 64-channel
# convolutions: see benchmarks/gpu/gpu_profile_dmc.py), when DMC_VARIANT_SECONDS > 0.
if [ "${DMC_VARIANT_SECONDS:-0}" -gt 0 ]; then
  DMC_TASK=$DMC_GAME_TASK game game_dmc_variant "$DMC_VARIANT_SECONDS" \
    "${DMC_VARIANT:-execution.cudnn_benchmark = True}"
fi

bench() {
  stage "2. benchmarks"
  B=benchmarks
  F=$B/test_bench_fast_path.py
  BENCH_TESTS=${BENCH_TESTS:-"$F::test_bench_fast_path_rainbow_update[reference-mlr]
    $F::test_bench_fast_path_rainbow_update[bf16-mlr] $F::test_bench_fast_path_rainbow_update[bf16_compile_update-mlr]
    $F::test_bench_fast_path_rainbow_update[bf16_compile_update_cudagraphs-mlr]
    $F::test_bench_fast_path_rainbow_update[reference-baseline]
    $F::test_bench_fast_path_rainbow_update[bf16_compile_update-baseline]
    $F::test_bench_fast_path_sac_update[reference-mlr] $F::test_bench_fast_path_sac_update[bf16-mlr]
    $B/test_bench_replay.py $B/test_bench_env.py::test_atari_env_step $B/test_bench_rainbow.py::test_bench_rainbow_act"}
  # pytest-timeout (when installed) fails one stuck benchmark instead of losing the whole table
  PER_TEST=$($PY -c "import pytest_timeout" 2>/dev/null && echo "--timeout 120 --timeout-method signal")
  # shellcheck disable=SC2086  # BENCH_TESTS and PER_TEST are word lists (no globbing: node ids hold [...])
  set -f
  timeout -k 20 "$BENCH_SECONDS" $PY -m pytest -p no:cacheprovider -q --benchmark-enable --benchmark-only \
    --benchmark-columns=min,median,mean,rounds --benchmark-json "$OUT/bench.json" $PER_TEST $BENCH_TESTS \
    > "$OUT/bench.log" 2>&1
  rc=$?
  set +f
  echo "bench exit $rc"
  grep -E "passed|failed|error|Error" "$OUT/bench.log" | tail -n 5
}
[ "$BENCH_SECONDS" -gt 0 ] && bench

profile() {
  stage "3. gpu_profile.py --variants $PROFILE_VARIANTS"
  timeout -k 20 "$PROFILE_SECONDS" $PY benchmarks/gpu/gpu_profile.py --out "$OUT" --variants "$PROFILE_VARIANTS" \
    --budget-s $(( PROFILE_SECONDS * 2 / 3 )) > "$OUT/profile.log" 2>&1
  echo "profile exit $?"
  grep -E "compiled in|loop|update alone|act \(|profiled|skipped|^  [a-z_]+ +[0-9]|Error" "$OUT/profile.log"
}
[ "$PROFILE_SECONDS" -gt 0 ] && profile

profile_dmc() {
  stage "3b. gpu_profile_dmc.py --variants $PROFILE_DMC_VARIANTS"
  timeout -k 20 "$PROFILE_DMC_SECONDS" $PY benchmarks/gpu/gpu_profile_dmc.py --out "$OUT" --task "$DMC_GAME_TASK" \
    --variants "$PROFILE_DMC_VARIANTS" --budget-s $(( PROFILE_DMC_SECONDS * 2 / 3 )) > "$OUT/profile_dmc.log" 2>&1
  echo "profile_dmc exit $?"
  grep -E "warmed up|profiled|skipped|^  [a-z_]+ +[0-9]|Error" "$OUT/profile_dmc.log"
}
[ "${PROFILE_DMC_SECONDS:-0}" -gt 0 ] && profile_dmc

parity() {
  stage "4. CUDA parity tests"
  # -v: each test's verdict as it ends, so a stage cut short by its limit still reports the finished ones
  timeout -k 20 "$PARITY_SECONDS" $PY -m pytest -p no:cacheprovider -v -rs tests/test_fast_path.py tests/test_transfer.py -k "$PARITY_K" \
    > "$OUT/parity.log" 2>&1
  echo "parity exit $?"
  grep -E "^E  |PASSED|FAILED|SKIPPED" "$OUT/parity.log" | head -n 40
  tail -n 3 "$OUT/parity.log"
}
[ "$PARITY_SECONDS" -gt 0 ] && parity

# The final evaluation alone: num_env_steps = 1 stops before any update, so the run is start-up +
# 100 games of the untrained agent (pong: each lost 0-21 in ~800 agent steps) + shut-down.
evaluation() {
  for workers in -1 0; do
    stage "5. final evaluation alone: 100 $GAME games, eval_workers = $workers"
    timeout -s INT -k 20 "$EVAL_SECONDS" $PY -m mlr_registry.run --gin gin/fast/atari_mlr_fast.gin \
      --bind "atari.game = '$GAME'" --bind "trainers.atari100k.num_env_steps = 1" \
      --bind "trainers.atari100k.eval_workers = $workers" --bind "trainers.atari100k.video = False" \
      --bind "trainers.atari100k.progress = False" --bind "trainers.atari100k.checkpoint_every = 0" \
      --tracking-uri "sqlite:///$OUT/mlruns.db" --tag "gpu_check=eval_workers_$workers" > "$OUT/eval_$workers.log" 2>&1
    echo "eval exit $?"
  done
}
[ "$EVAL_SECONDS" -gt 0 ] && evaluation

stage "summary"
$PY tools/gpu_summary.py "$OUT"
