"""Kinematic bicycle model with CARLA ``VehicleControl`` semantics, as a pure function.

Why kinematic: the node under test needs the car to go where its controls say, at the speeds a
CARLA car reaches, deterministically and in microseconds; tyre slip and suspension would cost
time and add nothing to a perception benchmark. The actor (``actors.Vehicle``) holds a
``VehicleState`` and calls ``step`` once per world tick; the world then sets z/pitch from the road.

Conventions are CARLA's: x forward, y right, yaw in degrees with positive = clockwise seen from
above, so a positive ``steer`` (right) increases yaw. Speeds are m/s. The model integrates the
rear axle along an exact circular arc per step (radius ``wheelbase / tan(delta)``), so the turning
radius does not depend on ``dt``; the actor origin is ``rear_axle_offset`` ahead of the rear axle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class VehicleParams:
    """Limits of one car (defaults: a mid-size saloon like CARLA's Tesla Model 3).

    Attributes:
        wheelbase: front-to-rear axle distance, m.
        rear_axle_offset: rear axle to actor origin (the bounding-box centre), m.
        max_steer_deg: road-wheel angle at ``steer = +-1``, deg. 70 like CARLA's cars (their front
            ``WheelPhysicsControl.max_steer_angle``), so a steer command turns the car as tightly
            here as on a CARLA server and a controller tuned on one works on the other.
        max_accel: full-throttle acceleration from rest, m/s^2 (falls linearly to 0 at top speed).
        max_brake_decel: deceleration at ``brake = 1``, m/s^2.
        hand_brake_decel: deceleration of the hand brake, m/s^2.
        rolling_resistance: constant deceleration while moving, m/s^2.
        drag_coefficient: aerodynamic deceleration ``k * v^2``, 1/m.
        top_speed: forward speed limit, m/s.
        max_reverse_speed: reverse speed limit, m/s.
    """

    wheelbase: float = 2.875
    rear_axle_offset: float = 1.4
    max_steer_deg: float = 70.0
    max_accel: float = 3.5
    max_brake_decel: float = 8.0
    hand_brake_decel: float = 5.0
    rolling_resistance: float = 0.15
    drag_coefficient: float = 4.0e-4
    top_speed: float = 50.0
    max_reverse_speed: float = 8.0

    def __post_init__(self):
        for name, value in vars(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"VehicleParams.{name}={value!r} must be a finite number >= 0")
        if self.wheelbase <= 0 or self.top_speed <= 0 or self.max_reverse_speed <= 0:
            raise ValueError(f"VehicleParams wheelbase, top_speed and max_reverse_speed must be > 0, "
                             f"got {self.wheelbase}, {self.top_speed}, {self.max_reverse_speed}")
        if not 0 < self.max_steer_deg < 80:
            raise ValueError(f"VehicleParams.max_steer_deg={self.max_steer_deg} must be in (0, 80)")


@dataclass(frozen=True)
class VehicleState:
    """Planar state of a car.

    Attributes:
        x, y: actor origin in world coordinates, m.
        yaw: heading, deg (CARLA convention).
        speed: signed longitudinal speed, m/s (negative when rolling backwards).
        yaw_rate: deg/s during the last step.
        accel: longitudinal acceleration during the last step, m/s^2.
    """

    x: float
    y: float
    yaw: float
    speed: float = 0.0
    yaw_rate: float = 0.0
    accel: float = 0.0


def _clip(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _longitudinal(speed: float, throttle: float, brake: float, reverse: bool, hand_brake: bool,
                  dt: float, p: VehicleParams) -> float:
    """Speed after ``dt``: drive force along the gear's direction, resistances never reverse motion."""
    direction = -1.0 if reverse else 1.0
    limit = p.max_reverse_speed if reverse else p.top_speed
    # Engine force fades towards the gear's speed limit; against the motion it acts in full.
    fade = max(0.0, 1.0 - abs(speed) / limit) if speed * direction >= 0 else 1.0
    new_speed = speed + direction * throttle * p.max_accel * fade * dt
    decel = (brake * p.max_brake_decel + (p.hand_brake_decel if hand_brake else 0.0)
             + p.rolling_resistance + p.drag_coefficient * speed * speed)
    if new_speed > 0:
        new_speed = max(0.0, new_speed - decel * dt)
    elif new_speed < 0:
        new_speed = min(0.0, new_speed + decel * dt)
    return _clip(new_speed, -p.max_reverse_speed, p.top_speed)


def steer_angle(steer: float, params: VehicleParams) -> float:
    """Road-wheel angle in radians for a CARLA steer command (clipped to [-1, 1])."""
    return math.radians(_clip(float(steer), -1.0, 1.0) * params.max_steer_deg)


def step(state: VehicleState, control, dt: float, params: VehicleParams) -> VehicleState:
    """Advance one car by ``dt`` seconds under a ``carla.VehicleControl``.

    Args:
        state: current state.
        control: anything with CARLA's VehicleControl fields (throttle, steer, brake in their
            ranges, clipped here; reverse, hand_brake). ``manual_gear_shift``/``gear`` are ignored:
            the model has no gearbox.
        dt: time step, s (> 0).
        params: the car's limits.

    Returns:
        The new state; ``state`` is not modified.
    """
    if not dt > 0:
        raise ValueError(f"dt={dt!r} must be > 0 seconds")
    throttle = _clip(float(control.throttle), 0.0, 1.0)
    brake = _clip(float(control.brake), 0.0, 1.0)
    delta = steer_angle(control.steer, params)
    speed = _longitudinal(state.speed, throttle, brake, bool(control.reverse), bool(control.hand_brake),
                          dt, params)
    distance = 0.5 * (state.speed + speed) * dt           # trapezoid: exact for constant acceleration
    yaw = math.radians(state.yaw)
    lr = params.rear_axle_offset
    rear_x = state.x - lr * math.cos(yaw)
    rear_y = state.y - lr * math.sin(yaw)
    dyaw = distance * math.tan(delta) / params.wheelbase
    if abs(dyaw) < 1e-12:
        rear_x += distance * math.cos(yaw)
        rear_y += distance * math.sin(yaw)
    else:
        radius = params.wheelbase / math.tan(delta)
        rear_x += radius * (math.sin(yaw + dyaw) - math.sin(yaw))
        rear_y += radius * (math.cos(yaw) - math.cos(yaw + dyaw))
    new_yaw = yaw + dyaw
    return VehicleState(
        x=rear_x + lr * math.cos(new_yaw),
        y=rear_y + lr * math.sin(new_yaw),
        yaw=(math.degrees(new_yaw) + 180.0) % 360.0 - 180.0,   # CARLA reports yaw in [-180, 180)
        speed=speed,
        yaw_rate=math.degrees(dyaw / dt),
        accel=(speed - state.speed) / dt,
    )


def turning_radius(steer: float, params: VehicleParams) -> float:
    """Radius of the rear axle's circle at a constant steer command, m (inf when straight)."""
    delta = steer_angle(steer, params)
    return math.inf if delta == 0 else params.wheelbase / abs(math.tan(delta))
