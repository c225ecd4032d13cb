"""Route following: pure-pursuit steering + PID speed control, with curve-aware target speed.

The collector drives with it and the driving experts reuse it, so it is written once against
the carla API (``vehicle.get_transform()``, ``get_velocity()``, ``carla.VehicleControl``) and
runs unchanged on a CARLA server or on the embedded simulator.

Lateral (pure pursuit): aim at the route point ``l_d = clip(k * v + l_min, l_min, l_max)``
metres ahead of the car's projection; the arc through it has curvature
``kappa = 2 y_local / d^2`` and needs the road-wheel angle ``atan(wheelbase * kappa)``.
Pure pursuit needs no tuning per speed, is stable at town speeds and degrades gracefully
when the car is off the line (recovery data).

Longitudinal: target speed = cruise speed, lowered so that lateral acceleration stays under
``max_lateral_accel`` on the sharpest bend within braking distance; a PID on the speed error
gives throttle (positive output) or brake (negative). The maths lives in pure functions
(:func:`pure_pursuit_steer`, :func:`pid_step`, :func:`target_speed`) so tests pin them
without a simulator; :class:`RouteFollower` only reads the vehicle and keeps state, like
CARLA's ``agents/navigation`` controllers.

Usage::

    follower = RouteFollower(vehicle, TOWN)
    follower.set_route(planner.trace_route(a, b))
    while not follower.done():
        world.tick()
        vehicle.apply_control(follower.run_step())
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import carla

from .route import RoutePath

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FollowerParams:
    """Route-follower gains and limits (units in brackets).

    Args:
        cruise_speed_kmh: target speed on straights [km/h].
        min_speed_kmh: target speed never drops below this in bends [km/h].
        max_lateral_accel: comfort limit used to slow down for bends [m/s^2].
        max_decel: deceleration assumed when looking ahead for bends [m/s^2].
        lookahead_gain: pure-pursuit lookahead growth with speed [s].
        lookahead_min, lookahead_max: pure-pursuit lookahead bounds [m].
        crosstrack_gain: Stanley-style correction ``atan(k e / (v + 1))`` added to the pure-pursuit
            angle; it removes the steady offset in bends when the vehicle's steering gain is not
            what the follower assumes [1/s].
        kp, ki, kd: speed PID gains on the error in m/s [1/(m/s), 1/m, s/m].
        integral_band: the integral only accumulates while |error| is below this, so the
            launch from standstill does not wind it up [m/s].
        integral_limit: anti-windup bound on the integral term [m].
        max_throttle: throttle ceiling in [0, 1].
        max_brake: brake ceiling in [0, 1].
        max_steer: |steer| ceiling in [0, 1].
        wheelbase: used when the vehicle does not report its physics [m].
        max_steer_deg: road-wheel angle at steer = 1 when the vehicle does not report it [deg].
        done_distance: the route is done when this much of it is left [m].
    """

    cruise_speed_kmh: float = 30.0
    min_speed_kmh: float = 12.0
    max_lateral_accel: float = 2.0
    max_decel: float = 3.0
    lookahead_gain: float = 0.6
    lookahead_min: float = 4.0
    lookahead_max: float = 12.0
    crosstrack_gain: float = 2.5
    kp: float = 0.5
    ki: float = 0.1
    kd: float = 0.02
    integral_band: float = 1.5
    integral_limit: float = 3.0
    max_throttle: float = 0.75
    max_brake: float = 0.6
    max_steer: float = 1.0
    wheelbase: float = 2.875
    max_steer_deg: float = 70.0
    done_distance: float = 2.0

    def __post_init__(self):
        if not 0 < self.min_speed_kmh <= self.cruise_speed_kmh:
            raise ValueError(f"need 0 < min_speed_kmh <= cruise_speed_kmh, got {self.min_speed_kmh}, "
                             f"{self.cruise_speed_kmh}")
        if not 0 < self.lookahead_min <= self.lookahead_max:
            raise ValueError(f"need 0 < lookahead_min <= lookahead_max, got {self.lookahead_min}, "
                             f"{self.lookahead_max}")
        for name in ("max_throttle", "max_brake", "max_steer"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("max_lateral_accel", "max_decel", "wheelbase", "max_steer_deg"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


TOWN = FollowerParams()
"""Town driving at 30 km/h, slowing to >= 12 km/h for junction turns (CARLA towns' 30 km/h limit)."""

CAUTIOUS = FollowerParams(cruise_speed_kmh=20.0, min_speed_kmh=8.0, max_lateral_accel=1.5)
"""Slower preset for an expert that must stay on the lane in tight bends."""


@dataclass(frozen=True)
class PIDState:
    integral: float = 0.0
    previous_error: float | None = None


@dataclass(frozen=True)
class VehicleKinematics:
    """What the follower needs from a vehicle: pose (m, deg) and forward speed (m/s)."""

    x: float
    y: float
    yaw_deg: float
    speed: float


def pure_pursuit_steer(state: VehicleKinematics, target_xy: tuple[float, float], wheelbase: float,
                       max_steer_deg: float) -> float:
    """CARLA steer in [-1, 1] that puts the car on the arc through ``target_xy``.

    Local frame (CARLA, left-handed): x forward, y right; positive steer turns right.
    """
    yaw = math.radians(state.yaw_deg)
    dx, dy = target_xy[0] - state.x, target_xy[1] - state.y
    local_x = math.cos(yaw) * dx + math.sin(yaw) * dy
    local_y = -math.sin(yaw) * dx + math.cos(yaw) * dy
    d2 = local_x * local_x + local_y * local_y
    if d2 < 1e-6:
        return 0.0
    if local_x <= 0:  # target behind: full lock towards it
        return 1.0 if local_y >= 0 else -1.0
    kappa = 2.0 * local_y / d2
    delta = math.atan(wheelbase * kappa)
    return max(-1.0, min(1.0, delta / math.radians(max_steer_deg)))


def crosstrack_steer(path: RoutePath, s: float, state: VehicleKinematics, params: FollowerParams) -> float:
    """Steer correction towards the route from the signed cross-track error (Stanley's term)."""
    px, py = path.point_at(s)
    psi = float(path.heading_at(s))
    right_of_route = -(state.x - px) * math.sin(psi) + (state.y - py) * math.cos(psi)
    delta = -math.atan(params.crosstrack_gain * right_of_route / (max(0.0, state.speed) + 1.0))
    return delta / math.radians(params.max_steer_deg)


def pid_step(error: float, state: PIDState, dt: float, params: FollowerParams) -> tuple[float, PIDState]:
    """One PID update on the speed error (m/s); returns (output, new state). Output > 0 = throttle."""
    integral = state.integral + (error * dt if abs(error) < params.integral_band else 0.0)
    integral = max(-params.integral_limit, min(params.integral_limit, integral))
    derivative = 0.0 if state.previous_error is None or dt <= 0 else (error - state.previous_error) / dt
    out = params.kp * error + params.ki * integral + params.kd * derivative
    return out, PIDState(integral=integral, previous_error=error)


def target_speed(path: RoutePath, s0: float, speed: float, params: FollowerParams) -> float:
    """Target speed (m/s): cruise, capped by sqrt(a_lat / kappa) of the sharpest bend we can still brake for."""
    cruise = params.cruise_speed_kmh / 3.6
    horizon = speed * speed / (2.0 * params.max_decel) + 8.0
    kappa = path.max_curvature(s0, min(path.length, s0 + horizon))
    v = cruise if kappa < 1e-4 else min(cruise, math.sqrt(params.max_lateral_accel / kappa))
    return max(params.min_speed_kmh / 3.6, v)


def control_from(steer: float, pid_out: float, params: FollowerParams) -> carla.VehicleControl:
    """carla.VehicleControl with every field clipped to its documented range."""
    steer = max(-params.max_steer, min(params.max_steer, steer))
    throttle = max(0.0, min(params.max_throttle, pid_out))
    brake = max(0.0, min(params.max_brake, -pid_out))
    return carla.VehicleControl(throttle=float(throttle), steer=float(steer), brake=float(brake))


class RouteFollower:
    """Drives ``vehicle`` along a planned route; the expert interface is ``run_step()`` / ``done()``.

    Args:
        vehicle: a carla.Vehicle (real or embedded).
        params: gains and limits; wheelbase and max steer angle are read from
            ``vehicle.get_physics_control()`` when the vehicle reports them.
        dt: control period, s (the world's fixed_delta_seconds).
    """

    def __init__(self, vehicle, params: FollowerParams = TOWN, dt: float = 0.05):
        self._vehicle = vehicle
        self.params = self._with_vehicle_geometry(vehicle, params)
        self._dt = dt
        self._path: RoutePath | None = None
        self._index = 0
        self._s = 0.0
        self._lateral = 0.0
        self._pid = PIDState()

    # --------------------------------------------------------------- route
    def set_route(self, route) -> None:
        """Follow ``route`` (``[(waypoint, RoadOption)]`` or a RoutePath) from its start."""
        self._path = route if isinstance(route, RoutePath) else RoutePath.from_route(route)
        self._index, self._s, self._pid = 0, 0.0, PIDState()

    def extend_route(self, path: RoutePath) -> None:
        """Replace the route by a longer one sharing its beginning (progress is kept)."""
        self._path = path

    @property
    def path(self) -> RoutePath | None:
        return self._path

    @property
    def progress(self) -> float:
        """Arc length of the car's projection on the route, m (updated by ``run_step``)."""
        return self._s

    @property
    def progress_index(self) -> int:
        return self._index

    @property
    def lateral_error(self) -> float:
        """Distance from the car to the route at the last ``run_step``, m."""
        return self._lateral

    def remaining(self) -> float:
        return 0.0 if self._path is None else self._path.length - self._s

    def done(self) -> bool:
        return self._path is None or self.remaining() <= self.params.done_distance

    # --------------------------------------------------------------- control
    def read_state(self) -> VehicleKinematics:
        tf = self._vehicle.get_transform()
        v = self._vehicle.get_velocity()
        yaw = math.radians(tf.rotation.yaw)
        forward = v.x * math.cos(yaw) + v.y * math.sin(yaw)
        return VehicleKinematics(tf.location.x, tf.location.y, tf.rotation.yaw, forward)

    def run_step(self, obs=None) -> carla.VehicleControl:
        """Control for the next tick (``obs`` is unused: the follower reads the vehicle itself)."""
        if self._path is None:
            raise RuntimeError("RouteFollower.run_step() called before set_route()")
        return self.compute(self.read_state())

    def compute(self, state: VehicleKinematics) -> carla.VehicleControl:
        """Control for a given state; updates progress and the PID memory."""
        p = self.params
        self._s, self._index, self._lateral = self._path.project(state.x, state.y, self._index)
        if self.done():
            return carla.VehicleControl(throttle=0.0, steer=0.0, brake=p.max_brake)
        lookahead = min(p.lookahead_max, max(p.lookahead_min, p.lookahead_gain * state.speed + p.lookahead_min))
        steer = pure_pursuit_steer(state, self._path.point_at(self._s + lookahead), p.wheelbase, p.max_steer_deg)
        steer += crosstrack_steer(self._path, self._s, state, p)
        error = target_speed(self._path, self._s, state.speed, p) - state.speed
        out, self._pid = pid_step(error, self._pid, self._dt, p)
        return control_from(steer, out, p)

    @staticmethod
    def _with_vehicle_geometry(vehicle, params: FollowerParams) -> FollowerParams:
        """Use the vehicle's own wheelbase/steer limit when it reports them (CARLA physics control)."""
        try:
            physics = vehicle.get_physics_control()
            wheels = list(physics.wheels)
            max_steer = float(wheels[0].max_steer_angle)
            front = (wheels[0].position + wheels[1].position) * 0.5
            rear = (wheels[2].position + wheels[3].position) * 0.5
            wheelbase = front.distance(rear) / 100.0  # wheel positions are in cm
        except Exception as exc:  # noqa: BLE001 - any simulator that cannot report keeps the params
            logger.debug("vehicle physics not available (%s); using wheelbase=%.2f m, max steer %.0f deg",
                         exc, params.wheelbase, params.max_steer_deg)
            return params
        if 0.5 < wheelbase < 10 and 5 < max_steer < 90:
            return replace(params, wheelbase=wheelbase, max_steer_deg=max_steer)
        return params
