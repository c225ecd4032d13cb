"""Mixture of experts: a gate weighs the experts' controls; every control sent is finite and in range.

Every expert runs on every tick, whatever the gate says, so each keeps its route progress and PID
state warm and a switch is bumpless (no integrator wind-up or stale progress when an expert takes
over). When the classifier fails (exception, NaN, missing), the gate keeps its last decision and
the controller coasts and brakes gently (:class:`SafetyParams`) until predictions return; each
failure streak is logged once.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping

import carla

from control.experts import Expert, Observation
from control.gates import Gate, GateDecision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SafetyParams:
    """The fallback action while the gate's input is invalid: no throttle, at least this much brake."""
    fallback_brake: float = 0.3

    def __post_init__(self) -> None:
        if not 0.0 <= self.fallback_brake <= 1.0:
            raise ValueError(f"fallback_brake must be in [0, 1], got {self.fallback_brake}")


def _finite_or(value, default: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def sanitize_control(control: carla.VehicleControl) -> carla.VehicleControl:
    """Return a copy with steer in [-1, 1] and throttle/brake in [0, 1]; non-finite values become the
    safe choice (steer 0, throttle 0, brake 1): a NaN from an expert must never reach the vehicle."""
    values = (control.steer, control.throttle, control.brake)
    corrupt = not all(math.isfinite(_finite_or(v, math.nan)) for v in values)
    steer = min(1.0, max(-1.0, _finite_or(control.steer, 0.0)))
    throttle = 0.0 if corrupt else min(1.0, max(0.0, float(control.throttle)))
    brake = 1.0 if corrupt else min(1.0, max(0.0, float(control.brake)))
    return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake,
                                hand_brake=bool(control.hand_brake), reverse=bool(control.reverse))


def blend_controls(controls: Mapping[str, carla.VehicleControl], weights: Mapping[str, float]) -> carla.VehicleControl:
    """Weighted sum of steer/throttle/brake over the experts with a positive weight (weights renormalised)."""
    active = {k: w for k, w in weights.items() if w > 0.0 and k in controls}
    total = sum(active.values())
    if total <= 0.0:
        raise ValueError(f"no expert has a positive weight: {dict(weights)}")
    steer = sum(w * _finite_or(controls[k].steer, math.nan) for k, w in active.items()) / total
    throttle = sum(w * _finite_or(controls[k].throttle, math.nan) for k, w in active.items()) / total
    brake = sum(w * _finite_or(controls[k].brake, math.nan) for k, w in active.items()) / total
    return carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)


@dataclass(frozen=True)
class MoEStep:
    """What one tick decided: the control sent, the gate's decision, and whether the fallback was used."""
    control: carla.VehicleControl
    decision: GateDecision
    fallback: bool
    expert_controls: dict[str, carla.VehicleControl] = field(default_factory=dict)

    @property
    def in_charge(self) -> str:
        return self.decision.in_charge


class MoEController:
    """Combine ``experts`` (name -> Expert, names matching the gate's classes) under ``gate``.

    Args:
        experts: the experts; must cover every name the gate may weigh.
        gate: see :mod:`control.gates`; replaceable at run time with :meth:`set_gate` (the ``G`` key).
        safety: fallback behaviour when the gate's input is invalid.
    """

    def __init__(self, experts: Mapping[str, Expert], gate: Gate, safety: SafetyParams = SafetyParams()) -> None:
        if not experts:
            raise ValueError("MoEController needs at least one expert")
        self.experts = dict(experts)
        self.gate = gate
        self.safety = safety
        self.fallback_count = 0
        self._streak = 0

    def set_gate(self, gate: Gate) -> None:
        gate.reset()
        self.gate = gate

    def done(self) -> bool:
        """The route is finished when any expert (they share the route) says so."""
        return any(e.done() for e in self.experts.values())

    def run_step(self, obs: Observation, p_curve: float | None = None, truth: str | None = None) -> MoEStep:
        """One tick: run every expert, ask the gate, blend, apply the fallback if needed, sanitise."""
        controls = {}
        for name, expert in self.experts.items():
            try:
                controls[name] = expert.run_step(obs)
            except Exception:  # an expert bug must not crash the car into a wall: brake, log
                log.exception("expert %r failed; treating its control as a full stop", name)
                controls[name] = carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0)
        decision = self.gate.update(p_curve, truth)
        missing = [k for k, w in decision.weights.items() if w > 0 and k not in controls]
        if missing:
            raise ValueError(f"gate {self.gate.name!r} weighs unknown experts {missing}; have {list(controls)}")
        control = blend_controls(controls, decision.weights)
        fallback = self.gate.needs_model and not decision.valid
        if fallback:
            self.fallback_count += 1
            if self._streak == 0:
                log.warning("classifier output invalid (p_curve=%r) at t=%.2fs: keeping gate decision %r and slowing down",
                            p_curve, obs.timestamp, decision.in_charge)
            self._streak += 1
            control = carla.VehicleControl(throttle=0.0, steer=control.steer,
                                           brake=max(_finite_or(control.brake, 1.0), self.safety.fallback_brake))
        elif self._streak:
            log.info("classifier recovered after %d invalid frame(s)", self._streak)
            self._streak = 0
        return MoEStep(control=sanitize_control(control), decision=decision, fallback=fallback,
                       expert_controls=controls)
