"""The embedded simulator sets OpenCV's thread count once when its renderer starts ($CARLA_EMBEDDED_THREADS)."""
from __future__ import annotations

import cv2
import pytest

from carla_embedded import Client
from carla_embedded import threads
from carla_embedded.threads import ENV, render_threads


@pytest.fixture()
def restore_cv2_threads():
    before = cv2.getNumThreads()
    yield
    cv2.setNumThreads(before)


def _start_renderer(size=(32, 24), ticks=1, sink=None):
    world = Client(seed=0).load_world("Embedded01")
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    lib = world.get_blueprint_library()
    import carla
    car = world.spawn_actor(lib.filter("vehicle.*")[0], world.get_map().get_spawn_points()[0])
    bp = lib.find("sensor.camera.rgb")
    bp.set_attribute("image_size_x", str(size[0]))
    bp.set_attribute("image_size_y", str(size[1]))
    cam = world.spawn_actor(bp, carla.Transform(carla.Location(x=1.5, z=2.0)), attach_to=car)
    cam.listen(lambda image: None if sink is None else sink.append(bytes(image.raw_data)))
    car.apply_control(carla.VehicleControl(throttle=0.6))
    for _ in range(ticks):
        world.tick()


@pytest.mark.parametrize("env, want", [(None, min(2, threads.usable_cpus())), ("3", 3), ("1", 1)])
def test_renderer_sets_opencv_threads(env, want, monkeypatch, restore_cv2_threads):
    if env is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, env)
    cv2.setNumThreads(7)
    _start_renderer()
    assert cv2.getNumThreads() == want


def test_default_is_one_thread_when_the_process_may_use_one_cpu(monkeypatch, restore_cv2_threads):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 1)      # as under `taskset -c 0`
    cv2.setNumThreads(7)
    _start_renderer()
    assert cv2.getNumThreads() == 1


def test_images_do_not_depend_on_the_thread_count(monkeypatch, restore_cv2_threads):
    """The default differs between machines (one CPU or more), so the pixels must not."""
    frames = {}
    for n in ("1", "2", "3"):
        monkeypatch.setenv(ENV, n)
        frames[n] = []
        _start_renderer(size=(400, 300), ticks=6, sink=frames[n])
    assert len(frames["1"]) == 6
    assert frames["2"] == frames["1"] and frames["3"] == frames["1"]


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


@pytest.mark.parametrize("code, env, want", [
    ("import carla_embedded", None, "0"),
    ("import launch", None, "0"),
    ("import cv2, carla_embedded", None, None),           # OpenCV already read it: not pretended
    ("import cv2, launch", None, None),                   # the loop applies the same rule
    ("import carla_embedded", "500", "500"),              # the user's value wins
])
def test_opencv_idle_workers_sleep_unless_the_user_says_otherwise(code, env, want):
    """OpenCV reads its pool's spin setting once, when it loads: set before that, or not at all."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    from carla_embedded.threads import WORKER_WAIT_ENV
    environ = {k: v for k, v in os.environ.items() if k != WORKER_WAIT_ENV}
    if env is not None:
        environ[WORKER_WAIT_ENV] = env
    out = subprocess.run([sys.executable, "-c", f"{code}; import os; print(os.environ.get({WORKER_WAIT_ENV!r}))"],
                         capture_output=True, text=True, env=environ, cwd=Path(__file__).resolve().parents[1],
                         check=True).stdout.split()[-1]
    assert out == str(want)
