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


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _idle_host_for_cpu_tuning(monkeypatch):
    """The CPU tuning's busy-host check sees an idle host: whether a cached decision is reused must not depend
    on what else runs beside the tests (tests/test_perception_cpu_tune.py injects busy hosts itself)."""
    from perception import cpu_tune
    monkeypatch.setattr(cpu_tune, "other_runnable", lambda *a, **k: 0.0)


# ---------------------------------------------------------------------------------------- test layers
# `pytest -m unit` (no simulator, seconds), `-m sim` (the embedded simulator), `-m slow` (training, export
# and whole pipelines). A module may set its own `pytestmark`; otherwise this table decides, and a module
# not listed counts as `sim` (the safe guess: it is left out of the quick unit run).
LAYER_OF_MODULE = {
    "unit": ("test_collect_writer", "test_control_gates", "test_controller", "test_datasets", "test_labels",
             "test_launch_units", "test_layers", "test_perception_tensorrt",
             "test_planner", "test_preprocess", "test_control_experts"),
    "slow": ("test_training", "test_training_ddp", "test_quickstart", "test_perception_support", "test_perception_classifier",
             "test_tensorrt_rtx", "test_perception_export"),
}
_LAYERS = ("unit", "sim", "slow")


def pytest_collection_modifyitems(config, items):
    import pytest

    by_module = {m: layer for layer, mods in LAYER_OF_MODULE.items() for m in mods}
    for item in items:
        if any(item.get_closest_marker(layer) for layer in _LAYERS):
            continue
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        item.add_marker(getattr(pytest.mark, by_module.get(module, "sim")))
