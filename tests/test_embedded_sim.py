"""Embedded simulator without the renderer: vehicle model, world semantics, sensors, errors."""
import math

import numpy as np
import pytest

import carla
import carla_embedded
from carla_embedded import Client, UnsupportedFeatureError, VehicleParams, VehicleState, step
from carla_embedded.vehicle import turning_radius
from tests.sim_world import DT, sync_world

PARAMS = VehicleParams()


def drive(control, ticks, state=None, params=PARAMS, dt=DT):
    state = state or VehicleState(0.0, 0.0, 0.0)
    for _ in range(ticks):
        state = step(state, control, dt, params)
    return state


# -- the pure bicycle model ---------------------------------------------------------------
def test_full_throttle_reaches_but_never_exceeds_top_speed():
    s = drive(carla.VehicleControl(throttle=1.0), 2000)
    assert 30.0 < s.speed < PARAMS.top_speed                   # drag-limited, above 100 km/h
    frictionless = VehicleParams(drag_coefficient=0.0, rolling_resistance=0.0)
    s = drive(carla.VehicleControl(throttle=1.0), 4000, params=frictionless)
    assert 0.95 * PARAMS.top_speed < s.speed <= PARAMS.top_speed
    s = drive(carla.VehicleControl(throttle=1.0), 60)           # 3 s: realistic 0-100 km/h pace
    assert 6.0 < s.speed < 3.0 * PARAMS.max_accel


def test_brake_stops_and_never_reverses():
    moving = VehicleState(0, 0, 0, speed=20.0)
    s = drive(carla.VehicleControl(brake=1.0), 20, moving)                  # 1 s at ~8 m/s^2
    assert 10.0 < s.speed < 13.0
    s = drive(carla.VehicleControl(brake=1.0), 100, moving)
    assert s.speed == 0.0
    assert drive(carla.VehicleControl(hand_brake=True), 200, moving).speed == 0.0
    assert drive(carla.VehicleControl(hand_brake=True), 10, moving).speed < drive(carla.VehicleControl(), 10, moving).speed


def test_reverse_drives_backwards_up_to_its_limit():
    s = drive(carla.VehicleControl(throttle=1.0, reverse=True), 400)
    assert s.x < -20.0 and -PARAMS.max_reverse_speed <= s.speed < -0.8 * PARAMS.max_reverse_speed
    assert s.yaw == 0.0


def test_control_values_are_clipped_like_carla():
    over = drive(carla.VehicleControl(throttle=1.0, steer=1.0), 40)
    clipped = drive(carla.VehicleControl(throttle=1.0, steer=1.0), 40)
    assert (over.x, over.y, over.yaw) == (clipped.x, clipped.y, clipped.yaw)
    wild = type("Control", (), dict(throttle=7.0, steer=-3.0, brake=-1.0, reverse=False, hand_brake=False))()
    sane = carla.VehicleControl(throttle=1.0, steer=-1.0)
    assert drive(wild, 40) == drive(sane, 40)


def test_positive_steer_turns_right_in_carla_frame():
    s = drive(carla.VehicleControl(throttle=0.5, steer=0.2), 40)
    assert s.yaw > 5.0 and s.y > 0.2                  # yaw clockwise, y to the right


def test_params_are_validated():
    with pytest.raises(ValueError, match="wheelbase"):
        VehicleParams(wheelbase=0.0)
    with pytest.raises(ValueError, match="max_steer_deg"):
        VehicleParams(max_steer_deg=95.0)
    with pytest.raises(ValueError, match="dt"):
        step(VehicleState(0, 0, 0), carla.VehicleControl(), 0.0, PARAMS)


# -- world fixtures -----------------------------------------------------------------------
@pytest.fixture
def world():
    return sync_world("Embedded01", DT)[1]


def on_lane(world, x=20.0, y=1.75, z=0.5):
    """A pose on road 1, lane -1 of Embedded01 (a 60 m straight heading +x)."""
    wp = world.get_map().get_waypoint(carla.Location(x=x, y=y))
    t = wp.transform
    return carla.Transform(carla.Location(t.location.x, t.location.y, z), carla.Rotation(yaw=t.rotation.yaw))


def spawn_car(world, transform=None, blueprint="vehicle.tesla.model3"):
    bp = world.get_blueprint_library().find(blueprint)
    return world.spawn_actor(bp, transform or on_lane(world))


