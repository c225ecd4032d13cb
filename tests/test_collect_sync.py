"""CarlaSyncMode on the embedded simulator: frame matching, paused sensors, full settings restore."""
import pytest

import carla
import carla_client
from carla_client import CarlaSyncMode


@pytest.fixture()
def world_and_camera():
    client = carla_client.connect("embedded")
    world = client.load_world("Town02")
    bl = world.get_blueprint_library()
    spawn = world.get_map().get_spawn_points()[0]
    car = world.spawn_actor(bl.filter("vehicle.*")[0], spawn)
    cam_bp = bl.find("sensor.camera.rgb")
    cam_bp.set_attribute("image_size_x", "64")
    cam_bp.set_attribute("image_size_y", "48")
    cam = world.spawn_actor(cam_bp, carla.Transform(carla.Location(x=1.5, z=2.0)), attach_to=car)
    yield world, car, cam
    cam.destroy()
    car.destroy()


def test_tick_returns_each_sensors_data_for_that_frame(world_and_camera):
    world, car, cam = world_and_camera
    with CarlaSyncMode(world, cam, fixed_delta_seconds=0.05) as sync:
        assert world.get_settings().synchronous_mode
        assert world.get_settings().fixed_delta_seconds == pytest.approx(0.05)
        car.apply_control(carla.VehicleControl(throttle=0.6))
        frames = []
        for _ in range(5):
            frame, (image,) = sync.tick(timeout=2.0)
            assert image.frame == frame
            assert len(bytes(image.raw_data)) == 64 * 48 * 4
            frames.append(frame)
        assert frames == list(range(frames[0], frames[0] + 5))
        sync.pause(cam)
        frame, (image,) = sync.tick(timeout=2.0)
        assert image is None
        sync.resume(cam)
        frame, (image,) = sync.tick(timeout=2.0)
        assert image.frame == frame


def test_exit_restores_the_full_settings_even_after_an_exception(world_and_camera):
    world, _, cam = world_and_camera
    original = world.get_settings()
    original.no_rendering_mode = False
    original.max_substeps = 7
    world.apply_settings(original)
    with pytest.raises(ZeroDivisionError):
        with CarlaSyncMode(world, cam, fps=10, no_rendering=False):
            assert world.get_settings().fixed_delta_seconds == pytest.approx(0.1)
            1 / 0
    restored = world.get_settings()
    assert restored == original
    assert restored.max_substeps == 7 and not restored.synchronous_mode
    assert not cam.is_listening()


def test_bad_delta_rejected(world_and_camera):
    world, _, cam = world_and_camera
    with pytest.raises(ValueError, match="fixed_delta_seconds"):
        CarlaSyncMode(world, cam, fixed_delta_seconds=5.0)
