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
TRAIN_TOWNS=${TRAIN_TOWNS:-Town01 Town03}
HELDOUT=${HELDOUT:-Town02,Town05}
WEATHERS=${WEATHERS:-ClearNoon,WetNoon}
FRAMES=${FRAMES:-1500}          # per training town (curve/straight balanced by the collector)
RES=${RES:-200x150}             # camera; PilotNet input 66x200, classifier 64 px
RECOVERY=${RECOVERY:-0.1}       # steering perturbations per second
EPOCHS=${EPOCHS:-10}
CLS_EPOCHS=${CLS_EPOCHS:-8}
ROUTES=${ROUTES:-2}
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

DATA=()
for town in $TRAIN_TOWNS; do
  run "$PY" -m carla_client.collect --sim embedded --town "$town" --res "$RES" --frames "$FRAMES" \
      --min-spacing 1.0 --recovery "$RECOVERY" --weather "$WEATHERS" --out "$OUT/data/$town" --no-progress
  DATA+=("$OUT/data/$town")
done
stamp "collected"

run "$PY" -m training.train --data "${DATA[@]}" --arch simple_cnn --weights none --img-size 64 \
    --epochs "$CLS_EPOCHS" --freeze-epochs 0 --batch-size 64 --lr 1e-3 --workers 0 --no-progress --out "$OUT/classifier"
stamp "classifier trained"
for subset in curve straight all; do
  name=$subset; [ "$subset" = all ] && name=monolithic
  run "$PY" -m training.train_policy --data "${DATA[@]}" --subset "$subset" --arch pilotnet --epochs "$EPOCHS" \
      --patience 3 --batch-size 64 --out "$OUT/policy/$name"
done
stamp "policies trained"

run "$PY" -m launch.study run --towns "$HELDOUT" --weathers "$WEATHERS" --routes "$ROUTES" \
    --classifier "$OUT/classifier/weights/best.pt" --curve "$OUT/policy/curve/weights/best.pt" \
    --straight "$OUT/policy/straight/weights/best.pt" --monolithic "$OUT/policy/monolithic/weights/best.pt" \
    --route-length "$ROUTE_LENGTH" --max-duration "$MAX_DURATION" --longitudinal "$LONGITUDINAL" --out "$OUT/study"
stamp "study done: $OUT/study/report.md"