# -- kinematics in the world --------------------------------------------------------------
def test_distance_at_constant_throttle_matches_the_model(world):
    """World ticks against an independent fine integration of the continuous longitudinal model."""
    car = spawn_car(world)
    start = car.get_location()
    car.apply_control(carla.VehicleControl(throttle=0.5))
    ticks = 60
    for _ in range(ticks):
        world.tick()
    p, v, x, h = PARAMS, 0.0, 0.0, DT / 200
    for _ in range(ticks * 200):
        a = 0.5 * p.max_accel * (1 - v / p.top_speed) - p.rolling_resistance - p.drag_coefficient * v * v
        v += a * h
        x += v * h
    travelled = car.get_location().distance(start)
    assert travelled == pytest.approx(x, rel=0.01)
    velocity = car.get_velocity()
    assert math.hypot(velocity.x, velocity.y) == pytest.approx(v, rel=0.01)
    assert car.get_control().throttle == pytest.approx(0.5)


def physics_geometry(car):
    """(wheelbase m, front max steer deg, rear max steer deg) as a client reads them on a CARLA server."""
    wheels = car.get_physics_control().wheels
    front = (wheels[0].position + wheels[1].position) * 0.5
    rear = (wheels[2].position + wheels[3].position) * 0.5
    return front.distance(rear) / 100.0, wheels[0].max_steer_angle, wheels[2].max_steer_angle


@pytest.mark.parametrize("steer", [0.1, 0.4, -0.25])
def test_turning_radius_matches_bicycle_model(world, steer):
    """The circle a constant steer drives is the one CARLA's physics control predicts."""
    car = spawn_car(world)
    car.set_target_velocity(carla.Vector3D(6.0, 0.0, 0.0))
    car.apply_control(carla.VehicleControl(throttle=0.3, steer=steer))
    rear = []
    for _ in range(160):
        world.tick()
        t = car.get_transform()
        f = t.get_forward_vector()
        rear.append((t.location.x - PARAMS.rear_axle_offset * f.x, t.location.y - PARAMS.rear_axle_offset * f.y))
    pts = np.array(rear)
    # algebraic circle fit: x^2 + y^2 + D x + E y + F = 0
    A = np.c_[pts, np.ones(len(pts))]
    D, E, F = np.linalg.lstsq(A, -(pts ** 2).sum(axis=1), rcond=None)[0]
    radius = math.sqrt(D * D / 4 + E * E / 4 - F)
    wheelbase, max_steer_deg, _ = physics_geometry(car)
    assert max_steer_deg == PARAMS.max_steer_deg == 70.0           # CARLA's cars: steer = 1 is 70 deg
    expected = wheelbase / math.tan(math.radians(abs(steer) * max_steer_deg))
    assert radius == pytest.approx(expected, rel=0.01)
    assert radius == pytest.approx(turning_radius(steer, PARAMS), rel=0.01)
    assert math.copysign(1.0, car.get_angular_velocity().z) == math.copysign(1.0, steer)   # right: yaw grows
    assert car.get_wheel_steer_angle(carla.VehicleWheelLocation.FL_Wheel) == pytest.approx(steer * 70.0)
    assert car.get_wheel_steer_angle(carla.VehicleWheelLocation.BR_Wheel) == 0.0


@pytest.mark.parametrize("blueprint", ["vehicle.tesla.model3", "vehicle.lincoln.mkz_2020", "vehicle.audi.a2"])
def test_physics_control_is_carlas_layout_in_carlas_units(world, blueprint):
    car = spawn_car(world, blueprint=blueprint)
    car.set_target_velocity(carla.Vector3D(5.0, 0.0, 0.0))
    car.apply_control(carla.VehicleControl(throttle=0.3, steer=0.3))
    for _ in range(30):
        world.tick()
    physics = car.get_physics_control()
    assert isinstance(physics, carla.VehiclePhysicsControl)
    wheels = list(physics.wheels)
    assert len(wheels) == 4 and all(isinstance(w, carla.WheelPhysicsControl) for w in wheels)
    wheelbase, front_steer, rear_steer = physics_geometry(car)
    spec = world.get_blueprint_library().find(blueprint).vehicle_spec
    assert wheelbase == pytest.approx(spec.params.wheelbase, abs=0.01)
    assert (front_steer, wheels[1].max_steer_angle, rear_steer, wheels[3].max_steer_angle) == (70.0, 70.0, 0.0, 0.0)
    # positions: world coordinates in cm; FL/RL on the car's left (-y in its frame), around the car
    t = car.get_transform()
    local = [t.inverse_transform(carla.Location(w.position.x / 100, w.position.y / 100, w.position.z / 100))
             for w in wheels]
    assert [p.y < 0 for p in local] == [True, False, True, False]
    assert local[0].x > 0 > local[2].x and all(abs(p.y) < spec.extent[1] for p in local)
    assert all(p.z == pytest.approx(w.radius / 100, abs=0.01) for p, w in zip(local, wheels))
    assert 1000 < physics.mass < 2500 and 3000 < physics.max_rpm < 9000 and 0.2 < physics.drag_coefficient < 0.6
    assert wheels[0].max_handbrake_torque == 0 < wheels[2].max_handbrake_torque      # hand brake on the rear


