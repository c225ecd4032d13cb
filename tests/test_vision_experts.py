"""Vision experts: route command at the car, one batched inference per frame, finite clipped controls,
and the MoE controller gating them like the route followers."""
from types import SimpleNamespace

import numpy as np
import pytest

import carla

from carla_client.planner import RoadOption
from control.experts import EXPERTS, Observation, create_expert
from control.gates import create_gate
from control.moe import MoEController
from control.vision_experts import VisionExpertSet, expert_slots


class FakeRuntime:
    """Stands in for PolicyRuntime: records its calls, returns fixed per-expert controls."""

    def __init__(self, outputs, experts=("curve", "straight")):
        self.experts = experts
        self.outputs = np.asarray(outputs, np.float32)
        self.calls = []

    def predict(self, frame, speed_kmh, command):
        self.calls.append((frame.shape, round(speed_kmh, 3), command))
        return self.outputs


def _route(n=30, step=2.0, turn_from=15):
    wp = lambda i: SimpleNamespace(transform=carla.Transform(carla.Location(x=i * step, y=0.0)))  # noqa: E731
    return [(wp(i), RoadOption.LEFT if i >= turn_from else RoadOption.LANEFOLLOW) for i in range(n)]


def _obs(x, frame, speed=10.0):
    return Observation(carla.Transform(carla.Location(x=x, y=0.5)), carla.Vector3D(speed / 3.6, 0, 0),
                       frame=frame, image=np.zeros((12, 16, 4), np.uint8))


def test_experts_share_one_inference_per_frame_with_the_route_command():
    rt = FakeRuntime([[0.2, 0.5, 0.0], [-0.1, 0.7, 0.0]])
    vs = VisionExpertSet(rt, prefix="t1_")
    try:
        route = _route()
        curve, straight = create_expert("t1_curve", route), create_expert("t1_straight", route)
        c = curve.run_step(_obs(2.0, frame=1))
        s = straight.run_step(_obs(2.0, frame=1))
        assert len(rt.calls) == 1                                   # batched: one call for both experts
        assert (c.steer, c.throttle) == pytest.approx((0.2, 0.5)) and s.steer == pytest.approx(-0.1)
        assert rt.calls[0] == ((12, 16, 4), 10.0, "LANEFOLLOW")
        curve.run_step(_obs(22.0, frame=2))                          # 8 m before the turn: announced
        assert rt.calls[-1][2] == "LEFT"
        assert not curve.done()
        curve.run_step(_obs(58.0, frame=3))
        assert curve.done() and straight.done()
    finally:
        for n in vs.names:
            EXPERTS.pop(n, None)


def test_controls_are_finite_and_clipped():
    rt = FakeRuntime([[3.0, 7.0, -2.0], [np.nan, 0.5, 0.0]])
    vs = VisionExpertSet(rt, prefix="t2_")
    try:
        route = _route()
        big = create_expert("t2_curve", route).run_step(_obs(0.0, 1))
        assert (big.steer, big.throttle, big.brake) == (1.0, 1.0, 0.0)
        nan = create_expert("t2_straight", route).run_step(_obs(0.0, 1))
        assert (nan.steer, nan.throttle, nan.brake) == (0.0, 0.0, 1.0)
        with pytest.raises(ValueError, match="takes no parameters"):
            create_expert("t2_curve", route, cruise_speed_kmh=30)
    finally:
        for n in vs.names:
            EXPERTS.pop(n, None)


def test_moe_gates_vision_experts_in_the_curve_straight_slots():
    rt = FakeRuntime([[0.4, 0.3, 0.0], [-0.2, 0.6, 0.0]])
    vs = VisionExpertSet(rt, prefix="t3_")
    before = dict(EXPERTS)
    try:
        route = _route()
        with expert_slots({"curve": "t3_curve", "straight": "t3_straight"}):
            experts = {n: create_expert(n, route) for n in ("straight", "curve")}
        assert EXPERTS["curve"] is before["curve"]                  # slots restored after the block
        soft = MoEController(experts, create_gate("soft"))
        step = soft.run_step(_obs(4.0, 1), p_curve=1.0)
        assert step.control.steer == pytest.approx(0.4) and len(rt.calls) == 1
        step = soft.run_step(_obs(4.0, 2), p_curve=0.0)              # EMA 0.5 -> halfway blend
        assert step.control.steer == pytest.approx(0.5 * 0.4 + 0.5 * -0.2)
        oracle = MoEController(experts, create_gate("oracle"))
        assert oracle.run_step(_obs(4.0, 3), truth="curve").control.steer == pytest.approx(0.4)
        with pytest.raises(ValueError, match="unknown expert"):
            with expert_slots({"curve": "nope"}):
                pass
    finally:
        for n in vs.names:
            EXPERTS.pop(n, None)


def test_cruise_longitudinal_keeps_learned_steering_and_holds_the_speed():
    from control.vision_experts import cruise_control
    assert cruise_control(0.0, 20.0) == (1.0, 0.0)
    th, br = cruise_control(19.0, 20.0)
    assert 0 < th < 1 and br == 0.0
    assert cruise_control(30.0, 20.0)[0] == 0.0 and cruise_control(30.0, 20.0)[1] > 0
    rt = FakeRuntime([[0.25, 0.0, 1.0], [0.0, 0.0, 1.0]])
    vs = VisionExpertSet(rt, prefix="t4_", longitudinal="cruise", cruise_kmh=20.0)
    try:
        c = create_expert("t4_curve", _route()).run_step(_obs(0.0, 1, speed=5.0))
        assert c.steer == pytest.approx(0.25) and c.throttle > 0.5 and c.brake == 0.0
    finally:
        for n in vs.names:
            EXPERTS.pop(n, None)
    with pytest.raises(ValueError, match="valid: learned, cruise"):
        VisionExpertSet(rt, prefix="t5_", longitudinal="pid")
