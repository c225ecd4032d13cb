"""Test-wide set-up: the CARLA towns beside the checkout, headless SDL and matplotlib."""
import os
from pathlib import Path

_shared_maps = Path(__file__).resolve().parents[2] / "shared" / "carla_maps"
if "CARLA_MAPS_DIR" not in os.environ and _shared_maps.is_dir():
    os.environ["CARLA_MAPS_DIR"] = str(_shared_maps)
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("MPLBACKEND", "Agg")
# Perception caches (ONNX exports, measured CPU decisions) go to a per-run temp dir, never the user's.
if "CARLA_PERCEPTION_CACHE" not in os.environ:
    import tempfile
    os.environ["CARLA_PERCEPTION_CACHE"] = tempfile.mkdtemp(prefix="perception-cache-")
