#!/usr/bin/env bash
# One call on a lent GPU machine, from the repository root: K seeds of one DMC-100k task packed on
# the GPU (tools/pack_seeds.py, gin/fast/dmc_mlr_fast.gin + gin/dmc/$TASK.gin), stopped at
# DEADLINE_S so that the call ends with every run FINISHED or KILLED (with a checkpoint), never
# lost; or, with CURVE=1,2,4,8, the packing curve instead (tools/packing_curve.py, CURVE_SECONDS
# per K). What comes back, in $OUT (default pack_out/), is a handful of small files:
#   pack.log          the packer's output (per seed: status, wall time, final return, updates/s)
#   summary.json      the same as data, with the commit and the device
#   mlruns.db         the MLflow store (metrics, params, tags of every run)
#   table.md          the report's table, written only when every run FINISHED
#   pack.tgz          logs/, report/ and the runs' artifacts without their checkpoints (each
#                     holds the replay: gigabytes, which stay on the machine) and videos
#   packing_curve.csv with CURVE set
# Packages a bare GPU machine lacks travel as wheels in .whl/ and the EGL loaders as .deb files in
# .gl/ (DMC=1 tools/gpu_wheels.sh fetches both); they are installed when present.
set -u
OUT=${OUT:-pack_out}
TASK=${TASK:-cartpole_swingup}      # gin/dmc/<TASK>.gin; cartpole's action repeat 8 makes its run the shortest
SEEDS=${SEEDS:-0,1,2,3}
BASE_GIN=${BASE_GIN:-gin/fast/dmc_mlr_fast.gin}  # gin/smoke/dmc_mlr.gin tries this script on a CPU in a minute
DEADLINE_S=${DEADLINE_S:-450}       # of a call's 10 minutes: set-up before, checkpoints and the report after
GRACE_S=${GRACE_S:-60}
CURVE=${CURVE:-}                    # e.g. 1,2,4,8: measure the packing curve instead of packing SEEDS
CURVE_SECONDS=${CURVE_SECONDS:-100} # per K: compilation takes about a minute of it
WORK=${WORK:-/tmp/pack}             # local disk for the store and the checkpoints
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK"
source tools/device_setup.sh  # wheels in .whl/, EGL loaders in .gl/, PYTHONPATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/pack.log"
GIN=(--gin "$BASE_GIN" --gin "gin/dmc/$TASK.gin")
if [ -n "$CURVE" ]; then
  # Several throughput windows per run: the first holds compilation.
  $PY tools/packing_curve.py "${GIN[@]}" --bind "trainers.dmc.log_every = 1000" --k "$CURVE" \
    --seconds "$CURVE_SECONDS" --grace-s "$GRACE_S" --out "$WORK" "$@" 2>&1 | tee -a "$OUT/pack.log"
  cp "$WORK/packing_curve.csv" "$OUT/" 2>/dev/null
  exit 0
fi
$PY tools/pack_seeds.py "${GIN[@]}" --seeds "$SEEDS" --out "$WORK" --deadline-s "$DEADLINE_S" \
  --grace-s "$GRACE_S" "$@" 2>&1 | tee -a "$OUT/pack.log"
cp "$WORK/mlruns.db" "$WORK/summary.json" "$OUT/" 2>/dev/null
cp "$WORK/report/table.md" "$OUT/" 2>/dev/null
tar czf "$OUT/pack.tgz" --exclude=checkpoints --exclude=mlruns.db --exclude='*.mp4' --exclude='*.gif' \
  -C "$WORK" . 2>/dev/null
ls -la "$OUT"
