"""Sensors of the embedded simulator: cameras (RGB, depth, semantic), collision, obstacle, GNSS, IMU,
lidar and radar give carla's data types with the right shapes, units and plausible values, and
other actors appear in every camera at their true place.

Scene: Embedded01's road 1, lane -1 is a 60 m straight heading +x at y = 1.75 (see test_embedded_sim).
"""
import math

import numpy as np
import pytest

import carla
from carla_embedded import UnsupportedFeatureError
from carla_embedded.actors import Actor
from carla_embedded.sensors import (CITYSCAPES_PALETTE, TAG_CAR, TAG_PEDESTRIANS, TAG_ROADLINES, TAG_ROADS, TAG_SKY,
                                    TAG_TRAFFIC_LIGHT, UNMODELLED_CAMERA_ATTRIBUTES, CollisionEvent, GnssMeasurement,
                                    IMUMeasurement, LidarMeasurement, ObstacleDetectionEvent, RadarMeasurement,
                                    decode_depth, encode_depth)
from tests.sim_world import DT, sync_world

W, H, FOV = 200, 150, 90.0
F = W / (2 * math.tan(math.radians(FOV) / 2))      # focal length, px
CAM = carla.Transform(carla.Location(x=1.5, z=2.0))  # on the ego, as the collector mounts it


@pytest.fixture
def world():
    return sync_world("Embedded01", DT)[1]


def on_lane(world, x, z=0.5, yaw=None):
    t = world.get_map().get_waypoint(carla.Location(x=x, y=1.75)).transform
    return carla.Transform(carla.Location(t.location.x, t.location.y, z),
                           carla.Rotation(yaw=t.rotation.yaw if yaw is None else yaw))


def spawn(world, bp_id, transform, parent=None, **attributes):
    bp = world.get_blueprint_library().find(bp_id)
    for name, value in attributes.items():
        bp.set_attribute(name, str(value))
    return world.spawn_actor(bp, transform, attach_to=parent)


def listen(sensor) -> list:
    data = []
    sensor.listen(data.append)
    return data


def camera(world, ego, bp_id, transform=CAM, **attributes):
    attributes = {"image_size_x": W, "image_size_y": H, "fov": FOV, **attributes}
    cam = spawn(world, bp_id, transform, ego, **attributes)
    return cam, listen(cam)


def pixels(image) -> np.ndarray:
    return np.frombuffer(image.raw_data, np.uint8).reshape(image.height, image.width, 4)


def project(world_point, camera_transform):
    """(u, v, planar depth) of a world point in a W x H camera (CARLA's pinhole)."""
    inv = np.array(camera_transform.get_inverse_matrix())
    x, y, z, _ = inv @ np.array([world_point.x, world_point.y, world_point.z, 1.0])
    return W / 2 + F * y / x, H / 2 - F * z / x, x


@pytest.fixture
def ego(world):
    return spawn(world, "vehicle.tesla.model3", on_lane(world, 5.0))


# -- blueprints ------------------------------------------------------------------------------
CARLA_0914_RGB_ATTRIBUTES = {
    "bloom_intensity", "black_clip", "blade_count", "blur_amount", "blur_radius", "calibration_constant",
    "chromatic_aberration_intensity", "chromatic_aberration_offset", "enable_postprocess_effects",
    "exposure_compensation", "exposure_max_bright", "exposure_min_bright", "exposure_mode", "exposure_speed_down",
    "exposure_speed_up", "focal_distance", "fov", "fstop", "gamma", "image_size_x", "image_size_y", "iso",
    "lens_circle_falloff", "lens_circle_multiplier", "lens_flare_intensity", "lens_k", "lens_kcube", "lens_x_size",
    "lens_y_size", "min_fstop", "motion_blur_intensity", "motion_blur_max_distortion",
    "motion_blur_min_object_screen_size", "role_name", "sensor_tick", "shoulder", "shutter_speed", "slope", "temp",
    "tint", "toe", "white_clip"}


