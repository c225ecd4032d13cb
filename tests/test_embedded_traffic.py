"""Traffic in the embedded world: carla.command batches, the Traffic Manager and its autopilot,
traffic lights, walkers, speed limits and the asynchronous clock, as a CARLA user sees them."""
import threading
import time

import numpy as np
import pytest

import carla
from carla_embedded import Client, UnsupportedFeatureError
from carla_embedded import world as world_module
from carla_embedded.bench_async import spin
from carla_embedded.towns import road_speed_limits
from tests.sim_world import DT, sync_world

RED, YELLOW, GREEN = carla.TrafficLightState.Red, carla.TrafficLightState.Yellow, carla.TrafficLightState.Green


def towards_junction(world, x):
    """Embedded01: road 1, lane 1 runs along y = -1.75 towards the junction whose stop line is at x = 12."""
    wp = world.get_map().get_waypoint(carla.Location(x=x, y=-1.75))
    assert (wp.road_id, wp.lane_id) == (1, 1)
    t = wp.transform
    return carla.Transform(carla.Location(t.location.x, t.location.y, 0.5), carla.Rotation(yaw=t.rotation.yaw))


def light_of_lane(world, road_id, lane_id):
    for light in world.get_actors().filter("*traffic_light*"):
        if any((w.road_id, w.lane_id) == (road_id, lane_id) for w in light.get_stop_waypoints()):
            return light
    raise AssertionError(f"no light stops road {road_id} lane {lane_id}")


def speed(actor):
    return actor.get_velocity().length()


# -- isinstance and commands ---------------------------------------------------------------
def test_embedded_objects_are_instances_of_the_real_carla_classes():
    client, world = sync_world()
    library = world.get_blueprint_library()
    car = world.spawn_actor(library.find("vehicle.tesla.model3"), towards_junction(world, 40))
    camera_bp = library.find("sensor.camera.rgb")
    camera = world.spawn_actor(camera_bp, carla.Transform(), attach_to=car)
    walker = world.spawn_actor(library.find("walker.pedestrian.0001"),
                               carla.Transform(world.get_random_location_from_navigation()))
    controller = world.spawn_actor(library.find("controller.ai.walker"), carla.Transform(), walker)
    light = world.get_actors().filter("*traffic_light*")[0]
    assert isinstance(world, carla.World)
    assert isinstance(car, carla.Vehicle) and isinstance(car, carla.Actor)
    assert isinstance(camera, carla.Sensor) and isinstance(light, carla.TrafficLight)
    assert isinstance(walker, carla.Walker) and isinstance(controller, carla.WalkerAIController)
    # carla methods the simulator lacks say so instead of failing inside Boost.Python
    with pytest.raises(UnsupportedFeatureError, match="Vehicle.open_door"):
        car.open_door(carla.VehicleDoor.All)
    with pytest.raises(UnsupportedFeatureError, match="World.get_lightmanager"):
        world.get_lightmanager()
    assert not hasattr(car, "actor_state")            # a carla property not modelled: AttributeError flavour


def test_carla_commands_take_embedded_objects_and_stay_real_otherwise():
    client, world = sync_world()
    bp = world.get_blueprint_library().find("vehicle.audi.a2")
    spawn = carla.command.SpawnActor(bp, towards_junction(world, 40)).then(
        carla.command.SetAutopilot(carla.command.FutureActor, True, 8000))
    assert isinstance(spawn, carla.command.SpawnActor)
    real = carla.command.DestroyActor(5)                 # plain arguments: the real Boost.Python command
    assert type(real).__module__.startswith("carla.libcarla") and isinstance(real, carla.command.DestroyActor)
    (response,) = client.apply_batch_sync([spawn], True)
    assert not response.error
    car = world.get_actor(response.actor_id)
    for _ in range(40):
        world.tick()
    assert speed(car) > 1.0                              # SetAutopilot(FutureActor) reached the new car
    bad = client.apply_batch_sync([carla.command.SpawnActor(bp, car.get_transform())])
    assert bad[0].error and "collision" in bad[0].error
    client.apply_batch([carla.command.DestroyActor(car)])
    assert not car.is_alive


