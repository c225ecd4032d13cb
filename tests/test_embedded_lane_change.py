"""Traffic Manager lane changes in the embedded world, as a CARLA user sees them: force_lane_change
(True = right, as CARLA), overtaking a stopped car with auto_lane_change, and the places and
moments where a car must keep its lane.

Town04's road 38 is a straight four-lane highway (lanes -1..-4 drive the same way); spawn point 323
is on its outer lane -4, whose only same-direction neighbour is -3 on its left."""
import pytest

import carla
from tests.sim_world import DT, sync_world

HIGHWAY_SPAWN = 323              # Town04, road 38, lane -4 (lane_change: Left)


def on_ground(wp):
    t = wp.transform
    return carla.Transform(carla.Location(t.location.x, t.location.y, t.location.z + 0.5), t.rotation)


def spawn(world, blueprint, wp):
    return world.spawn_actor(world.get_blueprint_library().find(blueprint), on_ground(wp))


def lane_of(world, actor):
    """(road, lane, metres from that lane's centre) of the actor."""
    wp = world.get_map().get_waypoint(actor.get_location())
    return wp.road_id, wp.lane_id, wp.transform.location.distance(actor.get_location())


def ahead_of(a, b) -> float:
    """How far ``a`` is ahead of ``b`` along ``b``'s heading, m."""
    return (a.get_location() - b.get_location()).dot(b.get_transform().get_forward_vector())


def highway_start(world):
    wp = world.get_map().get_waypoint(world.get_map().get_spawn_points()[HIGHWAY_SPAWN].location)
    assert (wp.road_id, wp.lane_id, wp.lane_change) == (38, -4, carla.LaneChange.Left)
    return wp


def highway_pair(port, other_at, car_kmh, other_kmh):
    """(world, tm, car, other): a Tesla at the highway start (lane -4) and an Audi at ``other_at(start)``,
    both on the Traffic Manager at ``port`` with their desired speeds."""
    client, world = sync_world("Town04")
    tm = client.get_trafficmanager(port)
    start = highway_start(world)
    car = spawn(world, "vehicle.tesla.model3", start)
    other = spawn(world, "vehicle.audi.a2", other_at(start))
    for actor, kmh in ((car, car_kmh), (other, other_kmh)):
        tm.set_desired_speed(actor, kmh)
        actor.set_autopilot(True, port)
    return world, tm, car, other


# -- (a) force_lane_change -------------------------------------------------------------------------
def force_and_watch(world, tm, car, direction, lane, expected, ticks=200, tol=0.2):
    """Force a change; returns (seconds until the car is within ``tol`` m of ``expected``'s centre,
    metres driven from leaving ``lane``'s centre by ``tol`` to then, the lanes it was on from then on).
    No contact meanwhile."""
    tm.force_lane_change(car, direction)
    origin = car.get_location()
    left_own = arrived = None
    lanes = []
    for k in range(ticks):
        world.tick()
        assert not world._contacts
        _, lane_id, off = lane_of(world, car)
        lanes.append(lane_id)
        if left_own is None and (lane_id != lane or off > tol):
            left_own = car.get_location()
            assert left_own.distance(origin) < 10.0                          # it started at once
        if arrived is None and lane_id == expected and off < tol:
            arrived = (k, car.get_location())
    assert arrived is not None, lanes
    return arrived[0] * DT, left_own.distance(arrived[1]), lanes[arrived[0]:]


@pytest.mark.parametrize("lane, direction, expected", [(-4, False, -3), (-3, True, -4), (-3, False, -2)],
                         ids=["-4 left", "-3 right", "-3 left"])
def test_force_lane_change_moves_smoothly_to_the_neighbour_lane_and_keeps_it(lane, direction, expected):
    client, world = sync_world("Town04")
    tm = client.get_trafficmanager(8010)
    start = highway_start(world)
    while start.lane_id != lane:
        start = start.get_left_lane()
    car = spawn(world, "vehicle.tesla.model3", start)
    car.set_autopilot(True, 8010)
    for _ in range(40):                            # 2 s: rolling at ~4 m/s
        world.tick()
    seconds, metres, after = force_and_watch(world, tm, car, direction, lane, expected)
    assert seconds < 6.0 and 15.0 < metres < 45.0                        # a lateral move over ~20-30 m
    assert set(after) == {expected} and lane_of(world, car)[2] < 0.1      # then it keeps that lane, centred


