"""carla_client.traffic and carla_client.infractions on the embedded simulator."""
from types import SimpleNamespace

import pytest

import carla
from carla_client.infractions import PENALTIES, InfractionMonitor
from carla_client.traffic import Traffic, TrafficConfig
from carla_embedded import Client
from tests.sim_world import sync_world


def npcs(world):
    return [a for a in world.get_actors() if a.type_id.startswith(("vehicle.", "walker.", "controller."))]


def test_traffic_spawns_moves_and_cleans_up():
    client, world = sync_world("Town02")
    ego_spawn = world.get_map().get_spawn_points()[0]
    config = TrafficConfig(vehicles=12, walkers=5, seed=3, tm_port=8010)
    with Traffic(client, world, config, avoid=[ego_spawn.location]) as traffic:
        assert len(traffic.vehicle_ids) == 12 and len(traffic.walker_ids) == 5 and len(traffic.controller_ids) == 5
        vehicles = world.get_actors(traffic.vehicle_ids)
        assert all(v.get_location().distance(ego_spawn.location) >= config.clearance_m for v in vehicles)
        assert all(int(v.attributes["number_of_wheels"]) == 4 for v in vehicles)
        start = {a.id: a.get_location() for a in world.get_actors(traffic.vehicle_ids + traffic.walker_ids)}
        for _ in range(200):
            world.tick()
        moved = {i: world.get_actor(i).get_location().distance(loc) for i, loc in start.items()}
        assert sum(moved[i] > 5.0 for i in traffic.vehicle_ids) >= 9
        assert sum(moved[i] > 2.0 for i in traffic.walker_ids) >= 4
    assert npcs(world) == []


def test_traffic_is_seeded():
    def first_layout(seed):
        client, world = sync_world("Embedded01")
        with Traffic(client, world, TrafficConfig(vehicles=6, seed=seed, tm_port=8011)) as traffic:
            return sorted((a.type_id, round(a.get_location().x, 1), round(a.get_location().y, 1))
                          for a in world.get_actors(traffic.vehicle_ids))
    assert first_layout(5) == first_layout(5) != first_layout(6)


def test_traffic_bad_filter_leaves_nothing_behind():
    client, world = sync_world("Embedded01")
    with pytest.raises(ValueError, match="'vehicle.nope.\\*'"):
        with Traffic(client, world, TrafficConfig(vehicles=2, walkers=2, vehicle_filter="vehicle.nope.*")):
            pass
    assert npcs(world) == []
    with pytest.raises(ValueError, match="walkers=-1"):
        TrafficConfig(walkers=-1)


def _towards_junction(world, x):
    wp = world.get_map().get_waypoint(carla.Location(x=x, y=-1.75))
    return carla.Transform(carla.Location(wp.transform.location.x, wp.transform.location.y, 0.5),
                           carla.Rotation(yaw=wp.transform.rotation.yaw))


@pytest.mark.parametrize("state, runs", [(carla.TrafficLightState.Red, 1), (carla.TrafficLightState.Green, 0)])
def test_red_light_runs_are_counted(state, runs):
    client, world = sync_world("Embedded01")
    ego = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"), _towards_junction(world, 50))
    light = next(l for l in world.get_actors().filter("*traffic_light*")
                 if (l.get_stop_waypoints()[0].road_id, l.get_stop_waypoints()[0].lane_id) == (1, 1))
    light.set_state(state)
    light.freeze(True)
    with InfractionMonitor(world, ego, collisions=False) as monitor:
        ego.apply_control(carla.VehicleControl(throttle=0.7))
        for _ in range(400):                        # straight through the junction, ignoring the light
            world.tick()
            monitor.update()
            if ego.get_location().x < 0.0:
                break
    assert ego.get_location().x < 0.0
    assert monitor.counts()["red_light"] == runs and monitor.penalty() == pytest.approx(0.7 ** runs)


def test_collisions_are_classified_with_leaderboard_penalties():
    client, world = sync_world("Embedded01")
    ego = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"), _towards_junction(world, 50))
    monitor = InfractionMonitor(world, ego, collisions=False)

    def event(t, type_id, actor_id):
        return SimpleNamespace(other_actor=SimpleNamespace(type_id=type_id, id=actor_id), timestamp=t, frame=int(t * 20),
                               transform=ego.get_transform())
    for e in (event(1.0, "walker.pedestrian.0001", 7), event(1.05, "walker.pedestrian.0001", 7),   # one contact
              event(2.0, "vehicle.audi.a2", 8), event(3.0, "static.prop.bench", 9), event(9.0, "vehicle.audi.a2", 8)):
        monitor._on_collision(e)
    assert monitor.counts() == {"collision_pedestrian": 1, "collision_vehicle": 2, "collision_static": 1, "red_light": 0}
    assert monitor.penalty() == pytest.approx(0.5 * 0.6 * 0.6 * 0.65)
    assert PENALTIES == {"collision_pedestrian": 0.50, "collision_vehicle": 0.60, "collision_static": 0.65,
                         "red_light": 0.70}


def test_collision_sensor_is_required_when_asked():
    client, world = sync_world("Embedded01")
    ego = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"), _towards_junction(world, 50))
    if world.get_blueprint_library().filter("sensor.other.collision"):
        with InfractionMonitor(world, ego) as monitor:
            assert monitor._sensor is not None and monitor._sensor.is_listening()
        assert monitor._sensor is None
    else:
        with pytest.raises(RuntimeError, match="sensor.other.collision.*collisions=False"):
            InfractionMonitor(world, ego).__enter__()


def test_town_profiles_come_from_the_map():
    from carla_client.town_profile import town_profile

    profiles = {town: town_profile(Client().load_world(town).get_map()) for town in ("Town02", "Town03")}
    small, large = profiles["Town02"], profiles["Town03"]
    assert small.name == "Town02" and small.spawn_points == len(Client().load_world("Town02").get_map().get_spawn_points())
    assert large.lane_km > small.lane_km and large.junctions > small.junctions and large.vehicles > small.vehicles
    assert large.elevation_m > 5.0 > small.elevation_m                    # Town03's ramps, flat Town02
    assert 0 < small.walkers < small.vehicles and 200.0 <= small.route_m <= large.route_m


def test_traffic_in_an_asynchronous_world():
    client = Client()
    world = client.load_world("Embedded01")                     # asynchronous: it runs by itself
    with Traffic(client, world, TrafficConfig(vehicles=4, walkers=2, seed=1, tm_port=8012)) as traffic:
        start = {a.id: a.get_location() for a in world.get_actors(traffic.vehicle_ids)}
        frame = world.get_snapshot().frame
        for _ in range(40):
            world.wait_for_tick()
        assert world.get_snapshot().frame >= frame + 40
        assert sum(world.get_actor(i).get_location().distance(loc) > 2.0 for i, loc in start.items()) >= 3
    assert npcs(world) == []