# -- Traffic Manager -------------------------------------------------------------------------
def test_traffic_manager_api_and_what_it_does_not_model():
    client, world = sync_world()
    tm = client.get_trafficmanager(8123)
    assert tm.get_port() == 8123 and client.get_trafficmanager(8123) is tm
    car = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"), towards_junction(world, 40))
    tm.set_synchronous_mode(True)
    tm.set_global_distance_to_leading_vehicle(2.5)
    tm.global_percentage_speed_difference(30.0)
    tm.set_random_device_seed(3)
    tm.set_hybrid_physics_mode(True)
    tm.auto_lane_change(car, False)
    with pytest.raises(ValueError, match="percentage"):
        tm.vehicle_percentage_speed_difference(car, 150)
    with pytest.raises(UnsupportedFeatureError, match="TrafficManager.get_next_action"):
        tm.get_next_action(car)


def test_autopilot_speed_follows_the_limit_and_the_percentage():
    client, world = sync_world("Town02")
    tm = client.get_trafficmanager(8001)
    car = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"),
                            world.get_map().get_spawn_points()[0])
    tm.ignore_lights_percentage(car, 100)
    tm.vehicle_percentage_speed_difference(car, 0.0)
    car.set_autopilot(True, 8001)
    top = 0.0
    for _ in range(200):
        world.tick()
        top = max(top, speed(car) * 3.6)
    assert car.get_speed_limit() == pytest.approx(40.23, abs=0.01)     # Town02: 25 mph records
    assert 30.0 < top <= 40.23 + 1.0
    tm.set_desired_speed(car, 15.0)
    for _ in range(200):
        world.tick()
    assert speed(car) * 3.6 == pytest.approx(15.0, abs=3.0)


def test_npc_cars_follow_lanes_through_junctions():
    client, world = sync_world("Town02")
    tm = client.get_trafficmanager(8002)
    tm.set_random_device_seed(7)
    library = world.get_blueprint_library().filter("vehicle.*")
    points = world.get_map().get_spawn_points()
    cars = [world.spawn_actor(library[i], points[i * 7]) for i in range(10)]
    start = [c.get_location() for c in cars]
    for c in cars:
        c.set_autopilot(True, 8002)
    in_junction = set()
    worst = 0.0
    for _ in range(900):
        world.tick()
        for c in cars:
            wp = world.get_map().get_waypoint(c.get_location())
            worst = max(worst, wp.transform.location.distance(c.get_location()))
            if wp.is_junction:
                in_junction.add(c.id)
    assert sum(c.get_location().distance(s) > 20.0 for c, s in zip(cars, start)) >= 8    # others: at a red
    assert len(in_junction) >= 5 and worst < 1.5
    assert not world._contacts


def test_autopilot_keeps_its_distance_and_collides_only_when_told_to():
    client, world = sync_world()
    tm = client.get_trafficmanager(8003)
    light_of_lane(world, 1, 1).set_state(RED)
    world.freeze_all_traffic_lights(True)
    library = world.get_blueprint_library()
    leader = world.spawn_actor(library.find("vehicle.audi.a2"), towards_junction(world, 30))
    follower = world.spawn_actor(library.find("vehicle.tesla.model3"), towards_junction(world, 58))
    leader.apply_control(carla.VehicleControl(hand_brake=True))
    follower.set_autopilot(True, 8003)
    contacts = 0
    for _ in range(300):
        world.tick()
        contacts += len(world._contacts)
    gap = follower.get_location().x - leader.get_location().x - 2.40 - 1.86
    assert contacts == 0 and speed(follower) < 0.1 and 1.0 < gap < 6.0
    tm.ignore_vehicles_percentage(follower, 100)
    hit = []
    for _ in range(200):
        world.tick()
        hit += [(a.id, b.id) for _, a, b in world._contacts]
    assert {tuple(sorted(p)) for p in hit} == {tuple(sorted((leader.id, follower.id)))}


def test_autopilot_stops_at_red_and_goes_at_green():
    client, world = sync_world()
    light = light_of_lane(world, 1, 1)
    light.set_state(RED)
    light.freeze(True)
    car = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"), towards_junction(world, 55))
    car.set_autopilot(True)
    for _ in range(300):
        world.tick()
    front = car.get_location().x - 2.40                 # the car drives towards -x
    assert speed(car) < 0.1 and 12.0 < front < 17.0
    assert car.get_traffic_light() is light and car.is_at_traffic_light() and car.get_traffic_light_state() == RED
    light.set_state(GREEN)
    for _ in range(100):
        world.tick()
    assert car.get_location().x < 12.0
    assert car.get_traffic_light() is None and car.get_traffic_light_state() == GREEN


