#!/usr/bin/env bash
# The one prepared device check for the GPU fast path (issue 13). Run from the repo root on a lent
# GPU machine with .whl/ (scripts/fetch_gpu_wheels.sh) and .maps/ (a copy of the CARLA towns) carried:
#   bash scripts/gpu_check.sh                   # writes logs + JSON under $OUT (default /tmp/gpu_check)
#   GPU_CHECK_DRY=1 bash scripts/gpu_check.sh   # plumbing check on a CPU box: tiny sizes, current python
# Every step is time-boxed with `timeout` and the script continues past a failed step; steps.tsv
# records each step's exit status and seconds, summary.txt the figures. Budget: under 8 minutes.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-470}   # whole script, seconds (the lead has 8 minutes)
mkdir -p "$OUT"
DRY=${GPU_CHECK_DRY:-0}
PY=${PYTHON:-python3}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
rm -rf "$WORK"; mkdir -p "$WORK"
T0=$(date +%s)
export SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy MPLBACKEND=Agg NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
if [ -z "${CARLA_MAPS_DIR:-}" ]; then
  for d in .maps ../shared/carla_maps /work/shared/carla_maps; do
    [ -f "$d/Town01.xodr" ] && export CARLA_MAPS_DIR=$(cd "$d" && pwd) && break
  done
fi
if [ "$DRY" = 1 ]; then
  BUDGET=${GPU_CHECK_BUDGET_S:-2400}
  FRAMES=160; WORKERS=2; RES=320x240; IMG=64; BATCH=16; ARCH=simple_cnn; DEVICE=cpu; AMP=""; RUNS=20
  TOWNS=Town01,Town02
  T_COLLECT=240; T_TRAIN=300; T_EXPORT=120; T_BENCH=240; T_TEST=600; T_TBENCH=200
else
  FRAMES=${GPU_CHECK_FRAMES:-3000}; WORKERS=12; RES=320x240; IMG=224; BATCH=256; ARCH=efficientnet_b0; DEVICE=cuda
  AMP="--amp"; RUNS=300; TOWNS=Town01,Town02,Town03
  T_COLLECT=110; T_TRAIN=90; T_EXPORT=30; T_BENCH=60; T_TEST=100; T_TBENCH=40
fi
printf "step\trc\tseconds\n" > "$OUT/steps.tsv"

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, never abort the script
  local name=$1 limit=$2; shift 2
  local s=$(date +%s)
  local left=$(( BUDGET - (s - T0) ))
  if [ "$left" -lt 10 ]; then
    echo "=== $name SKIPPED: script budget ${BUDGET} s spent" | tee -a "$OUT/summary.txt"
    printf "%s\tskipped\t0\n" "$name" >> "$OUT/steps.tsv"; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$((s - T0)) s] $name (limit ${limit} s): $*" | tee -a "$OUT/summary.txt"
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - s ))
  printf "%s\t%s\t%s\n" "$name" "$rc" "$dt" >> "$OUT/steps.tsv"
  echo "    -> rc $rc in ${dt} s$([ $rc = 124 ] && echo ' (TIMED OUT)')" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log" | sed 's/^/    | /' >> "$OUT/summary.txt"
  return 0
}

