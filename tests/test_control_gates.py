"""Gates and the MoE controller: hysteresis, blend weights, fallback and clipping (no simulator)."""
import logging
import math

import numpy as np
import pytest

import carla

from control.experts import Observation
from control.gates import (GATES, FixedGate, HardGate, HardGateParams, OracleGate, SoftGate, create_gate,
                           gate_names)
from control.moe import MoEController, SafetyParams, blend_controls, sanitize_control


def _noisy_p(rng, n, level):
    return np.clip(level + rng.normal(0.0, 0.15, n), 0.0, 1.0)


def _switches(decisions):
    names = [d.in_charge for d in decisions]
    return sum(a != b for a, b in zip(names[:-1], names[1:]))


def test_hard_gate_hysteresis_stops_flicker_on_noisy_p():
    rng = np.random.default_rng(0)
    # 60 frames of straight road, 60 of curve, 60 of straight: noisy p crossing 0.5 often.
    p = np.concatenate([_noisy_p(rng, 60, 0.3), _noisy_p(rng, 60, 0.75), _noisy_p(rng, 60, 0.3)])
    raw_argmax = ["curve" if v >= 0.5 else "straight" for v in p]
    raw_switches = sum(a != b for a, b in zip(raw_argmax[:-1], raw_argmax[1:]))
    gate = HardGate()
    decisions = [gate.update(float(v)) for v in p]
    assert raw_switches >= 10  # the input really does flicker
    assert _switches(decisions) == 2
    assert decisions[30].in_charge == "straight" and decisions[100].in_charge == "curve"
    assert decisions[-1].in_charge == "straight"
    for d in decisions:
        assert sorted(d.weights.values()) == [0.0, 1.0]


def test_hard_gate_without_hysteresis_does_flicker():
    """The same noise through a gate with no smoothing/dwell/band: proves the test above measures something."""
    rng = np.random.default_rng(0)
    p = _noisy_p(rng, 120, 0.5)
    gate = HardGate(HardGateParams(on_threshold=0.5, off_threshold=0.5, ema_alpha=1.0, min_dwell_frames=0))
    assert _switches([gate.update(float(v)) for v in p]) > 10


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.73, 1.0])
def test_soft_gate_weights_sum_to_one_and_follow_p(p):
    gate = SoftGate()
    for _ in range(30):
        d = gate.update(p)
    assert math.isclose(sum(d.weights.values()), 1.0, abs_tol=1e-12)
    assert d.weights["curve"] == pytest.approx(p, abs=1e-6)


def test_soft_gate_random_sequence_weights_always_sum_to_one():
    gate = SoftGate()
    for v in np.random.default_rng(1).random(200):
        d = gate.update(float(v))
        assert math.isclose(sum(d.weights.values()), 1.0, abs_tol=1e-12)
        assert all(0.0 <= w <= 1.0 for w in d.weights.values())


def test_oracle_gate_follows_truth_and_keeps_state_on_ambiguous():
    gate = OracleGate()
    assert gate.update(0.0, "curve").in_charge == "curve"  # ignores the classifier
    assert gate.update(1.0, None).in_charge == "curve"      # ambiguous: keep
    assert gate.update(1.0, "straight").in_charge == "straight"


@pytest.mark.parametrize("name", ["curve", "straight"])
def test_fixed_gates(name):
    gate = create_gate(name)
    for p in (0.0, 1.0, float("nan"), None):
        assert gate.update(p, "curve" if name == "straight" else "straight").in_charge == name


def test_gate_registry_and_errors():
    assert gate_names() == ["hard", "soft", "oracle", "curve", "straight"]
    assert [create_gate(n).needs_model for n in gate_names()] == [True, True, False, False, False]
    with pytest.raises(ValueError, match="unknown gate 'argmax'.*hard, soft, oracle, curve, straight"):
        create_gate("argmax")
    with pytest.raises(ValueError, match="on_threshold"):
        HardGateParams(on_threshold=0.3, off_threshold=0.6)
    with pytest.raises(ValueError, match="unknown expert"):
        FixedGate("left")


@pytest.mark.parametrize("gate_name", ["hard", "soft"])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -0.1, 1.5])
def test_invalid_p_keeps_last_decision(gate_name, bad):
    gate = GATES[gate_name]()
    for _ in range(10):
        before = gate.update(0.95)
    after = gate.update(bad)
    assert not after.valid
    assert after.weights == before.weights


# ------------------------------------------------------------------ MoE controller