# -- traffic lights --------------------------------------------------------------------------
def test_traffic_light_cycle_groups_and_controls():
    client, world = sync_world()
    lights = world.get_actors().filter("*traffic_light*")
    assert len(lights) == 4
    group = lights[0].get_group_traffic_lights()
    assert sorted(l.id for l in group) == sorted(l.id for l in lights)
    first = next(l for l in group if l.state == GREEN)
    nxt = group[(group.index(first) + 1) % len(group)]
    assert (first.get_green_time(), first.get_yellow_time(), first.get_red_time()) == (10.0, 3.0, 2.0)
    seen = []
    for _ in range(int(16.0 / DT) + 2):
        world.tick()
        assert sum(l.state != RED for l in group) <= 1   # one direction at a time
        seen.append((first.state, nxt.state))
    assert seen[int(9.9 / DT)][0] == GREEN and seen[int(10.1 / DT)][0] == YELLOW
    assert seen[int(13.1 / DT)] == (RED, RED) and seen[int(15.1 / DT)][1] == GREEN
    assert nxt.get_elapsed_time() < 1.15
    nxt.freeze(True)
    world.tick()
    frozen_at = nxt.get_elapsed_time()
    for _ in range(400):
        world.tick()
    assert nxt.is_frozen() and nxt.state == GREEN and nxt.get_elapsed_time() == frozen_at
    world.freeze_all_traffic_lights(False)
    world.reset_all_traffic_lights()
    assert group[0].state == GREEN and all(l.state == RED for l in group[1:])
    stop = first.get_stop_waypoints()[0]
    assert not stop.is_junction and stop.next(3.0)[0].is_junction        # the stop line is at the junction
    trigger = first.get_transform().transform(first.trigger_volume.location)
    assert world.get_map().get_waypoint(trigger).road_id == stop.road_id  # where CARLA's agents look
    assert first.get_affected_lane_waypoints()[0].road_id == stop.road_id


def test_towns_get_lights_at_their_junctions_without_signals_in_the_file():
    _, world = sync_world("Town01")
    lights = world.get_actors().filter("*traffic_light*")
    junctions = {l.get_stop_waypoints()[0].next(4.0)[0].get_junction().id for l in lights}
    assert len(lights) >= 30 and len(junctions) >= 10


# -- speed limits -----------------------------------------------------------------------------
def test_speed_limits_from_opendrive_records_and_road_types():
    xodr = """<OpenDRIVE><road id="1" length="10"><type s="0" type="town"><speed max="25" unit="mph"/></type>
      <type s="5" type="town"><speed max="50" unit="km/h"/></type></road>
      <road id="2" length="10"><type s="0" type="motorway"/></road><road id="3" length="10"/></OpenDRIVE>"""
    limits = road_speed_limits(xodr)
    assert limits[1] == [(0.0, 40.23), (5.0, 50.0)] and limits[2] == [(0.0, 90.0)] and limits[3] == [(0.0, 30.0)]


# -- walkers ------------------------------------------------------------------------------------
def test_walkers_walk_on_sidewalks_with_their_ai_controller():
    client, world = sync_world("Town02")
    world.set_pedestrians_seed(4)
    library = world.get_blueprint_library()
    locations = [world.get_random_location_from_navigation() for _ in range(6)]
    carla_map = world.get_map()
    for loc in locations:
        side = carla_map.get_waypoint(loc, lane_type=carla.LaneType.Sidewalk)
        assert side.lane_type == carla.LaneType.Sidewalk and side.transform.location.distance(loc) < 1.0
    spawned = client.apply_batch_sync([carla.command.SpawnActor(library.find(f"walker.pedestrian.00{10 + i}"),
                                                                carla.Transform(loc)) for i, loc in enumerate(locations)], True)
    walkers = [world.get_actor(r.actor_id) for r in spawned]
    controllers = client.apply_batch_sync([carla.command.SpawnActor(library.find("controller.ai.walker"),
                                                                    carla.Transform(), w.id) for w in walkers], True)
    for r in controllers:
        controller = world.get_actor(r.actor_id)
        controller.start()
        controller.go_to_location(world.get_random_location_from_navigation())
        controller.set_max_speed(1.4)
    start = [w.get_location() for w in walkers]
    on_sidewalk = checks = 0
    for i in range(300):
        world.tick()
        if i % 10 == 0:
            for w in walkers:
                wp = carla_map.get_waypoint(w.get_location(), project_to_road=False, lane_type=carla.LaneType.Sidewalk)
                on_sidewalk += wp is not None
                checks += 1
    moved = [w.get_location().distance(s) for w, s in zip(walkers, start)]
    assert all(m > 3.0 for m in moved) and max(speed(w) for w in walkers) <= 1.4 + 1e-6
    assert on_sidewalk / checks > 0.8
    world.get_actor(controllers[0].actor_id).stop()
    world.tick()
    assert speed(walkers[0]) == 0.0


