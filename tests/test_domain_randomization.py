"""Domain randomisation of the embedded renderer and its collector hook (issue 14)."""
from __future__ import annotations

import numpy as np
import pytest

import carla
from carla_client.labels import LabelParams, label_at
from carla_client.randomize import (MANIFEST_COLUMNS_DR, DomainRandomizationUnsupported, apply_domain_randomization,
                                    check_domain_randomization)
from carla_embedded import Client
from carla_embedded.randomization import CameraJitter, DomainRandomization, RandomizationConfig

MOUNT = carla.Transform(carla.Location(x=1.5, z=2.0))


@pytest.fixture(scope="module")
def scene():
    client = Client()
    world = client.load_world("Town02")
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    lib = world.get_blueprint_library()
    vehicle = world.spawn_actor(lib.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[3])
    cam_bp = lib.find("sensor.camera.rgb")
    for k, v in (("image_size_x", "96"), ("image_size_y", "64"), ("fov", "90")):
        cam_bp.set_attribute(k, v)
    camera = world.spawn_actor(cam_bp, MOUNT, attach_to=vehicle)
    frames = []
    camera.listen(frames.append)
    yield world, vehicle, cam_bp, frames
    camera.destroy()
    vehicle.destroy()


def _shot(world, frames) -> np.ndarray:
    frames.clear()
    world.tick()
    img = frames[-1]
    return np.frombuffer(img.raw_data, np.uint8).reshape(img.height, img.width, 4)[..., :3].copy()


def _stats(img: np.ndarray) -> np.ndarray:
    return np.concatenate([img.reshape(-1, 3).mean(0), img.reshape(-1, 3).std(0)])


def test_randomisation_changes_colours_and_off_is_identical(scene):
    world, vehicle, cam_bp, frames = scene
    rng = np.random.default_rng(0)
    cfg = RandomizationConfig(appearance_period=1)
    off = apply_domain_randomization(world, cam_bp, rng, None)
    assert off == {}
    base_a, base_b = _shot(world, frames), _shot(world, frames)
    assert np.array_equal(base_a, base_b)           # off: same pose, same image
    rec_a = apply_domain_randomization(world, cam_bp, rng, cfg)
    img_a = _shot(world, frames)
    rec_b = apply_domain_randomization(world, cam_bp, rng, cfg)
    img_b = _shot(world, frames)
    assert vehicle.get_transform().location == vehicle.get_transform().location
    assert np.abs(_stats(img_a) - _stats(img_b)).max() > 3.0      # colour statistics differ
    assert np.abs(_stats(img_a) - _stats(base_a)).max() > 3.0
    assert rec_a["dr_road_b"] != rec_b["dr_road_b"] and rec_a["dr_cam_fov"] != rec_b["dr_cam_fov"]
    assert set(rec_a) == set(MANIFEST_COLUMNS_DR) and rec_a["dr"] == 1 and rec_a["dr_cam_fov_nominal"] == 90.0
    for key, (lo, hi) in (("dr_cam_fov", cfg.camera_fov_deg), ("dr_cam_dz", cfg.camera_height_m),
                          ("dr_cam_dpitch", cfg.camera_pitch_deg), ("dr_clutter_keep", cfg.clutter_keep)):
        assert lo <= rec_a[key] <= hi, key
    # switched off again: bit-identical to never randomised
    apply_domain_randomization(world, cam_bp, rng, RandomizationConfig(enabled=False))
    assert np.array_equal(_shot(world, frames), base_a)


def _label(world, vehicle) -> tuple[str, float]:
    """The collector's labelling: project the vehicle on its route, label the lookahead from the map."""
    from carla_client.planner import GlobalRoutePlanner
    from carla_client.route import RoutePath
    tf = vehicle.get_transform()
    path = RoutePath.from_route(GlobalRoutePlanner(world.get_map(), 2.0).random_route(tf.location, 80.0,
                                                                                     np.random.default_rng(3)))
    s0, _, _ = path.project(tf.location.x, tf.location.y)
    ev = label_at(path, s0, LabelParams())
    return (ev.label if ev else None), round(path.length, 3)


def test_labels_unchanged_under_mount_jitter(scene):
    """Labels come from the vehicle's pose on the map; the jitter moves only the rendered camera."""
    world, vehicle, cam_bp, frames = scene
    plain = _shot(world, frames)
    label_off = _label(world, vehicle)
    jit = CameraJitter(dx=0.2, dy=-0.2, dz=0.5, dpitch=-5, dyaw=3, droll=2, fov=100)
    world.set_domain_randomization(DomainRandomization(RandomizationConfig(), camera=jit))
    try:
        jittered = _shot(world, frames)
        label_on = _label(world, vehicle)
    finally:
        world.set_domain_randomization(None)
    assert label_on == label_off
    assert not np.array_equal(plain, jittered)                    # the view moved
    sensor = frames[-1].transform                                 # the sensor itself stays as mounted
    assert sensor.location.z == pytest.approx(vehicle.get_transform().transform(MOUNT.location).z, abs=1e-3)
    cam, fov = jit.apply(sensor, 90.0)
    assert fov == 100 and cam.location.z == pytest.approx(sensor.location.z + 0.5)
    assert cam.rotation.pitch == pytest.approx(sensor.rotation.pitch - 5)


def test_refused_on_a_real_carla_world():
    class FakeCarlaWorld:  # a carla.World has no embedded hook
        pass
    with pytest.raises(DomainRandomizationUnsupported, match="--sim embedded"):
        check_domain_randomization(FakeCarlaWorld(), RandomizationConfig())
    with pytest.raises(DomainRandomizationUnsupported):
        apply_domain_randomization(FakeCarlaWorld(), None, np.random.default_rng(0), RandomizationConfig())
    assert apply_domain_randomization(FakeCarlaWorld(), None, np.random.default_rng(0), None) == {}


@pytest.mark.parametrize("kwargs", [{"camera_fov_deg": (100.0, 80.0)}, {"camera_fov_deg": (10.0, 190.0)},
                                    {"clutter_keep": (0.5, 1.5)}, {"appearance_period": 0}])
def test_bad_ranges_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RandomizationConfig(**kwargs)