# 1. carried wheels (the GPU box lacks carla, albumentations, pydantic, ...)
if [ "$DRY" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  step install 40 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

# 2. what is here
step env 30 $PY - <<'PY'
import importlib, json, os, platform, subprocess
mods = ["torch", "torchvision", "numpy", "cv2", "onnx", "onnxruntime", "carla", "albumentations", "scipy",
        "pydantic", "matplotlib", "sklearn", "tensorboard", "tqdm", "yaml", "pytest", "tensorrt"]
env = {"python": platform.python_version(), "maps": os.environ.get("CARLA_MAPS_DIR")}
for m in mods:
    try:
        env[m] = str(getattr(importlib.import_module(m), "__version__", "present"))
    except Exception as e:  # noqa: BLE001
        env[m] = f"MISSING ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
import torch
env["cuda"] = torch.cuda.is_available()
if env["cuda"]:
    env["gpu"] = torch.cuda.get_device_name(0)
    env["cuda_version"] = torch.version.cuda
try:
    import onnxruntime as ort
    env["ort_providers"] = ort.get_available_providers()
except Exception:
    pass
env["cpus"] = os.cpu_count()
print(json.dumps(env, indent=1))
with open(os.path.join(os.environ.get("OUT", "/tmp"), "env.json"), "w") as fh:
    json.dump(env, fh, indent=1)
import sys; sys.stdout.flush(); os._exit(0)   # skip runtime teardown (an EP's threads may hang at exit)
PY

# 4. collect on the embedded simulator
DATA=$WORK/data
step collect $T_COLLECT $PY -m carla_client.collect --sim embedded --town $TOWNS --workers $WORKERS --frames $FRAMES \
  --res $RES --out "$DATA" --no-progress --weather ClearNoon,WetNoon,CloudySunset

# 5. train 3 epochs with the GPU input pipeline (img/s per epoch, data wait, first epoch included)
RUN=$WORK/run
step train $T_TRAIN $PY -m training.train --data "$DATA" --arch $ARCH --weights none --img-size $IMG --batch-size $BATCH \
  --epochs 3 --freeze-epochs 0 --patience 0 --workers $WORKERS --device $DEVICE $AMP --gpu-augment --out "$RUN" --no-progress
CKPT=$RUN/weights/best.pt
[ -f "$RUN/history.csv" ] && cp "$RUN/history.csv" "$OUT/train_history.csv"
if [ ! -f "$CKPT" ]; then   # training failed: an untrained checkpoint still lets the latency bench run
  step random_ckpt 60 $PY -c "
from training.checkpoint import save_checkpoint; from training.models import create_model
m = create_model('$ARCH', num_classes=2, dropout=0.3, weights='none')
save_checkpoint('$WORK/random.pt', m, {'arch': '$ARCH', 'num_classes': 2, 'classes': ['curve', 'straight'], 'img_size': $IMG,
  'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'color_order': 'RGB', 'dropout': 0.3, 'recipe': {'note': 'UNTRAINED'}},
  epoch=0, metrics={})"
  CKPT=$WORK/random.pt
fi

# 6. export ONNX (parity on recorded frames)
ONNX=$WORK/model.onnx
step export $T_EXPORT $PY -m perception.export --checkpoint "$CKPT" --out "$ONNX" --frames "$DATA" --parity-frames 32

# 7. per-frame latency, every backend, torch-cuda GPU-preprocess vs CPU-preprocess in the same run
MODEL=$ONNX; BACKENDS=all
[ -f "$ONNX" ] || { MODEL=$CKPT; BACKENDS=torch-cuda; }   # no ONNX here: the ONNX-reading backends cannot run
[ "$DRY" = 1 ] && [ ! -f "$ONNX" ] && BACKENDS=all
step perception_bench $T_BENCH $PY -m perception.bench --model "$MODEL" --backends $BACKENDS --img-size $IMG --runs $RUNS \
  --json "$OUT/perception_bench.json"

# 8. GPU equivalence + frame-graph tests (they record their own small embedded datasets); skip with a reason without CUDA
step gpu_tests $T_TEST $PY -m pytest -q -rs -s -p no:cacheprovider -m gpu tests/test_gpu_preprocess.py \
  tests/test_perception_classifier.py --junitxml="$OUT/gpu_tests.xml"

# 9. training bench: model step, loader, loop data wait vs step, first-epoch costs
step training_bench $T_TBENCH $PY -m training.bench --arch $ARCH --img-size $IMG --batch-size $BATCH --device $DEVICE $AMP \
  --channels-last --steps 20 --data "$DATA" --workers $WORKERS --gpu-augment --json "$OUT/training_bench.json"

# figures in one JSON: steps, per-epoch training img/s, bench rows
$PY - <<'PY' > "$OUT/figures.log" 2>&1
import csv, json, os
out = os.environ["OUT"]
fig = {"steps": list(csv.DictReader(open(f"{out}/steps.tsv"), delimiter="\t"))}
try:
    fig["train_epochs"] = [{k: r[k] for k in ("epoch", "images_per_s", "epoch_s", "data_wait_frac", "val_acc")}
                           for r in csv.DictReader(open(f"{out}/train_history.csv"))]
except (OSError, KeyError) as e:
    fig["train_epochs"] = f"missing: {e}"
for name in ("perception_bench", "training_bench", "env"):
    try:
        fig[name] = json.load(open(f"{out}/{name}.json"))
    except (OSError, ValueError) as e:
        fig[name] = f"missing: {e}"
json.dump(fig, open(f"{out}/figures.json", "w"), indent=1)
print(json.dumps(fig["train_epochs"], indent=1))
PY
cat "$OUT/figures.log" >> "$OUT/summary.txt"
echo "=== done in $(( $(date +%s) - T0 )) s; logs and JSON in $OUT" | tee -a "$OUT/summary.txt"
cat "$OUT/steps.tsv"