def test_route_follower_reads_the_physics_and_tracks_a_town02_route():
    """The seam end to end: control's follower reads wheelbase and 70 deg from the embedded car
    exactly as from a CARLA server, and then tracks an 800 m route with junction turns tightly."""
    from carla_client.planner import GlobalRoutePlanner
    from carla_client.follower import TOWN, RouteFollower

    if not carla_embedded.towns.find_local("Town02"):
        pytest.skip("Town02.xodr not available offline")
    world = Client().load_world("Town02")
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, DT
    world.apply_settings(settings)
    planner = GlobalRoutePlanner(world.get_map(), 1.0)
    route = planner.random_route(planner.spawn_waypoints(10.0)[0], 800.0, np.random.default_rng(2),
                                 turn_probability=1.0)
    start = route[0][0].transform
    car = spawn_car(world, carla.Transform(start.location + carla.Location(z=0.5), start.rotation))
    follower = RouteFollower(car, TOWN, dt=DT)
    assert (follower.params.wheelbase, follower.params.max_steer_deg) == (pytest.approx(PARAMS.wheelbase), 70.0)
    follower.set_route(route)
    errors = []
    for _ in range(4000):
        world.tick()
        car.apply_control(follower.run_step())
        errors.append(follower.lateral_error)
        if follower.done():
            break
    assert follower.done()
    # measured: mean 0.10 m, max 0.69 m (a 35 deg car under the 70 deg follower: 0.20 m, 1.34 m)
    assert len(errors) > 2000 and np.mean(errors) < 0.15 and np.max(errors) < 0.8


def test_apply_physics_control_changes_the_steer_angle_only(world):
    car = spawn_car(world)
    physics = car.get_physics_control()
    wheels = list(physics.wheels)
    for w in wheels[:2]:
        w.max_steer_angle = 35.0
    physics.wheels = wheels
    car.apply_physics_control(physics)
    assert physics_geometry(car)[1] == 35.0
    car.apply_control(carla.VehicleControl(steer=1.0))
    assert car.get_wheel_steer_angle(carla.VehicleWheelLocation.FR_Wheel) == pytest.approx(35.0)
    physics.mass = 900.0
    with pytest.raises(UnsupportedFeatureError, match="mass"):
        car.apply_physics_control(physics)
    physics = car.get_physics_control()
    wheels = list(physics.wheels)
    wheels[2].max_steer_angle = 10.0
    physics.wheels = wheels
    with pytest.raises(UnsupportedFeatureError, match="max_steer_angle"):
        car.apply_physics_control(physics)
    assert physics_geometry(car)[1] == 35.0                          # a refused change changes nothing
    for w in wheels[:2]:
        w.max_steer_angle = 85.0
    wheels[2].max_steer_angle = 0.0
    physics.wheels = wheels
    with pytest.raises(ValueError, match="max_steer_angle=85"):
        car.apply_physics_control(physics)


