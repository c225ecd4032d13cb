"""The embedded simulator sets OpenCV's thread count once when its renderer starts ($CARLA_EMBEDDED_THREADS)."""
from __future__ import annotations

import cv2
import pytest

from carla_embedded import Client
from carla_embedded.threads import ENV, render_threads


@pytest.fixture()
def restore_cv2_threads():
    before = cv2.getNumThreads()
    yield
    cv2.setNumThreads(before)


def _start_renderer():
    world = Client(seed=0).load_world("Embedded01")
    lib = world.get_blueprint_library()
    import carla
    car = world.spawn_actor(lib.filter("vehicle.*")[0], world.get_map().get_spawn_points()[0])
    bp = lib.find("sensor.camera.rgb")
    bp.set_attribute("image_size_x", "32")
    bp.set_attribute("image_size_y", "24")
    cam = world.spawn_actor(bp, carla.Transform(carla.Location(x=1.5, z=2.0)), attach_to=car)
    cam.listen(lambda image: None)
    world.tick()


@pytest.mark.parametrize("env, want", [(None, 1), ("3", 3), ("1", 1)])
def test_renderer_sets_opencv_threads(env, want, monkeypatch, restore_cv2_threads):
    if env is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, env)
    cv2.setNumThreads(7)
    _start_renderer()
    assert cv2.getNumThreads() == want


def test_zero_leaves_the_callers_setting(monkeypatch, restore_cv2_threads):
    monkeypatch.setenv(ENV, "0")
    cv2.setNumThreads(5)
    _start_renderer()
    assert cv2.getNumThreads() == 5


@pytest.mark.parametrize("bad", ["-1", "two", "1.5"])
def test_bad_value_names_the_variable(bad, monkeypatch):
    monkeypatch.setenv(ENV, bad)
    with pytest.raises(ValueError, match=rf"{ENV}='{bad}': want a non-negative integer"):
        render_threads()