def test_force_lane_change_at_highway_speed():
    client, world = sync_world("Town04")
    tm = client.get_trafficmanager(8017)
    wp = world.get_map().get_waypoint(world.get_map().get_spawn_points()[617].location)
    assert (wp.road_id, wp.lane_id) == (45, -4)                           # 575 m of four-lane highway
    car = spawn(world, "vehicle.tesla.model3", wp)
    tm.vehicle_percentage_speed_difference(car, 0.0)                      # the limit: 104 km/h
    car.set_autopilot(True, 8017)
    for _ in range(250):
        world.tick()
    assert car.get_velocity().length() > 17.0
    seconds, metres, after = force_and_watch(world, tm, car, False, -4, -3, ticks=160, tol=0.5)
    assert seconds < 4.0 and 25.0 < metres < 60.0 and set(after) == {-3}
    assert car.get_velocity().length() > 15.0


# -- (b) overtaking with auto_lane_change ------------------------------------------------------------
@pytest.mark.parametrize("auto", [True, False], ids=["auto on", "auto off"])
def test_a_car_overtakes_a_stopped_car_only_with_auto_lane_change(auto):
    client, world = sync_world("Town04")
    tm = client.get_trafficmanager(8011)
    start = highway_start(world)
    parked = spawn(world, "vehicle.audi.a2", start.next(80.0)[0])
    parked.apply_control(carla.VehicleControl(hand_brake=True))          # an NPC without autopilot, braked
    car = spawn(world, "vehicle.tesla.model3", start)
    tm.auto_lane_change(car, auto)
    car.set_autopilot(True, 8011)
    contacts, passing_lane = 0, None
    for _ in range(500):                                                   # 25 s
        world.tick()
        contacts += len(world._contacts)
        if passing_lane is None and ahead_of(car, parked) > 0.0:
            passing_lane = lane_of(world, car)
    assert contacts == 0
    if auto:
        assert passing_lane[:2] == (38, -3) and passing_lane[2] < 0.5 and ahead_of(car, parked) > 50.0
    else:
        gap = -ahead_of(car, parked) - 2.40 - 1.86                         # bumper to bumper
        assert 1.0 < gap < 6.0 and car.get_velocity().length() < 0.1 and lane_of(world, car)[:2] == (38, -4)


# -- (c) where and when a car keeps its lane -----------------------------------------------------------
def keeps_its_lane(world, car, ticks, lane):
    """Tick; every tick the car is on ``lane`` within 0.3 m of its centre and touches nobody."""
    for _ in range(ticks):
        world.tick()
        road, lane_id, off = lane_of(world, car)
        assert lane_id == lane and off < 0.3 and not world._contacts, (road, lane_id, off)


def test_force_lane_change_is_ignored_where_markings_forbid_it():
    client, world = sync_world("Town04")
    tm = client.get_trafficmanager(8012)
    wp = world.get_map().get_waypoint_xodr(23, -3, 1.0)          # solid line to lane -2 for ~10 m, then dashed
    left = wp.get_left_lane()
    assert wp.lane_change == carla.LaneChange.NONE and left.lane_type == carla.LaneType.Driving and left.lane_id == -2
    assert wp.next(15.0)[0].lane_change == carla.LaneChange.Left
    car = spawn(world, "vehicle.tesla.model3", wp)
    car.set_autopilot(True, 8012)
    world.tick()
    tm.force_lane_change(car, False)
    keeps_its_lane(world, car, 200, -3)         # dropped at once, as CARLA: not taken later where the line allows it
    assert car.get_location().distance(wp.transform.location) > 25.0

