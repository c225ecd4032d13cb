#!/usr/bin/env bash
# The README's main-job command: set up (idempotent), then collect -> train -> export -> evaluate
# on the embedded simulator. Extra arguments go to `python -m launch.quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
[ -f .venv/maps.env ] && . .venv/maps.env
export SDL_VIDEODRIVER=${SDL_VIDEODRIVER:-dummy} MPLBACKEND=Agg
exec .venv/bin/python -m launch.quickstart "$@"