@pytest.mark.parametrize("bp_id, names", [
    ("sensor.camera.rgb", CARLA_0914_RGB_ATTRIBUTES),
    ("sensor.camera.depth", {"fov", "image_size_x", "image_size_y", "lens_circle_falloff", "lens_circle_multiplier",
                             "lens_k", "lens_kcube", "lens_x_size", "lens_y_size", "role_name", "sensor_tick"}),
    ("sensor.camera.semantic_segmentation", {"fov", "image_size_x", "image_size_y", "lens_k", "sensor_tick"}),
    ("sensor.lidar.ray_cast", {"channels", "range", "points_per_second", "rotation_frequency", "upper_fov",
                               "lower_fov", "horizontal_fov", "atmosphere_attenuation_rate", "dropoff_general_rate",
                               "dropoff_intensity_limit", "dropoff_zero_intensity", "noise_stddev", "sensor_tick"}),
    ("sensor.other.radar", {"horizontal_fov", "vertical_fov", "range", "points_per_second", "sensor_tick"}),
    ("sensor.other.obstacle", {"distance", "hit_radius", "only_dynamics", "debug_linetrace", "sensor_tick"}),
    ("sensor.other.gnss", {"noise_alt_bias", "noise_alt_stddev", "noise_lat_bias", "noise_lat_stddev",
                           "noise_lon_bias", "noise_lon_stddev", "noise_seed", "sensor_tick"}),
    ("sensor.other.imu", {"noise_accel_stddev_x", "noise_gyro_bias_z", "noise_gyro_stddev_y", "noise_seed",
                          "sensor_tick"}),
    ("sensor.other.collision", {"role_name"}),
])
def test_sensor_blueprints_have_carla_0914_attributes(world, bp_id, names):
    bp = world.get_blueprint_library().find(bp_id)
    assert names <= {a.id for a in bp}
    assert all(a.is_modifiable for a in bp)
    assert world.get_blueprint_library().filter("sensor.other.*")


def test_unmodelled_camera_attributes_are_accepted_and_recorded(world, ego):
    cam = spawn(world, "sensor.camera.rgb", CAM, ego, lens_circle_multiplier=3.0, bloom_intensity=0.675,
                exposure_mode="manual", image_size_x=W, image_size_y=H)
    assert cam.unmodelled_attributes == {"lens_circle_multiplier": "3.0", "exposure_mode": "manual"}
    assert "lens_circle_multiplier" in UNMODELLED_CAMERA_ATTRIBUTES and "gamma" not in UNMODELLED_CAMERA_ATTRIBUTES


def test_gamma_is_applied(world, ego):
    _, plain = camera(world, ego, "sensor.camera.rgb")
    _, bright = camera(world, ego, "sensor.camera.rgb", gamma=4.0)
    world.tick()
    a, b = pixels(plain[-1])[..., :3].astype(int), pixels(bright[-1])[..., :3].astype(int)
    assert (b >= a).all() and (b - a).mean() > 10


def test_sensor_tick_is_honoured(world, ego):
    _, every = camera(world, ego, "sensor.camera.semantic_segmentation")
    _, slow = camera(world, ego, "sensor.camera.depth", sensor_tick=0.1)
    imu = listen(spawn(world, "sensor.other.imu", carla.Transform(), ego, sensor_tick=0.2))
    for _ in range(8):
        world.tick()
    assert len(every) == 8 and len(slow) == 4 and len(imu) == 2
    assert [i.frame for i in slow] == [1, 3, 5, 7]


