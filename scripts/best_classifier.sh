#!/usr/bin/env bash
# The best offline classifier measured here (training/README.md, session 4, run F):
# EfficientNet-Lite0 from the packaged ImageNet weights on 8000 embedded frames from Town01, 03, 04
# and 05 (Town02 held out for the test), then evaluated on the real CARLA frames when they are there.
# About 50 min on a 2-core CPU: collecting 2 x 4000 frames ~10 min each, training ~28 min.
#   bash scripts/best_classifier.sh [OUT]          (default OUT: runs/best_classifier)
# Both collections resume if interrupted. FRAMES=N (per collection) and EPOCHS=N shrink it for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/best_classifier}
bash scripts/setup_env.sh
[ -f .venv/maps.env ] && . .venv/maps.env
export MPLBACKEND=Agg
PY=.venv/bin/python
PRESETS=ClearNoon,CloudySunset,WetNoon,HardRainNoon,ClearSunset
FRAMES=${FRAMES:-4000}
EPOCHS=${EPOCHS:-6}
# 1. the quickstart's collection (Town02 in it is the test town)
$PY -m carla_client.collect --town Town01,Town03,Town04,Town02 --frames $FRAMES --weather $PRESETS \
    --min-spacing 3 --episode-length 150 --seed 0 --workers 2 --out "$OUT/data_a"
# 2. as many frames again from the training towns and Town05, another seed (one worker, as run E)
$PY -m carla_client.collect --town Town01,Town03,Town04,Town05 --frames $FRAMES --weather $PRESETS \
    --min-spacing 3 --episode-length 150 --seed 7 --workers 1 --out "$OUT/data_b"
$PY -m training.train --data "$OUT/data_a" "$OUT/data_b" --arch efficientnet_lite0 --weights imagenet \
    --img-size 128 --batch-size 32 --epochs $EPOCHS --patience 3 --lr 3e-4 --lr-schedule cosine \
    --freeze-epochs 1 --unfreeze-blocks -1 --test-towns Town02 --workers 0 --out "$OUT/train"
if [ -d ../shared/real_carla ]; then
  $PY -m training.evaluate --checkpoint "$OUT/train/weights/best.pt" --data ../shared/real_carla \
      --workers 0 --out "$OUT/real_carla"
fi
