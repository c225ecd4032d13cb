#!/usr/bin/env bash
# The MoE-vs-monolithic study on a CPU, end to end, on the embedded simulator at small input sizes:
#   collect (training towns) -> train classifier + curve/straight/monolithic policies -> study on
#   held-out towns -> report (runs/study_cpu/study/report.md).
# Every knob is an environment variable (defaults below); e.g. a quick plumbing run:
#   FRAMES=400 EPOCHS=2 ROUTES=1 bash scripts/study_cpu.sh
# Needs the collector that writes the policy columns (command, recovery, route_dependent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/study_cpu}
TRAIN_TOWNS=${TRAIN_TOWNS:-Town01,Town03,Town04}
HELDOUT=${HELDOUT:-Town02,Town05}
WEATHERS=${WEATHERS:-ClearNoon,WetNoon}
FRAMES=${FRAMES:-6000}          # all training towns together (curve/straight balanced by the collector)
RES=${RES:-200x150}             # camera; PilotNet input 66x200, classifier 64 px
RECOVERY=${RECOVERY:-0.3}       # steering perturbations per second
EPOCHS=${EPOCHS:-12}
PATIENCE=${PATIENCE:-4}
DAGGER=${DAGGER:-0}             # DAgger rounds for the monolithic policy (its data then feeds the experts too)
DAGGER_FRAMES=${DAGGER_FRAMES:-1000}
CLS_EPOCHS=${CLS_EPOCHS:-8}
ROUTES=${ROUTES:-3}
ROUTE_LENGTH=${ROUTE_LENGTH:-150}
MAX_DURATION=${MAX_DURATION:-40}
LONGITUDINAL=${LONGITUDINAL:-cruise}  # learned: throttle/brake from the networks too (weak at this data size)
NICE=${NICE:-10}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # a shared 2-core machine: one thread per process
export SDL_VIDEODRIVER=${SDL_VIDEODRIVER:-dummy} SDL_AUDIODRIVER=${SDL_AUDIODRIVER:-dummy} MPLBACKEND=Agg
run() { echo "+ $*" >&2; nice -n "$NICE" "$@"; }
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/timing.txt"; }
mkdir -p "$OUT"
: > "$OUT/timing.txt"

DATA="$OUT/data"
run "$PY" -m carla_client.collect --sim embedded --town "$TRAIN_TOWNS" --res "$RES" --frames "$FRAMES" \
    --min-spacing 1.0 --recovery "$RECOVERY" --weather "$WEATHERS" --workers 2 --out "$DATA" --no-progress
stamp "collected"

# Two cores: two single-threaded trainings at a time (classifier beside the monolithic policy, then the experts).
policy() {  # policy NAME SUBSET [extra args]: a command-conditioned PilotNet on DATA (+ DAgger rounds' data)
  local name=$1 subset=$2; shift 2
  run "$PY" -m training.train_policy --data "$DATA" "${EXTRA_DATA[@]}" --subset "$subset" --arch pilotnet \
      --epochs "$EPOCHS" --patience "$PATIENCE" --batch-size 64 --no-tensorboard --out "$OUT/policy/$name" "$@"
}
EXTRA_DATA=()
run "$PY" -m training.train --data "$DATA" --arch simple_cnn --weights none --img-size 64 \
    --epochs "$CLS_EPOCHS" --freeze-epochs 0 --batch-size 64 --lr 1e-3 --workers 0 --no-progress \
    --out "$OUT/classifier" > "$OUT/classifier.log" 2>&1 &
cls=$!
policy monolithic all --dagger "$DAGGER" --dagger-frames "$DAGGER_FRAMES"
wait $cls
stamp "classifier and monolithic policy trained"
# The experts get the same frames as the monolithic policy, DAgger rounds included.
for d in "$OUT"/policy/monolithic/dagger/r*; do [ -d "$d" ] && EXTRA_DATA+=("$d"); done
policy curve curve > "$OUT/policy_curve.log" 2>&1 &
cur=$!
policy straight straight
wait $cur
stamp "experts trained"

run "$PY" -m launch.study run --towns "$HELDOUT" --weathers "$WEATHERS" --routes "$ROUTES" \
    --classifier "$OUT/classifier/weights/best.pt" --curve "$OUT/policy/curve/weights/best.pt" \
    --straight "$OUT/policy/straight/weights/best.pt" --monolithic "$OUT/policy/monolithic/weights/best.pt" \
    --route-length "$ROUTE_LENGTH" --max-duration "$MAX_DURATION" --longitudinal "$LONGITUDINAL" --out "$OUT/study"
stamp "study done: $OUT/study/report.md"