# -- semantic and depth cameras ------------------------------------------------------------------
def test_semantic_camera_tags_road_and_sky(world, ego):
    _, images = camera(world, ego, "sensor.camera.semantic_segmentation")
    world.tick()
    image = images[-1]
    assert (image.width, image.height, image.fov, image.frame) == (W, H, FOV, 1)
    px = pixels(image)
    tags = px[..., 2]
    assert (px[..., 0] == 0).all() and (px[..., 1] == 0).all() and (px[..., 3] == 255).all()
    assert set(np.unique(tags)) <= set(int(v) for v in carla.CityObjectLabel.values.keys())
    assert tags[-5, W // 2] == TAG_ROADS                       # the lane just ahead of the car
    assert (tags[:5] == TAG_SKY).mean() > 0.5
    assert (tags == TAG_ROADLINES).any()                      # lane markings of the road
    image.convert(carla.ColorConverter.CityScapesPalette)
    assert tuple(pixels(image)[-5, W // 2, 2::-1]) == tuple(CITYSCAPES_PALETTE[TAG_ROADS]) == (128, 64, 128)


def test_semantic_save_to_disk_with_palette(world, ego, tmp_path):
    import cv2

    _, images = camera(world, ego, "sensor.camera.semantic_segmentation")
    world.tick()
    path = images[-1].save_to_disk(str(tmp_path / "%06d"), carla.ColorConverter.CityScapesPalette)
    saved = cv2.imread(path)
    assert path.endswith("000001.png") and tuple(saved[-5, W // 2, ::-1]) == (128, 64, 128)
    assert pixels(images[-1])[-5, W // 2, 2] == TAG_ROADS      # the image itself keeps its raw tags


def test_depth_camera_gives_the_distance_of_road_points(world, ego):
    cam, images = camera(world, ego, "sensor.camera.depth")
    world.tick()
    depth = decode_depth(pixels(images[-1]))
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    t = cam.get_transform()
    ground = world.get_map().get_waypoint(t.location).transform.location.z
    height = t.location.z - ground
    for v in (H - 1, H - 20, H // 2 + 20):                       # rows of the road ahead
        expected = height * F / (v - H / 2)                       # planar depth of the ground at that row
        assert depth[v, W // 2] == pytest.approx(expected, rel=0.01)
    assert depth[0, W // 2] == pytest.approx(1000.0)             # sky: the far plane


def test_depth_converters_like_carla(world, ego):
    _, images = camera(world, ego, "sensor.camera.depth")
    world.tick()
    raw = pixels(images[-1]).copy()
    metres = decode_depth(raw)
    images[-1].convert(carla.ColorConverter.Depth)
    grey = pixels(images[-1])
    assert np.abs(grey[..., 0].astype(float) - metres / 1000.0 * 255).max() <= 0.51
    assert (grey[..., 0] == grey[..., 2]).all()
    _, log_images = camera(world, ego, "sensor.camera.depth")
    world.tick()
    log_images[-1].convert(carla.ColorConverter.LogarithmicDepth)
    m = decode_depth(raw)[-1, W // 2]
    expected = np.clip(1 + math.log(m / 1000.0) / 5.70378, 0.005, 1.0) * 255
    assert pixels(log_images[-1])[-1, W // 2, 0] == pytest.approx(expected, abs=1)
    with pytest.raises(UnsupportedFeatureError, match="CityScapesPalette"):
        log_images[-1].convert(carla.ColorConverter.CityScapesPalette)


def test_depth_encoding_round_trip():
    depth = np.array([[0.0, 0.5, 7.25, 999.0, 1000.0, 5000.0]], np.float32)
    assert np.allclose(decode_depth(encode_depth(depth)), np.minimum(depth, 1000.0), atol=1e-4)


# -- other actors in the cameras -----------------------------------------------------------------
def test_vehicle_ahead_appears_in_rgb_semantic_and_depth(world, ego):
    rgb_cam, rgb = camera(world, ego, "sensor.camera.rgb")
    _, sem = camera(world, ego, "sensor.camera.semantic_segmentation")
    _, dep = camera(world, ego, "sensor.camera.depth")
    world.tick()
    empty = pixels(rgb[-1])[..., :3].astype(int)
    other = spawn(world, "vehicle.audi.a2", on_lane(world, 20.0))
    world.tick()
    e = other.bounding_box.extent
    t = other.get_transform()
    rear = t.transform(carla.Location(-e.x, 0.0, 0.0))
    ground = world.get_map().get_waypoint(rear).transform.location.z
    u, v, expected_depth = project(carla.Location(rear.x, rear.y, ground + e.z), rgb_cam.get_transform())
    u, v = int(u), int(v)
    tags = pixels(sem[-1])[..., 2]
    depth = decode_depth(pixels(dep[-1]))
    assert tags[v, u] == TAG_CAR
    assert depth[v, u] == pytest.approx(expected_depth, rel=0.02)
    car_rows, car_cols = np.nonzero(tags == TAG_CAR)
    assert abs(car_cols.mean() - u) < 3                        # centred where the car is
    # Width on screen = the car's width at its distance.
    assert car_cols.max() - car_cols.min() + 1 == pytest.approx(F * 2 * e.y / expected_depth, abs=2)
    changed = np.abs(pixels(rgb[-1])[..., :3].astype(int) - empty).sum(axis=2) > 30
    assert changed[v, u] and changed[tags == TAG_CAR].mean() > 0.9
    other.destroy()
    world.tick()
    assert not (pixels(sem[-1])[..., 2] == TAG_CAR).any()


def test_nearer_vehicle_hides_the_one_behind(world, ego):
    low = carla.Transform(carla.Location(x=1.5, z=1.2))          # below the roofs: the far car is hidden
    _, sem = camera(world, ego, "sensor.camera.semantic_segmentation", low)
    _, dep = camera(world, ego, "sensor.camera.depth", low)
    spawn(world, "vehicle.tesla.model3", on_lane(world, 16.0))
    spawn(world, "vehicle.audi.a2", on_lane(world, 30.0))     # smaller and farther: wholly behind
    world.tick()
    tags, depth = pixels(sem[-1])[..., 2], decode_depth(pixels(dep[-1]))
    car = tags == TAG_CAR
    near_rear, near_front = 16.0 - 2.40 - (5.0 + 1.5), 16.0 + 2.40 - (5.0 + 1.5)   # minus the camera's x
    far_rear = 30.0 - 1.86 - (5.0 + 1.5)
    assert car.any() and depth[car].min() == pytest.approx(near_rear, abs=0.05)
    assert depth[car].max() < near_front < far_rear              # no pixel of the far car shows


def test_walkers_and_traffic_lights_held_by_the_world_appear(world, ego):
    """Any actor the world holds (added by other code) is drawn with its CARLA tag."""
    walker = Actor(world, 900, "walker.pedestrian.0001", on_lane(world, 15.0, z=0.0), extent=(0.3, 0.3, 0.9))
    light = Actor(world, 901, "traffic.traffic_light", carla.Transform(carla.Location(x=25.0, y=-1.0)))
    world._add(walker)
    world._add(light)
    cam, sem = camera(world, ego, "sensor.camera.semantic_segmentation")
    world.tick()
    tags = pixels(sem[-1])[..., 2]
    u, v, _ = project(carla.Location(15.0 - 0.3, 1.75, world.get_map().get_waypoint(ego.get_location())
                                     .transform.location.z + 0.9), cam.get_transform())
    assert tags[int(v), int(u)] == TAG_PEDESTRIANS
    assert (tags == TAG_TRAFFIC_LIGHT).sum() > 20


def test_a_teleported_traffic_light_is_seen_at_its_new_place(world, ego):
    """Boxes of actors that never move by themselves are kept between ticks: a teleport must still show."""
    light = Actor(world, 902, "traffic.traffic_light", carla.Transform(carla.Location(x=25.0, y=-1.0)))
    world._add(light)
    cam, sem = camera(world, ego, "sensor.camera.semantic_segmentation")
    z = world.get_map().get_waypoint(ego.get_location()).transform.location.z
    seen = []
    for y in (-1.0, -1.0, 5.0):                          # two ticks in place, then moved across the road
        light.set_transform(carla.Transform(carla.Location(x=25.0, y=y)))
        world.tick()
        cols = np.nonzero(pixels(sem[-1])[..., 2] == TAG_TRAFFIC_LIGHT)[1]
        u, _, _ = project(carla.Location(25.0, y, z + 2.0), cam.get_transform())
        seen.append((len(cols), cols.mean() - u if len(cols) else None))
    assert all(n > 20 and abs(off) < 3 for n, off in seen), seen


def test_chase_camera_sees_its_own_car_but_a_mounted_one_does_not(world, ego):
    _, mounted = camera(world, ego, "sensor.camera.semantic_segmentation")
    _, chase = camera(world, ego, "sensor.camera.semantic_segmentation",
                      carla.Transform(carla.Location(x=-5.5, z=2.5), carla.Rotation(pitch=8.0)))
    world.tick()
    assert not (pixels(mounted[-1])[..., 2] == TAG_CAR).any()
    assert (pixels(chase[-1])[..., 2] == TAG_CAR).mean() > 0.05


def test_rolled_camera_rotates_the_labels(world, ego):
    _, level = camera(world, ego, "sensor.camera.semantic_segmentation")
    _, rolled = camera(world, ego, "sensor.camera.semantic_segmentation",
                       carla.Transform(CAM.location, carla.Rotation(roll=90.0)))
    world.tick()
    a, b = pixels(level[-1])[..., 2] == TAG_SKY, pixels(rolled[-1])[..., 2] == TAG_SKY
    assert a[: H // 2].mean() - a[H // 2:].mean() > 0.3                  # level: sky on top
    assert abs(b[:, : W // 2].mean() - b[:, W // 2:].mean()) > 0.3         # rolled: sky on one side
    assert abs(b[: H // 2].mean() - b[H // 2:].mean()) < 0.15


# -- collision and obstacle --------------------------------------------------------------------
def test_collision_with_a_parked_vehicle(world, ego):
    parked = spawn(world, "vehicle.audi.a2", on_lane(world, 15.0))
    events = listen(spawn(world, "sensor.other.collision", carla.Transform(), ego))
    ego.set_target_velocity(carla.Vector3D(8.0, 0.0, 0.0))
    for _ in range(30):
        ego.apply_control(carla.VehicleControl(throttle=0.3))
        world.tick()
        if events:
            break
    assert events, "no collision event when the ego drove into the parked car"
    event = events[0]
    assert isinstance(event, CollisionEvent)
    assert event.actor is ego and event.other_actor is parked
    assert ego.get_location().x + 2.40 >= parked.get_location().x - 1.86 - 0.5
    impulse = event.normal_impulse
    assert isinstance(impulse, carla.Vector3D)
    assert impulse.x < -1000.0 and abs(impulse.y) < 1e-6       # pushes the ego back, N s
    assert event.frame == world.get_snapshot().frame and event.transform.location.distance(ego.get_location()) < 1e-3


def test_no_collision_when_clear(world, ego):
    spawn(world, "vehicle.audi.a2", on_lane(world, 25.0))
    events = listen(spawn(world, "sensor.other.collision", carla.Transform(), ego))
    for _ in range(5):
        world.tick()
    assert events == []


def test_collision_with_a_building(world, ego):
    sc = world._renderer().scenery
    building = int(np.nonzero(sc.box_kind == 0)[0][0])
    centre = sc.box_centre[building]
    events = listen(spawn(world, "sensor.other.collision", carla.Transform(), ego))
    ego.set_transform(carla.Transform(carla.Location(float(centre[0]), float(centre[1]), 0.5)))
    world.tick()
    assert events and events[0].other_actor.type_id == "static.building"


def test_obstacle_detector_finds_the_car_ahead(world, ego):
    other = spawn(world, "vehicle.audi.a2", on_lane(world, 20.0))
    events = listen(spawn(world, "sensor.other.obstacle", carla.Transform(carla.Location(x=2.4, z=0.8)), ego,
                          distance=30, hit_radius=0.5, only_dynamics=True))
    world.tick()
    assert len(events) == 1 and isinstance(events[0], ObstacleDetectionEvent)
    gap = (other.get_location().x - 1.86) - (ego.get_location().x + 2.4)
    assert events[0].other_actor is other and events[0].actor is ego
    assert events[0].distance == pytest.approx(gap - 0.5, abs=0.1)


def test_obstacle_detector_range_and_only_dynamics(world, ego):
    spawn(world, "vehicle.audi.a2", on_lane(world, 40.0))
    events = listen(spawn(world, "sensor.other.obstacle", carla.Transform(carla.Location(x=2.4, z=0.8)), ego,
                          distance=10, only_dynamics=True))
    world.tick()
    assert events == []


# -- GNSS and IMU ------------------------------------------------------------------------------
def test_gnss_follows_the_car(world, ego):
    sensor = spawn(world, "sensor.other.gnss", carla.Transform(), ego)
    data = listen(sensor)
    world.tick()
    first = data[-1]
    assert isinstance(first, GnssMeasurement)
    geo = world.get_map().transform_to_geolocation(first.transform.location)
    assert (first.latitude, first.longitude, first.altitude) == pytest.approx((geo.latitude, geo.longitude,
                                                                               geo.altitude))
    ego.set_target_velocity(carla.Vector3D(10.0, 0.0, 0.0))
    for _ in range(10):
        world.tick()
    moved = data[-1]
    assert moved.longitude != pytest.approx(first.longitude, abs=1e-7)   # heading +x: east
    assert moved.latitude == pytest.approx(first.latitude, abs=1e-6)


def test_gnss_noise_bias(world, ego):
    plain = listen(spawn(world, "sensor.other.gnss", carla.Transform(), ego))
    biased = listen(spawn(world, "sensor.other.gnss", carla.Transform(), ego, noise_lat_bias=0.001,
                          noise_alt_stddev=1.0, noise_seed=3))
    world.tick()
    assert biased[-1].latitude - plain[-1].latitude == pytest.approx(0.001)
    assert biased[-1].altitude != plain[-1].altitude


@pytest.mark.parametrize("yaw", [0.0, 90.0, -90.0, 180.0])
def test_imu_compass_follows_the_yaw(world, yaw):
    car = spawn(world, "vehicle.tesla.model3", on_lane(world, 20.0, yaw=yaw))
    data = listen(spawn(world, "sensor.other.imu", carla.Transform(), car))
    world.tick()
    m = data[-1]
    assert isinstance(m, IMUMeasurement)
    assert m.compass == pytest.approx(math.radians((yaw + 90.0) % 360.0), abs=1e-6)   # 0 = north (-y)
    assert 0.0 <= m.compass < 2 * math.pi
    assert m.accelerometer.z == pytest.approx(9.81, abs=0.01)               # at rest: gravity only
    assert abs(m.accelerometer.x) < 1e-6 and abs(m.gyroscope.z) < 1e-9


def test_imu_measures_acceleration_and_turning(world, ego):
    data = listen(spawn(world, "sensor.other.imu", carla.Transform(), ego))
    for _ in range(10):
        ego.apply_control(carla.VehicleControl(throttle=1.0))
        world.tick()
    assert data[-1].accelerometer.x > 1.0                                  # m/s^2 forward
    for _ in range(5):
        ego.apply_control(carla.VehicleControl(throttle=0.3, steer=0.5))
        world.tick()
    yaw_rate = math.radians(ego.get_angular_velocity().z)
    assert data[-1].gyroscope.z == pytest.approx(yaw_rate, rel=1e-6) and yaw_rate > 0.05
    assert data[-1].accelerometer.y > 0.5                                  # centripetal, to the right


# -- lidar and radar ---------------------------------------------------------------------------
def test_lidar_returns_the_ground_within_range(world, ego):
    sensor = spawn(world, "sensor.lidar.ray_cast", carla.Transform(carla.Location(z=2.4)), ego, range=20,
                   channels=16, points_per_second=40000, rotation_frequency=20, dropoff_general_rate=0.0)
    data = listen(sensor)
    world.tick()
    m = data[-1]
    assert isinstance(m, LidarMeasurement) and m.channels == 16
    points = np.frombuffer(m.raw_data, np.float32).reshape(-1, 4)
    assert len(points) == len(m) == sum(m.get_point_count(c) for c in range(16)) > 500
    dist = np.linalg.norm(points[:, :3], axis=1)
    assert dist.max() <= 20.0 + 1e-3
    ground = world.get_map().get_waypoint(ego.get_location()).transform.location.z
    height = m.transform.location.z - ground
    on_ground = np.abs(points[:, 2] + height) < 0.05
    assert on_ground.mean() > 0.5                                   # most rays hit the road plane
    assert np.allclose(points[:, 3], np.exp(-0.004 * dist), atol=1e-5)   # intensity model
    detection = next(iter(m))
    assert isinstance(detection, carla.LidarDetection)
    assert detection.point.x == pytest.approx(float(points[0, 0]), abs=1e-4)


def test_lidar_sees_a_car(world, ego):
    spawn(world, "vehicle.audi.a2", on_lane(world, 15.0))
    data = listen(spawn(world, "sensor.lidar.ray_cast", carla.Transform(carla.Location(z=2.4)), ego, range=30,
                        channels=32, points_per_second=200000, rotation_frequency=20, dropoff_general_rate=0.0,
                        upper_fov=0, lower_fov=-20))
    world.tick()
    world.tick()                                                    # two half turns: all around
    points = np.concatenate([np.frombuffer(m.raw_data, np.float32).reshape(-1, 4) for m in data])
    ahead = points[(np.abs(points[:, 1]) < 0.8) & (points[:, 0] > 3.0) & (points[:, 0] < 14.0)]
    # The car's rear at x = 15 - 1.86 - 5 (ego origin) = 8.14 m; rays hit it above the road.
    hits = ahead[ahead[:, 2] > -2.3]
    assert len(hits) > 5 and hits[:, 0].min() == pytest.approx(8.14, abs=0.15)


def test_radar_detects_the_car_ahead_and_its_closing_speed(world, ego):
    spawn(world, "vehicle.audi.a2", on_lane(world, 25.0))
    data = listen(spawn(world, "sensor.other.radar", carla.Transform(carla.Location(x=2.4, z=0.7)), ego,
                        horizontal_fov=10, vertical_fov=4, range=50, points_per_second=4000))
    ego.set_target_velocity(carla.Vector3D(5.0, 0.0, 0.0))
    world.tick()
    m = data[-1]
    assert isinstance(m, RadarMeasurement) and m.get_detection_count() == len(m) > 50
    d = np.frombuffer(m.raw_data, np.float32).reshape(-1, 4)      # velocity, azimuth, altitude, depth
    expected = 25.0 - 1.86 - (ego.get_location().x + 2.4)
    car = d[np.abs(d[:, 3] - expected) < 0.6]
    assert len(car) > 0.5 * len(d)
    assert np.all(np.abs(d[:, 1]) <= math.radians(5) + 1e-6)
    assert np.median(car[:, 0]) == pytest.approx(-5.0, abs=0.3)  # closing in at the ego's speed
    detection = m[0]
    assert isinstance(detection, carla.RadarDetection) and detection.depth == pytest.approx(float(d[0, 3]))


def test_instance_camera_gives_tag_and_actor_id(world, ego):
    _, images = camera(world, ego, "sensor.camera.instance_segmentation")
    other = spawn(world, "vehicle.audi.a2", on_lane(world, 20.0))
    world.tick()
    px = pixels(images[-1])
    car = px[..., 2] == TAG_CAR
    ids = px[..., 1].astype(int) + 256 * px[..., 0].astype(int)
    assert car.any() and (ids[car] == other.id).all()
    assert (ids[px[..., 2] == TAG_SKY] == 0).all()


@pytest.mark.parametrize("bp_id", ["sensor.camera.dvs", "sensor.camera.optical_flow", "sensor.camera.normals"])
def test_listed_but_unsupported_cameras_say_so(world, ego, bp_id):
    bp = world.get_blueprint_library().find(bp_id)                # manual_control.py looks them up at start
    bp.set_attribute("image_size_x", "320")
    with pytest.raises(UnsupportedFeatureError, match=bp_id):
        world.spawn_actor(bp, CAM, attach_to=ego)


def test_sensors_needing_a_parent_say_so(world):
    for bp_id in ("sensor.other.collision", "sensor.other.obstacle"):
        with pytest.raises(ValueError, match="attach_to"):
            spawn(world, bp_id, carla.Transform())


def test_rgb_images_reject_depth_conversion(world, ego):
    _, images = camera(world, ego, "sensor.camera.rgb")
    world.tick()
    with pytest.raises(UnsupportedFeatureError, match="Image.convert"):
        images[-1].convert(carla.ColorConverter.Depth)


def test_lidar_rejects_bad_attributes(world, ego):
    with pytest.raises(ValueError, match="channels=0"):
        spawn(world, "sensor.lidar.ray_cast", carla.Transform(), ego, channels=0)


def test_sensor_bench_runs_every_case():
    from carla_embedded.bench_sensors import CASES, SensorBenchConfig, run_sensor_bench

    times = run_sensor_bench(SensorBenchConfig(town="Embedded01", resolution=(64, 48), block=2, rounds=1, parked=2))
    assert set(times) == set(CASES) and all(len(t) == 2 and (t > 0).all() for t in times.values())


def test_sensor_bench_cli_rejects_bad_input(capsys):
    from carla_embedded.bench_sensors import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--res", "wide"])
    assert exit_info.value.code == 2 and "'wide'" in capsys.readouterr().err