def test_z_and_pitch_follow_a_hill():
    world = Client().load_world("Town03") if carla_embedded.towns.find_local("Town03") else None
    if world is None:
        pytest.skip("Town03.xodr not available offline")
    carla_map = world.get_map()
    slope = max((w for w in carla_map.generate_waypoints(4.0) if w.lane_type == carla.LaneType.Driving
                 and not w.is_junction), key=lambda w: abs(math.sin(math.radians(w.transform.rotation.pitch))))
    pitch = (slope.transform.rotation.pitch + 180) % 360 - 180
    assert abs(pitch) > 2.0
    t = slope.transform
    car = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"),
                            carla.Transform(t.location + carla.Location(z=0.5), carla.Rotation(yaw=t.rotation.yaw)))
    car.set_target_velocity(t.get_forward_vector() * 8.0)
    car.apply_control(carla.VehicleControl(throttle=0.4))
    heights = []
    for _ in range(10):
        world.tick()
        loc = car.get_location()
        road = carla_map.get_waypoint(loc).transform.location
        assert loc.z == pytest.approx(road.z, abs=0.05)
        heights.append(loc.z)
    assert abs(heights[-1] - heights[0]) > 1.0
    road = carla_map.get_waypoint(car.get_location()).transform.rotation
    road_pitch = (road.pitch + 180) % 360 - 180
    assert abs(road_pitch) > 2.0
    assert car.get_transform().rotation.pitch == pytest.approx(road_pitch, abs=0.5)


# -- settings, time and callbacks ---------------------------------------------------------
def test_settings_are_real_carla_settings_and_copied(world):
    s = world.get_settings()
    assert isinstance(s, carla.WorldSettings) and s.synchronous_mode and s.fixed_delta_seconds == DT
    s.fixed_delta_seconds = 0.1
    assert world.get_settings().fixed_delta_seconds == DT       # a copy, like carla
    assert world.apply_settings(s) == world.get_snapshot().frame
    world.tick()
    assert world.get_snapshot().timestamp.delta_seconds == pytest.approx(0.1)


def test_unset_fixed_delta_steps_default(world):
    s = world.get_settings()
    s.fixed_delta_seconds = None
    world.apply_settings(s)
    world.tick()
    world.tick()
    assert world.get_snapshot().timestamp.elapsed_seconds == pytest.approx(0.1)


def test_frames_increase_by_one_and_callbacks_run_before_tick_returns(world):
    car = spawn_car(world)
    sensor = world.spawn_actor(world.get_blueprint_library().find("sensor.other.lane_invasion"),
                               carla.Transform(), attach_to=car)
    events, snapshots = [], []
    sensor.listen(events.append)
    world.on_tick(snapshots.append)
    car.set_target_velocity(carla.Vector3D(8.0, 0.0, 0.0))
    car.apply_control(carla.VehicleControl(throttle=0.2, steer=-0.1))     # drift left over the centre line
    frames = []
    for _ in range(40):
        frame = world.tick()
        frames.append(frame)
        assert snapshots[-1].frame == frame
        if events:
            assert events[-1].frame <= frame
    assert np.all(np.diff(frames) == 1)
    assert events and events[0].frame in frames
    first = events[0]
    assert first.actor is car and first.timestamp == pytest.approx(first.frame * DT - frames[0] * DT + DT)
    assert all(isinstance(m, carla.LaneMarking) for m in first.crossed_lane_markings)


def test_wait_for_tick_advances_in_async_mode_only(world):
    with pytest.raises(RuntimeError, match="synchronous mode"):
        world.wait_for_tick()
    s = world.get_settings()
    s.synchronous_mode = False
    world.apply_settings(s)
    before = world.get_snapshot().frame
    assert world.wait_for_tick().frame == before + 1


def test_remove_on_tick(world):
    seen = []
    callback_id = world.on_tick(seen.append)
    world.tick()
    world.remove_on_tick(callback_id)
    world.tick()
    assert len(seen) == 1


def test_weather_round_trip(world):
    world.set_weather(carla.WeatherParameters.HardRainNoon)
    weather = world.get_weather()
    assert isinstance(weather, carla.WeatherParameters)
    assert weather.precipitation == carla.WeatherParameters.HardRainNoon.precipitation > 50
    weather.precipitation = 0.0
    assert world.get_weather().precipitation > 50                # a copy


# -- lane invasion ------------------------------------------------------------------------
def test_lane_invasion_reports_the_crossed_centre_line(world):
    car = spawn_car(world, on_lane(world, x=25.0))
    sensor = world.spawn_actor(world.get_blueprint_library().find("sensor.other.lane_invasion"),
                               carla.Transform(), attach_to=car)
    events = []
    sensor.listen(events.append)
    car.set_target_velocity(carla.Vector3D(8.0, 0, 0))
    car.apply_control(carla.VehicleControl(throttle=0.2))
    for _ in range(30):                                   # straight in lane: nothing
        world.tick()
    assert events == []
    car.apply_control(carla.VehicleControl(throttle=0.2, steer=-0.08))
    for _ in range(40):
        world.tick()
    crossed = [(m.type, m.color) for e in events for m in e.crossed_lane_markings]
    assert crossed and set(crossed) == {(carla.LaneMarkingType.SolidSolid, carla.LaneMarkingColor.Yellow)}
    assert world.get_map().get_waypoint(car.get_location()).lane_id == 1      # now in the other lane


