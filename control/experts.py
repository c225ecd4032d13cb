"""Driving experts: one interface (``run_step(obs) -> carla.VehicleControl``, ``done()``), a registry.

The gate sees only this interface, so a learned vision expert (reading ``obs.image``) can be
registered next to the route followers with :func:`register_expert` and nothing else changes.

The two built-in experts are the route follower of :mod:`carla_client.follower` (pure pursuit + PID,
the collector's controller) with parameter sets
tuned for their regime (:data:`STRAIGHT_PARAMS`, :data:`CURVE_PARAMS`): on a straight a longer
lookahead gives calm steering at a higher speed; in a bend a shorter lookahead tracks the lane
centre without cutting the corner and a lower speed keeps the lateral acceleration low.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

import carla

from carla_client.follower import FollowerParams, RouteFollower, VehicleKinematics
from datasets.schema import CLASSES

CURVE, STRAIGHT = CLASSES


@dataclass(frozen=True)
class Observation:
    """What an expert sees on one tick (state after the tick, CARLA units).

    Attributes:
        transform: vehicle pose in world coordinates.
        velocity: vehicle velocity, m/s.
        timestamp: simulation time, s.
        frame: simulator frame id.
        image: the camera frame, HxWx4 BGRA uint8, for vision experts (None if not provided).
        command: the route's high-level command here (a RoadOption value, ``RoutePath.command_at``),
            for command-conditioned vision experts; None when the loop has no route.
    """
    transform: carla.Transform
    velocity: carla.Vector3D
    timestamp: float = 0.0
    frame: int = 0
    image: np.ndarray | None = field(default=None, repr=False)
    command: int | None = None

    @property
    def speed_kmh(self) -> float:
        v = self.velocity
        return 3.6 * math.sqrt(v.x * v.x + v.y * v.y + v.z * v.z)


class Expert(Protocol):
    """The one interface every expert implements."""
    name: str

    def run_step(self, obs: Observation) -> carla.VehicleControl:
        """Control for this tick; may be out of range (the MoE controller sanitises)."""

    def done(self) -> bool:
        """True once the expert's task (its route) is finished."""


STRAIGHT_PARAMS = FollowerParams(
    cruise_speed_kmh=40.0, min_speed_kmh=20.0, max_lateral_accel=6.0, lookahead_gain=0.8,
    lookahead_min=6.0, lookahead_max=18.0, max_steer=0.7)
"""Straight regime: 40 km/h, lookahead 6 m + 0.8 s (15 m at 40 km/h) for calm steering, a sporty
6 m/s^2 bend limit (it is not meant to drive bends: the gate hands those to the curve expert)."""

CURVE_PARAMS = FollowerParams(
    cruise_speed_kmh=20.0, min_speed_kmh=10.0, max_lateral_accel=2.0, lookahead_gain=0.3,
    lookahead_min=3.0, lookahead_max=7.0, max_steer=1.0)
"""Curve regime: 20 km/h, lookahead 3 m + 0.3 s (4.7 m at 20 km/h) to hug the lane centre in
tight junction turns, 2 m/s^2 comfort limit (>= 10 km/h), full steering authority."""

DEFAULT_PARAMS: dict[str, FollowerParams] = {STRAIGHT: STRAIGHT_PARAMS, CURVE: CURVE_PARAMS}


class RouteFollowingExpert:
    """An expert that follows a planned route with :class:`carla_client.follower.RouteFollower`.

    It computes its control from the observation (not by reading the vehicle), so several experts
    can share one vehicle and a replay can be fed through it.

    Args:
        name: expert name (a class name for the gates: ``curve`` or ``straight``).
        route: the planned route, ``[(carla.Waypoint, RoadOption)]`` or a ``RoutePath``.
        params: the regime.
        vehicle: optional; lets the follower read the real wheelbase and steering limit.
        dt: control period, s.
    """

    def __init__(self, name: str, route, params: FollowerParams, vehicle=None, dt: float = 0.05) -> None:
        self.name = name
        self.follower = RouteFollower(vehicle, params, dt=dt)
        self.follower.set_route(route)

    @property
    def params(self) -> FollowerParams:
        return self.follower.params

    def run_step(self, obs: Observation) -> carla.VehicleControl:
        tf, v = obs.transform, obs.velocity
        yaw = math.radians(tf.rotation.yaw)
        forward = v.x * math.cos(yaw) + v.y * math.sin(yaw)
        return self.follower.compute(VehicleKinematics(tf.location.x, tf.location.y, tf.rotation.yaw, forward))

    def done(self) -> bool:
        return self.follower.done()


ExpertFactory = Callable[..., Expert]
EXPERTS: dict[str, ExpertFactory] = {}


def register_expert(name: str, factory: ExpertFactory) -> None:
    """Register ``factory(route, vehicle=None, dt=0.05, **params) -> Expert`` under ``name``."""
    EXPERTS[name] = factory


def expert_names() -> list[str]:
    return list(EXPERTS)


def create_expert(name: str, route, vehicle=None, dt: float = 0.05, **overrides) -> Expert:
    """Build the expert called ``name`` for ``route``; ``overrides`` replace fields of its default params
    (e.g. ``cruise_speed_kmh=35``).

    Raises:
        ValueError: unknown name (lists the valid ones) or unknown parameter.
    """
    if name not in EXPERTS:
        raise ValueError(f"unknown expert {name!r}; valid: {', '.join(EXPERTS)}")
    return EXPERTS[name](route, vehicle=vehicle, dt=dt, **overrides)


def _route_expert_factory(name: str) -> ExpertFactory:
    def factory(route, vehicle=None, dt: float = 0.05, **overrides) -> Expert:
        base = DEFAULT_PARAMS[name]
        bad = set(overrides) - set(base.__dataclass_fields__)
        if bad:
            raise ValueError(f"unknown parameter(s) {sorted(bad)} for expert {name!r}; valid: "
                             f"{', '.join(base.__dataclass_fields__)}")
        from dataclasses import replace
        return RouteFollowingExpert(name, route, replace(base, **overrides), vehicle=vehicle, dt=dt)
    return factory


register_expert(STRAIGHT, _route_expert_factory(STRAIGHT))
register_expert(CURVE, _route_expert_factory(CURVE))
