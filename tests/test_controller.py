"""Route follower: sign conventions, clipping, and closed-loop tracking on a real Town02 route."""
import math
import os

import numpy as np
import pytest

import carla
from carla_client.planner import GlobalRoutePlanner
from carla_client.route import RoutePath
from carla_client.follower import (TOWN, FollowerParams, PIDState, RouteFollower, VehicleKinematics, control_from,
                                pid_step, pure_pursuit_steer)


@pytest.mark.parametrize("yaw", [0.0, 90.0, -135.0])
def test_pure_pursuit_steers_towards_target_in_carla_convention(yaw):
    state = VehicleKinematics(10.0, -5.0, yaw, 8.0)
    r = math.radians(yaw)
    fwd, right = (math.cos(r), math.sin(r)), (-math.sin(r), math.cos(r))
    ahead_right = (10 + 8 * fwd[0] + 2 * right[0], -5 + 8 * fwd[1] + 2 * right[1])
    ahead_left = (10 + 8 * fwd[0] - 2 * right[0], -5 + 8 * fwd[1] - 2 * right[1])
    straight = (10 + 8 * fwd[0], -5 + 8 * fwd[1])
    assert pure_pursuit_steer(state, ahead_right, 2.9, 70.0) > 0      # right of the car: positive steer
    assert pure_pursuit_steer(state, ahead_left, 2.9, 70.0) < 0
    assert pure_pursuit_steer(state, straight, 2.9, 70.0) == pytest.approx(0.0, abs=1e-9)


def test_pure_pursuit_matches_arc_geometry():
    # target on a circle of radius R through the car: steer angle must be atan(L / R)
    R, L, max_deg = 20.0, 2.9, 70.0
    phi = 0.4
    target = (R * math.sin(phi), R * (1 - math.cos(phi)))
    steer = pure_pursuit_steer(VehicleKinematics(0, 0, 0, 5), target, L, max_deg)
    assert steer * math.radians(max_deg) == pytest.approx(math.atan(L / R), rel=1e-6)


def test_controls_are_clipped_and_exclusive():
    c = control_from(3.0, 5.0, TOWN)
    assert (c.steer, c.throttle, c.brake) == (pytest.approx(1.0), pytest.approx(TOWN.max_throttle), 0.0)
    c = control_from(-3.0, -5.0, TOWN)
    assert (c.steer, c.throttle, c.brake) == (pytest.approx(-1.0), 0.0, pytest.approx(TOWN.max_brake))


def test_pid_signs_and_antiwindup():
    out, st = pid_step(5.0, PIDState(), 0.05, TOWN)
    assert out > 0
    out, _ = pid_step(-5.0, PIDState(), 0.05, TOWN)
    assert out < 0
    st = PIDState()
    for _ in range(10000):
        _, st = pid_step(1.0, st, 0.05, TOWN)
    assert st.integral == pytest.approx(TOWN.integral_limit)
    _, st = pid_step(10.0, PIDState(), 0.05, TOWN)   # launch from standstill: no wind-up
    assert st.integral == 0.0


def test_bad_params_rejected():
    with pytest.raises(ValueError, match="min_speed_kmh"):
        FollowerParams(cruise_speed_kmh=10, min_speed_kmh=20)
    with pytest.raises(ValueError, match="max_throttle"):
        FollowerParams(max_throttle=1.5)


class BicycleCar:
    """Minimal plant with the carla.Vehicle surface the follower reads (kinematic bicycle)."""

    def __init__(self, x, y, yaw, wheelbase=2.875, max_steer_deg=70.0):
        self.x, self.y, self.yaw, self.v = x, y, yaw, 0.0
        self.L, self.max_steer = wheelbase, max_steer_deg

    def get_transform(self):
        return carla.Transform(carla.Location(self.x, self.y, 0.0), carla.Rotation(yaw=self.yaw))

    def get_velocity(self):
        r = math.radians(self.yaw)
        return carla.Vector3D(self.v * math.cos(r), self.v * math.sin(r), 0.0)

    def step(self, c, dt):
        self.v = max(0.0, self.v + (3.5 * c.throttle - 8.0 * c.brake) * dt)
        delta = math.radians(c.steer * self.max_steer)
        r = math.radians(self.yaw)
        self.x += self.v * math.cos(r) * dt
        self.y += self.v * math.sin(r) * dt
        self.yaw += math.degrees(self.v / self.L * math.tan(delta) * dt)


@pytest.fixture(scope="module")
def town02_route():
    with open(os.path.join(os.environ["CARLA_MAPS_DIR"], "Town02.xodr"), encoding="utf-8") as f:
        wmap = carla.Map("Town02", f.read())
    planner = GlobalRoutePlanner(wmap, 1.0)
    start = planner.spawn_waypoints(10.0)[0]
    return planner.random_route(start, 800.0, np.random.default_rng(2), turn_probability=1.0)


def drive(route, params=TOWN, max_steer_deg=70.0, dt=0.05):
    w0 = route[0][0].transform
    car = BicycleCar(w0.location.x, w0.location.y, w0.rotation.yaw, max_steer_deg=max_steer_deg)
    follower = RouteFollower(car, params, dt=dt)
    follower.set_route(route)
    errors, speeds, kappas = [], [], []
    path = follower.path
    for _ in range(int(200 / dt)):
        c = follower.run_step()
        assert -1 <= c.steer <= 1 and 0 <= c.throttle <= 1 and 0 <= c.brake <= 1
        car.step(c, dt)
        errors.append(follower.lateral_error)
        speeds.append(car.v * 3.6)
        kappas.append(path.max_curvature(follower.progress, follower.progress + 2.0))
        if follower.done():
            break
    return follower, np.array(errors), np.array(speeds), np.array(kappas)


def test_follows_a_town02_route_with_turns_at_town_speed(town02_route):
    follower, err, speed, kappa = drive(town02_route)
    assert follower.done()                       # reached the end of an 800 m route with turns
    assert np.mean(err) < 0.3 and np.max(err) < 1.0
    straight = kappa < 0.005
    turning = kappa > 0.05
    assert turning.sum() > 20
    assert np.percentile(speed[straight], 90) == pytest.approx(TOWN.cruise_speed_kmh, abs=2.0)
    assert np.max(speed) < TOWN.cruise_speed_kmh + 3.0
    assert np.mean(speed[turning]) < 0.8 * TOWN.cruise_speed_kmh   # slows for junction turns


@pytest.mark.parametrize("plant_max_steer", [35.0, 140.0])
def test_tolerates_a_steering_gain_mismatch(town02_route, plant_max_steer):
    # the plant steers half (or twice) as much as the follower believes (unknown vehicle physics)
    follower, err, _, _ = drive(town02_route, max_steer_deg=plant_max_steer)
    assert follower.done()
    assert np.max(err) < 2.0