def test_lane_invasion_needs_a_parent(world):
    with pytest.raises(ValueError, match="attach_to"):
        world.spawn_actor(world.get_blueprint_library().find("sensor.other.lane_invasion"), carla.Transform())


# -- blueprints and actors ----------------------------------------------------------------
def test_blueprint_library_like_carla(world):
    library = world.get_blueprint_library()
    vehicles = library.filter("vehicle.*")
    assert len(vehicles) >= 2 and all(bp.id.startswith("vehicle.") for bp in vehicles)
    assert [bp.id for bp in library.filter("model3")] == ["vehicle.tesla.model3"]      # tags match too
    camera = library.find("sensor.camera.rgb")
    assert {a.id for a in camera} >= {"image_size_x", "image_size_y", "fov", "sensor_tick"}
    assert camera.get_attribute("image_size_x").as_int() == 800
    camera.set_attribute("image_size_x", "320")
    assert camera.get_attribute("image_size_x") == 320
    assert library.find("sensor.camera.rgb").get_attribute("image_size_x").as_int() == 800    # copies
    with pytest.raises(ValueError, match="'wide'"):
        camera.set_attribute("fov", "wide")
    with pytest.raises(IndexError, match="number_of_wheels"):
        vehicles[0].set_attribute("number_of_wheels", "3")
    with pytest.raises(IndexError, match="sensor.camera.rgb"):
        library.find("sensor.other.rss")                           # not implemented
    assert vehicles[0].get_attribute("color").recommended_values
    # CARLA 0.9.14's catalogue: tags are the id's parts, so the bare 'vehicle' matches every vehicle
    assert sorted(bp.id for bp in library.filter("vehicle")) == sorted(bp.id for bp in vehicles)
    assert len(vehicles) == 40 and {"vehicle.audi.a2", "vehicle.kawasaki.ninja", "vehicle.bh.crossbike",
                                    "vehicle.mitsubishi.fusorosa"} <= {bp.id for bp in vehicles}
    wheels = {bp.id: bp.get_attribute("number_of_wheels").as_int() for bp in vehicles}
    assert wheels["vehicle.kawasaki.ninja"] == 2 and wheels["vehicle.tesla.model3"] == 4
    assert {bp.get_attribute("base_type").as_str() for bp in vehicles} == {
        "car", "truck", "van", "bus", "motorcycle", "bicycle"}
    assert {int(bp.get_attribute("generation")) for bp in vehicles} == {1, 2}
    walkers = library.filter("walker.pedestrian.*")
    assert len(walkers) == 49 and walkers[0].id == "walker.pedestrian.0001"
    assert walkers[0].get_attribute("speed").recommended_values[1] == "1.4"
    assert library.find("controller.ai.walker").id == "controller.ai.walker"


def test_actors_ids_lists_and_destroy(world):
    car = spawn_car(world)
    other = spawn_car(world, on_lane(world, x=45.0), "vehicle.audi.a2")
    assert car.id != other.id and car.type_id == "vehicle.tesla.model3"
    assert car.attributes["role_name"] == "autopilot"
    assert world.get_actor(car.id) is car
    assert [a.id for a in world.get_actors().filter("vehicle.*")] == [car.id, other.id]
    assert world.get_actors().find(other.id) is other
    assert world.get_actors([other.id]) == [other]
    assert car.bounding_box.extent.x == pytest.approx(2.40)
    assert car.get_world() is world
    assert car.destroy() is True and car.destroy() is False
    assert not car.is_alive and world.get_actor(car.id) is None
    assert [a.id for a in world.get_actors() if not a.type_id.startswith("traffic.")] == [other.id]


def test_spawn_on_an_occupied_spot_fails_like_carla(world):
    spawn_car(world)
    bp = world.get_blueprint_library().find("vehicle.lincoln.mkz_2020")
    with pytest.raises(RuntimeError, match="collision"):
        world.spawn_actor(bp, on_lane(world, x=21.0))
    assert world.try_spawn_actor(bp, on_lane(world, x=21.0)) is None
    assert world.try_spawn_actor(bp, on_lane(world, x=30.0)) is not None