def test_force_lane_change_is_ignored_without_a_same_direction_lane():
    client, world = sync_world("Town04")
    tm = client.get_trafficmanager(8013)
    car = spawn(world, "vehicle.tesla.model3", highway_start(world))
    car.set_autopilot(True, 8013)
    for _ in range(40):
        world.tick()
    tm.force_lane_change(car, True)             # right of the outer lane: the shoulder
    keeps_its_lane(world, car, 100, -4)
    _, world = sync_world("Embedded01")         # one lane per direction: the left one drives the other way
    car = spawn(world, "vehicle.tesla.model3", world.get_map().get_waypoint(carla.Location(x=55, y=-1.75)))
    car.set_autopilot(True, 8013)
    world.tick()
    tm.force_lane_change(car, False)
    keeps_its_lane(world, car, 60, 1)


def test_no_lane_change_into_a_car_alongside():
    world, tm, car, beside = highway_pair(8014, lambda start: start.get_left_lane().next(1.0)[0], 30.0, 30.0)
    for _ in range(40):
        world.tick()
    tm.force_lane_change(car, False)
    keeps_its_lane(world, car, 200, -4)         # alongside the whole time: the request waits, then lapses
    assert abs(ahead_of(beside, car)) < 4.0


def test_a_forced_change_waits_until_the_car_alongside_has_passed():
    world, tm, car, beside = highway_pair(8015, lambda start: start.get_left_lane().next(2.0)[0], 30.0, 60.0)
    for _ in range(40):
        world.tick()
    tm.force_lane_change(car, False)
    changed_behind = None
    for _ in range(200):
        world.tick()
        assert not world._contacts
        if changed_behind is None and lane_of(world, car)[1] == -3:
            changed_behind = ahead_of(beside, car)
    assert changed_behind is not None and changed_behind > 8.0


def test_a_forced_change_lets_a_faster_car_coming_up_behind_pass_first():
    world, tm, car, fast = highway_pair(8018, lambda start: start.get_left_lane().previous(50.0)[0], 20.0, 80.0)
    while ahead_of(car, fast) > 20.0:                 # ~13 m/s against 5.6 m/s, 20 m behind in the target lane
        world.tick()
    tm.force_lane_change(car, False)
    fast_ahead_at_start = None
    for _ in range(200):
        world.tick()
        assert not world._contacts
        _, lane_id, off = lane_of(world, car)
        if fast_ahead_at_start is None and (lane_id != -4 or off > 0.3):
            fast_ahead_at_start = ahead_of(fast, car)
    assert fast_ahead_at_start is not None and fast_ahead_at_start > 0.0 and lane_of(world, car)[1] == -3


# -- random lane changes and the keep-slow-lane rule ---------------------------------------------------
def test_random_left_changes_and_the_keep_slow_lane_rule():
    client, world = sync_world("Town04")
    tm = client.get_trafficmanager(8016)
    tm.set_random_device_seed(1)
    start = highway_start(world)
    weaver = spawn(world, "vehicle.tesla.model3", start)
    keeper = spawn(world, "vehicle.audi.a2", start.get_left_lane().get_left_lane().next(30.0)[0])   # lane -2
    tm.random_left_lanechange_percentage(weaver, 100)
    tm.keep_slow_lane_rule_percentage(keeper, 100)
    for actor in (weaver, keeper):
        tm.set_desired_speed(actor, 25.0)        # above CARLA's 5 m/s for these rules; 10 s of travel between changes
        actor.set_autopilot(True, 8016)
    weaver_lanes, keeper_lanes = [], []
    for _ in range(400):                        # 20 s, all on road 38
        world.tick()
        for car, lanes in ((weaver, weaver_lanes), (keeper, keeper_lanes)):
            road, lane, _ = lane_of(world, car)
            assert road == 38 and not world._contacts
            lanes.append(lane)
    assert weaver_lanes[0] == -4 and weaver_lanes[-1] in (-3, -2)         # one or two changes, all to the left
    assert all(b >= a for a, b in zip(weaver_lanes, weaver_lanes[1:]))
    assert keeper_lanes[0] == -2 and keeper_lanes[-1] in (-3, -4)         # back towards the slow lane
    assert all(b <= a for a, b in zip(keeper_lanes, keeper_lanes[1:]))