class ConstExpert:
    """An expert that returns a fixed control (to test combination, not driving)."""

    def __init__(self, name, steer, throttle, brake=0.0):
        self.name, self.c = name, (steer, throttle, brake)
        self.calls = 0

    def run_step(self, obs):
        self.calls += 1
        s, t, b = self.c
        return carla.VehicleControl(throttle=t, steer=s, brake=b)

    def done(self):
        return False


def _obs():
    return Observation(carla.Transform(), carla.Vector3D(5.0, 0.0, 0.0), timestamp=1.0)


def _moe(gate, curve=(0.8, 0.2), straight=(-0.1, 0.9)):
    return MoEController({"curve": ConstExpert("curve", *curve), "straight": ConstExpert("straight", *straight)},
                         create_gate(gate) if isinstance(gate, str) else gate)


def test_soft_blend_is_probability_weighted():
    moe = _moe(SoftGate())
    step = moe.run_step(_obs(), p_curve=0.25)
    assert step.control.steer == pytest.approx(0.25 * 0.8 + 0.75 * -0.1, abs=1e-6)
    assert step.control.throttle == pytest.approx(0.25 * 0.2 + 0.75 * 0.9, abs=1e-6)
    assert step.in_charge == "straight"


def test_every_expert_runs_every_tick_for_bumpless_switching():
    moe = _moe("curve")
    for _ in range(3):
        moe.run_step(_obs())
    assert [e.calls for e in moe.experts.values()] == [3, 3]


@pytest.mark.parametrize("steer,throttle,brake", [
    (3.0, 2.0, -1.0), (-7.0, -0.5, 4.0), (float("nan"), 0.5, 0.0), (0.1, float("inf"), 0.0),
    (0.1, 0.5, float("nan")), (float("-inf"), float("nan"), float("nan")),
])
def test_sanitize_control_is_finite_and_in_range(steer, throttle, brake):
    c = sanitize_control(carla.VehicleControl(throttle=throttle, steer=steer, brake=brake))
    for v in (c.steer, c.throttle, c.brake):
        assert math.isfinite(v)
    assert -1.0 <= c.steer <= 1.0 and 0.0 <= c.throttle <= 1.0 and 0.0 <= c.brake <= 1.0
    if not all(math.isfinite(v) for v in (steer, throttle, brake)):
        assert c.throttle == 0.0 and c.brake == 1.0  # a corrupt command becomes a stop


def test_moe_clips_out_of_range_expert_output():
    moe = _moe("curve", curve=(5.0, 3.0))
    c = moe.run_step(_obs()).control
    assert (c.steer, c.throttle) == (1.0, 1.0)


def test_nan_inference_falls_back_to_slow_down_and_logs(caplog):
    moe = MoEController({"curve": ConstExpert("curve", 0.5, 0.2), "straight": ConstExpert("straight", 0.0, 0.9)},
                        HardGate(), SafetyParams(fallback_brake=0.3))
    for _ in range(10):
        ok = moe.run_step(_obs(), p_curve=0.05)
    assert not ok.fallback and ok.control.throttle == pytest.approx(0.9)
    with caplog.at_level(logging.WARNING, logger="control.moe"):
        steps = [moe.run_step(_obs(), p_curve=float("nan")) for _ in range(5)]
    assert all(s.fallback for s in steps)
    assert all(s.in_charge == "straight" for s in steps)  # last decision kept
    assert all(s.control.throttle == 0.0 and s.control.brake >= 0.3 for s in steps)
    assert moe.fallback_count == 5
    assert sum("classifier output invalid" in r.message for r in caplog.records) == 1  # once per streak
    assert not moe.run_step(_obs(), p_curve=0.05).fallback


def test_expert_exception_becomes_a_stop(caplog):
    class Broken(ConstExpert):
        def run_step(self, obs):
            raise RuntimeError("boom")
    moe = MoEController({"curve": Broken("curve", 0, 0), "straight": ConstExpert("straight", 0.0, 0.9)},
                        create_gate("curve"))
    with caplog.at_level(logging.ERROR, logger="control.moe"):
        c = moe.run_step(_obs()).control
    assert c.throttle == 0.0 and c.brake == 1.0
    assert "expert 'curve' failed" in caplog.text


def test_blend_rejects_all_zero_weights():
    with pytest.raises(ValueError, match="no expert has a positive weight"):
        blend_controls({"curve": carla.VehicleControl()}, {"curve": 0.0})
