"""Driving experts: registry, parameters, and closed-loop behaviour on synthetic routes (no simulator).

The plant is a plain kinematic bicycle (what any car does at town speeds), so the tests check the
experts' regimes, not the embedded simulator.
"""
import math

import numpy as np
import pytest

import carla

from carla_client.route import RoutePath
from control.experts import (CURVE_PARAMS, STRAIGHT_PARAMS, Observation, RouteFollowingExpert, create_expert,
                             expert_names, register_expert, EXPERTS)
from control.moe import MoEController
from control.gates import create_gate


def _straight_then_arc(radius=15.0, straight=60.0, arc_deg=90.0, step=0.5):
    """A straight along +x, then a right-hand arc (CARLA: yaw grows clockwise, +y is right)."""
    xs = np.arange(0.0, straight, step)
    pts = [(x, 0.0, 0.0) for x in xs]
    n = int(math.radians(arc_deg) * radius / step)
    for k in range(1, n + 1):
        a = k * step / radius
        pts.append((straight + radius * math.sin(a), radius * (1 - math.cos(a)), math.degrees(a)))
    end_x, end_y, end_yaw = pts[-1]
    for k in range(1, 80):
        yaw = math.radians(end_yaw)
        pts.append((end_x + k * step * math.cos(yaw), end_y + k * step * math.sin(yaw), end_yaw))
    x, y, yaw = zip(*pts)
    return RoutePath.from_points(x, y, yaw)


def _drive(expert_or_moe, path, ticks=900, dt=0.05, wheelbase=2.875, max_steer_deg=70.0, start_speed=0.0):
    """Kinematic bicycle under the expert; returns (distances to route, speeds km/h, steers)."""
    x, y, yaw, v = 0.0, 0.0, 0.0, start_speed
    dists, speeds, steers = [], [], []
    hint = 0
    for i in range(ticks):
        obs = Observation(carla.Transform(carla.Location(x=x, y=y), carla.Rotation(yaw=math.degrees(yaw))),
                          carla.Vector3D(v * math.cos(yaw), v * math.sin(yaw), 0.0), timestamp=i * dt)
        if isinstance(expert_or_moe, MoEController):
            c = expert_or_moe.run_step(obs, p_curve=None, truth=_truth(path, x, y)).control
        else:
            c = expert_or_moe.run_step(obs)
        if expert_or_moe.done():
            break
        delta = c.steer * math.radians(max_steer_deg)
        v = max(0.0, v + (4.0 * c.throttle - 8.0 * c.brake - 0.02 * v * v) * dt)
        yaw += v / wheelbase * math.tan(delta) * dt
        x += v * math.cos(yaw) * dt
        y += v * math.sin(yaw) * dt
        _, hint, d = path.project(x, y, hint)
        dists.append(d)
        speeds.append(v * 3.6)
        steers.append(c.steer)
    return np.array(dists), np.array(speeds), np.array(steers)


def _truth(path, x, y):
    from carla_client.labels import LabelParams, label_at
    s0, _, _ = path.project(x, y, 0, window=None)
    ev = label_at(path, s0, LabelParams())
    return ev.label if ev else None


def test_registry_has_both_experts_and_rejects_unknown():
    assert set(expert_names()) >= {"curve", "straight"}
    path = _straight_then_arc()
    with pytest.raises(ValueError, match="unknown expert 'left'; valid: .*straight.*curve|unknown expert 'left'"):
        create_expert("left", path)
    with pytest.raises(ValueError, match="unknown parameter.*target_speed.*valid: .*cruise_speed_kmh"):
        create_expert("straight", path, target_speed=50)


def test_regimes_differ_as_documented():
    assert STRAIGHT_PARAMS.cruise_speed_kmh > CURVE_PARAMS.cruise_speed_kmh
    assert STRAIGHT_PARAMS.lookahead_min > CURVE_PARAMS.lookahead_min
    assert STRAIGHT_PARAMS.lookahead_gain > CURVE_PARAMS.lookahead_gain
    e = create_expert("curve", _straight_then_arc(), cruise_speed_kmh=15.0)
    assert e.params.cruise_speed_kmh == 15.0 and e.params.lookahead_min == CURVE_PARAMS.lookahead_min


def test_straight_expert_is_faster_on_a_straight_and_stays_on_the_line():
    path = RoutePath.from_points(np.arange(0, 400, 1.0), np.zeros(400), np.zeros(400))
    d_s, v_s, _ = _drive(create_expert("straight", path), path, ticks=500)
    d_c, v_c, _ = _drive(create_expert("curve", path), path, ticks=500)
    assert v_s[-100:].mean() == pytest.approx(STRAIGHT_PARAMS.cruise_speed_kmh, abs=4)
    assert v_c[-100:].mean() == pytest.approx(CURVE_PARAMS.cruise_speed_kmh, abs=3)
    assert d_s.max() < 0.3 and d_c.max() < 0.3


def test_curve_expert_tracks_a_tight_bend_better_than_the_straight_expert():
    path = _straight_then_arc(radius=12.0)
    d_s, v_s, _ = _drive(create_expert("straight", path), path)
    d_c, v_c, _ = _drive(create_expert("curve", path), path)
    assert d_c.max() < 0.9                       # stays in its lane (half a 3.5 m lane minus half a car)
    assert d_c.max() < 0.6 * d_s.max()           # and clearly better than the straight regime here
    assert v_c.max() < v_s.max()


def test_oracle_moe_hands_the_bend_to_the_curve_expert():
    path = _straight_then_arc(radius=12.0)
    experts = {n: create_expert(n, path) for n in ("straight", "curve")}
    moe = MoEController(experts, create_gate("oracle"))
    d, v, _ = _drive(moe, path)
    d_s, _, _ = _drive(create_expert("straight", path), path)
    assert d.max() < 0.6 * d_s.max()
    assert v[:100].max() > CURVE_PARAMS.cruise_speed_kmh + 5  # straight expert in charge before the bend


def test_learned_expert_slot():
    class Vision:
        name = "vision"

        def run_step(self, obs):
            return carla.VehicleControl(throttle=0.3, steer=0.0)

        def done(self):
            return False

    register_expert("vision", lambda route, vehicle=None, dt=0.05, **kw: Vision())
    try:
        assert create_expert("vision", None).run_step(None).throttle == pytest.approx(0.3)
    finally:
        EXPERTS.pop("vision")
