#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with the project installed (editable) and its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum setup.py | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  # torch first, pinned, so pip does not pick an unrelated (multi-GB) build
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[dev]"
  # onnxruntime and onnxruntime-openvino write the same package: if an older install left the
  # plain build beside the OpenVINO one, drop it and restore the OpenVINO build's files.
  if .venv/bin/python -m pip show -q onnxruntime-openvino >/dev/null 2>&1 &&
     .venv/bin/python -m pip show -q onnxruntime >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y onnxruntime
    .venv/bin/python -m pip install -q --force-reinstall --no-deps onnxruntime-openvino
  fi
  touch "$stamp"
fi
# The CARLA towns: ../shared/carla_maps beside the checkout unless the user says otherwise.
if [ -z "${CARLA_MAPS_DIR:-}" ] && [ -d ../shared/carla_maps ]; then
  echo "export CARLA_MAPS_DIR=$(cd ../shared/carla_maps && pwd)" > .venv/maps.env
fi