# -- asynchronous mode ------------------------------------------------------------------------------
def test_asynchronous_world_advances_on_its_own():
    client = Client()
    world = client.load_world("Embedded01")            # asynchronous, as CARLA starts
    car = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"), towards_junction(world, 55))
    car.set_autopilot(True)
    frame = world.get_snapshot().frame
    time.sleep(0.6)
    assert world.get_snapshot().frame >= frame + 4 and speed(car) > 0.1
    assert world.wait_for_tick().frame > frame
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, DT
    world.apply_settings(settings)
    time.sleep(0.15)
    frame = world.get_snapshot().frame
    time.sleep(0.3)
    assert world.get_snapshot().frame == frame          # synchronous: only tick() advances it
    assert world.tick() == frame + 1


def _async_world_with_camera():
    world = Client().load_world("Embedded01")            # asynchronous
    library = world.get_blueprint_library()
    car = world.spawn_actor(library.find("vehicle.tesla.model3"), towards_junction(world, 55))
    camera_bp = library.find("sensor.camera.rgb")
    camera_bp.set_attribute("image_size_x", "640")
    camera_bp.set_attribute("image_size_y", "360")
    camera = world.spawn_actor(camera_bp, carla.Transform(carla.Location(x=-5.0, z=2.5)), attach_to=car)
    return world, car, camera


def test_a_busy_user_thread_that_looks_at_the_world_sees_it_advance():
    """manual_control.py without --sync: its main thread keeps the GIL in a busy loop, and the
    world's clock thread, a thread of the same process, got ~1 step/s. Looking at the world while
    the clock is late waits for its next step, so every look after a step's time sees a new frame."""
    world, car, camera = _async_world_with_camera()
    images = []
    camera.listen(images.append)
    world.wait_for_tick()
    frames = []
    for _ in range(20):
        spin(3 * world.delta_seconds())
        car.get_transform()
        frames.append(world.get_snapshot().frame)
    camera.destroy()
    assert np.all(np.diff(frames) >= 1), frames
    assert len(images) >= 20


def test_a_sensor_callback_that_waits_on_the_user_thread_does_not_hang_it(monkeypatch):
    """The wait for a late clock is bounded: a callback blocked on a lock the looking thread holds
    (the clock cannot step) costs that thread at most PACE_WAIT_SECONDS, then it goes on."""
    monkeypatch.setattr(world_module, "PACE_WAIT_SECONDS", 0.3)
    world, car, camera = _async_world_with_camera()
    lock, calls = threading.Lock(), []

    def callback(image):
        with lock:
            calls.append(image.frame)
            world.get_snapshot()                            # the clock's own thread never waits
    camera.listen(callback)
    world.wait_for_tick()
    with lock:
        spin(3 * world.delta_seconds())
        start = time.perf_counter()
        car.get_transform()
        car.get_transform()
        waited = time.perf_counter() - start
    camera.destroy()
    assert 0.25 < waited < 1.0, waited                  # one bounded wait, not one per call
    assert calls


def test_async_bench_measures_every_case_and_rejects_bad_input(capsys):
    from carla_embedded.bench_async import CASES, main, run_async_bench

    rates = run_async_bench("Embedded01", (64, 48), 0.3, CASES[:3])
    assert list(rates) == list(CASES[:3]) and all(r > 0 for r in rates.values())
    with pytest.raises(SystemExit) as exit_info:
        main(["--seconds", "0"])
    assert exit_info.value.code == 2 and "--seconds 0" in capsys.readouterr().err


def test_a_car_stuck_in_a_crash_can_back_away():
    client, world = sync_world()
    library = world.get_blueprint_library()
    parked = world.spawn_actor(library.find("vehicle.audi.a2"), towards_junction(world, 30))
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), towards_junction(world, 45))
    parked.apply_control(carla.VehicleControl(hand_brake=True))
    ego.apply_control(carla.VehicleControl(throttle=1.0))
    crashed = []
    for _ in range(100):
        world.tick()
        crashed += world._contacts
    assert crashed and speed(ego) < 0.5 and ego.get_location().x > parked.get_location().x
    ego.apply_control(carla.VehicleControl(throttle=0.6, reverse=True))
    for _ in range(60):
        world.tick()
    assert not world._contacts and ego.get_location().x - parked.get_location().x > 6.0