def test_destroying_a_vehicle_stops_its_sensors(world):
    car = spawn_car(world)
    sensor = world.spawn_actor(world.get_blueprint_library().find("sensor.other.lane_invasion"),
                               carla.Transform(), attach_to=car)
    sensor.listen(lambda event: None)
    assert sensor.is_listening() and sensor.parent is car
    car.destroy()
    assert not sensor.is_listening() and sensor.is_alive
    world.tick()
    assert sensor.destroy() is True


def test_load_world_replaces_the_old_one():
    client = Client()
    old = client.load_world("Embedded01")
    car = spawn_car(old)
    new = client.load_world("Embedded01")
    assert client.get_world() is new and new.id != old.id
    assert not car.is_alive and new.get_actors().filter("vehicle.*") == []
    with pytest.raises(RuntimeError, match="load_world"):
        old.tick()


def test_load_world_keeps_settings_when_asked(world):
    client = Client()
    w = client.load_world("Embedded01")
    s = w.get_settings()
    s.synchronous_mode = True
    w.apply_settings(s)
    assert client.load_world("Embedded01", reset_settings=False).get_settings().synchronous_mode
    assert not client.load_world("Embedded01").get_settings().synchronous_mode
    assert client.reload_world(False).get_map().name == "Carla/Maps/Embedded01"


def test_spectator_and_teleport(world):
    spectator = world.get_spectator()
    target = carla.Transform(carla.Location(1, 2, 30), carla.Rotation(pitch=-45))
    spectator.set_transform(target)
    assert spectator.get_transform().location.z == pytest.approx(30)
    assert spectator not in world.get_actors()
    car = spawn_car(world)
    car.set_transform(on_lane(world, x=50.0))
    assert car.get_location().x == pytest.approx(50.0, abs=0.01)


def test_batch_destroy_like_carla_scripts(world):
    cars = [spawn_car(world, on_lane(world, x=x)) for x in (20.0, 40.0)]
    client = Client()
    client._world = world
    responses = client.apply_batch_sync([carla.command.DestroyActor(c.id) for c in cars] + [
        carla.command.DestroyActor(9999)])
    assert [r.has_error() for r in responses] == [False, False, True]
    assert world.get_actors().filter("vehicle.*") == []
    with pytest.raises(UnsupportedFeatureError, match="ApplyTorque"):
        client.apply_batch([carla.command.ApplyTorque(1, carla.Vector3D())])
    assert client.apply_batch_sync([carla.command.SetAutopilot(1, True)])[0].has_error()   # the spectator


def test_versions():
    client = Client("localhost", 2000, 0)
    client.set_timeout(2.0)
    assert client.get_client_version() == client.get_server_version() == "0.9.16-embedded"
    with pytest.raises(ValueError, match="timeout"):
        client.set_timeout(0)


@pytest.mark.parametrize("call, feature", [
    (lambda c, w, car: c.get_trafficmanager().set_path(car, []), "TrafficManager.set_path"),
    (lambda c, w, car: c.get_trafficmanager().set_route(car, ["Left"]), "TrafficManager.set_route"),
    (lambda c, w, car: w.debug, "World.debug"),
    (lambda c, w, car: car.apply_physics_control(carla.VehiclePhysicsControl(wheels=[carla.WheelPhysicsControl()] * 4)),
     "max_steer_angle"),                                            # four steered wheels
    (lambda c, w, car: car.enable_constant_velocity(carla.Vector3D(1, 0, 0)), "Vehicle.enable_constant_velocity"),
    (lambda c, w, car: c.start_recorder("x.log"), "Client.start_recorder"),
    (lambda c, w, car: c.load_world("Town02", map_layers=carla.MapLayer.NONE), "map_layers"),
])
def test_unsupported_features_say_so(call, feature):
    client = Client()
    w = client.load_world("Embedded01")
    car = spawn_car(w)
    with pytest.raises(UnsupportedFeatureError, match="embedded CARLA simulator does not support") as err:
        call(client, w, car)
    assert feature in str(err.value)
    assert not hasattr(w, "debug")                                # hasattr stays usable
    car.set_autopilot(False)                                      # switching it off is fine
