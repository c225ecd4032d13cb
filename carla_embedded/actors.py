"""Actors of the embedded world: vehicles, sensors, the spectator, and the data they deliver.

They keep carla's names, argument order and units so client code runs unchanged. Anything of
the real carla class that is not implemented raises ``UnsupportedFeatureError`` naming it.

Lifetime, as in CARLA: ``destroy()`` returns True once, then False. Destroying a vehicle stops
the sensors attached to it (they deliver no more data) but leaves them alive, so the usual
clean-up loop ``for a in actors: a.destroy()`` still returns True for each of them.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np

import carla

from .errors import CarlaSurface, UnsupportedFeatureError
from .geometry import compose
from .vehicle import VehicleState, step

logger = logging.getLogger(__name__)


def _copy_transform(t: carla.Transform) -> carla.Transform:
    return carla.Transform(carla.Location(t.location.x, t.location.y, t.location.z),
                           carla.Rotation(pitch=t.rotation.pitch, yaw=t.rotation.yaw, roll=t.rotation.roll))


def _copy_control(c) -> carla.VehicleControl:
    return carla.VehicleControl(throttle=float(c.throttle), steer=float(c.steer), brake=float(c.brake),
                                hand_brake=bool(c.hand_brake), reverse=bool(c.reverse),
                                manual_gear_shift=bool(c.manual_gear_shift), gear=int(c.gear))


class Actor(CarlaSurface, carla.Actor):
    """carla.Actor: something with an id, a type and a transform in one world."""

    _carla_class = carla.Actor

    def __init__(self, world, actor_id: int, type_id: str, transform: carla.Transform,
                 attributes: dict[str, str] | None = None, parent: "Actor | None" = None,
                 extent=(0.0, 0.0, 0.0)):
        self._world = world
        self._id = actor_id
        self._type_id = type_id
        self._attributes = dict(attributes or {})
        self._parent = parent
        self._transform = _copy_transform(transform)     # world transform, or relative if attached
        self._alive = True
        self._bbox = carla.BoundingBox(carla.Location(0.0, 0.0, extent[2]), carla.Vector3D(*extent))

    # -- identity -------------------------------------------------------------------------
    @property
    def id(self) -> int:
        return self._id

    @property
    def type_id(self) -> str:
        return self._type_id

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self._attributes)

    @property
    def parent(self):
        return self._parent

    @property
    def is_alive(self) -> bool:
        return self._alive and self._world._alive

    @property
    def is_active(self) -> bool:
        return self.is_alive

    @property
    def is_dormant(self) -> bool:
        return False

    @property
    def bounding_box(self) -> carla.BoundingBox:
        return carla.BoundingBox(self._bbox.location, self._bbox.extent)

    @property
    def semantic_tags(self) -> list[int]:
        return []

    def get_world(self):
        return self._world

    # -- kinematics -----------------------------------------------------------------------
    def get_transform(self) -> carla.Transform:
        self._world._keep_pace()
        if self._parent is not None:
            return compose(self._parent.get_transform(), self._transform)
        return _copy_transform(self._transform)

    def get_location(self) -> carla.Location:
        return self.get_transform().location

    def get_velocity(self) -> carla.Vector3D:
        return self._parent.get_velocity() if self._parent is not None else carla.Vector3D()

    def get_angular_velocity(self) -> carla.Vector3D:
        return self._parent.get_angular_velocity() if self._parent is not None else carla.Vector3D()

    def get_acceleration(self) -> carla.Vector3D:
        return self._parent.get_acceleration() if self._parent is not None else carla.Vector3D()

    def set_transform(self, transform: carla.Transform) -> None:
        """Teleport (for an attached actor: set the transform relative to its parent)."""
        self._check_alive("set_transform")
        self._transform = _copy_transform(transform)
        self._world._actors_version += 1                 # the sensors' boxes of still actors are rebuilt

    def set_location(self, location: carla.Location) -> None:
        t = self.get_transform() if self._parent is None else _copy_transform(self._transform)
        self.set_transform(carla.Transform(carla.Location(location.x, location.y, location.z), t.rotation))

    def set_simulate_physics(self, enabled: bool = True) -> None:
        if not enabled:
            raise UnsupportedFeatureError(f"{self._type_id}.set_simulate_physics(False)")

    def destroy(self) -> bool:
        """Remove the actor; True the first time, False if it was already destroyed (as carla)."""
        if not self.is_alive:
            logger.warning("attempting to destroy an actor that is already dead: %s %d", self._type_id, self._id)
            return False
        self._alive = False
        self._world._remove_actor(self)
        return True

    def _check_alive(self, what: str) -> None:
        if not self.is_alive:
            raise RuntimeError(f"{what}: actor {self._id} ({self._type_id}) has been destroyed")

    def __repr__(self):
        return f"Actor(id={self._id}, type={self._type_id})"


_AIR_DENSITY = 1.225              # kg/m^3
_FRONTAL_AREA_FILL = 0.85         # frontal area / (width x height) of a car body
_FINAL_RATIO = 4.0                # one gear of ratio 1 behind it: the model has no gearbox
_FRONT_WHEELS = (carla.VehicleWheelLocation.FL_Wheel, carla.VehicleWheelLocation.FR_Wheel,
                 carla.VehicleWheelLocation.Front_Wheel)
# Fields of carla's physics controls that apply_physics_control compares to decide what changed.
_PHYSICS_FIELDS = ("torque_curve", "max_rpm", "moi", "damping_rate_full_throttle",
                   "damping_rate_zero_throttle_clutch_engaged", "damping_rate_zero_throttle_clutch_disengaged",
                   "use_gear_autobox", "gear_switch_time", "clutch_strength", "final_ratio", "forward_gears",
                   "mass", "drag_coefficient", "center_of_mass", "steering_curve", "use_sweep_wheel_collision")
_WHEEL_FIELDS = ("tire_friction", "damping_rate", "radius", "max_brake_torque", "max_handbrake_torque",
                 "lat_stiff_max_load", "lat_stiff_value", "long_stiff_value")


def vehicle_physics(transform: carla.Transform, spec) -> carla.VehiclePhysicsControl:
    """The real ``carla.VehiclePhysicsControl`` equivalent to a car's bicycle-model limits.

    Same layout and units as a CARLA server reports: wheels FL, FR, RL, RR with positions in
    world coordinates in cm; front ``max_steer_angle`` = the model's road-wheel angle at
    steer = 1, rear 0. The engine numbers are derived, not invented: one gear behind
    ``final_ratio``, ``max_rpm`` reached at top speed, torque falling linearly to 0 there (the
    model's fading drive force) from ``mass * max_accel`` at the wheels; ``drag_coefficient``
    is the Cd giving the model's ``k v^2`` drag on the body's frontal area; brake torques give
    ``max_brake_decel``/``hand_brake_decel`` (hand brake on the rear wheels, as in CARLA). The
    steering curve is flat: the model does not reduce the steer angle with speed.
    """
    p, (_, ey, ez), r = spec.params, spec.extent, spec.wheel_radius
    max_rpm = p.top_speed / r * 60.0 / (2.0 * math.pi) * _FINAL_RATIO
    launch_torque = spec.mass * p.max_accel * r / _FINAL_RATIO
    frontal_area = (2.0 * ey) * (2.0 * ez) * _FRONTAL_AREA_FILL
    front_x, rear_x, half_track = p.wheelbase - p.rear_axle_offset, -p.rear_axle_offset, 0.8 * ey

    def wheel(x: float, y: float, steer_deg: float, hand_brake: bool) -> carla.WheelPhysicsControl:
        at = transform.transform(carla.Location(x, y, r))
        return carla.WheelPhysicsControl(
            tire_friction=3.5, max_steer_angle=steer_deg, radius=r * 100.0,
            max_brake_torque=p.max_brake_decel * spec.mass * r / 4.0,
            max_handbrake_torque=p.hand_brake_decel * spec.mass * r / 2.0 if hand_brake else 0.0,
            position=carla.Vector3D(at.x * 100.0, at.y * 100.0, at.z * 100.0))

    return carla.VehiclePhysicsControl(
        torque_curve=[carla.Vector2D(0.0, launch_torque), carla.Vector2D(max_rpm, 0.0)],
        max_rpm=max_rpm, final_ratio=_FINAL_RATIO, use_gear_autobox=True,
        forward_gears=[carla.GearPhysicsControl(ratio=1.0, down_ratio=0.5, up_ratio=0.65)],
        mass=spec.mass, drag_coefficient=2.0 * p.drag_coefficient * spec.mass / (_AIR_DENSITY * frontal_area),
        center_of_mass=carla.Location(0.0, 0.0, 0.0),
        steering_curve=[carla.Vector2D(0.0, 1.0), carla.Vector2D(p.top_speed * 3.6, 1.0)],
        wheels=[wheel(front_x, -half_track, p.max_steer_deg, False), wheel(front_x, half_track, p.max_steer_deg, False),
                wheel(rear_x, -half_track, 0.0, True), wheel(rear_x, half_track, 0.0, True)])


def _plain(value):
    """carla value -> comparable plain Python (vectors, gears and lists by their numbers)."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    for fields in (("x", "y", "z"), ("x", "y"), ("ratio", "down_ratio", "up_ratio")):
        if all(hasattr(value, f) for f in fields):
            return tuple(round(float(getattr(value, f)), 3) for f in fields)
    return round(float(value), 3) if isinstance(value, float) else value


class Vehicle(Actor, carla.Vehicle):
    """carla.Vehicle driven by the pure bicycle model ``vehicle.step``; z and pitch follow the road."""

    _carla_class = carla.Vehicle

    def __init__(self, world, actor_id, type_id, transform, attributes, spec):
        super().__init__(world, actor_id, type_id, transform, attributes, extent=spec.extent)
        self._spec = spec
        self._params = spec.params
        self._state = VehicleState(transform.location.x, transform.location.y, transform.rotation.yaw)
        self._control = carla.VehicleControl()
        self._physics = True
        self._road_hint = None                 # set by the autopilot each tick: the route's waypoint
        self._light_state = carla.VehicleLightState.NONE

    def set_transform(self, transform: carla.Transform) -> None:
        """Teleport, keeping the speed (as carla); an autopilot car plans a new route from there."""
        super().set_transform(transform)
        s = self._state
        self._state = VehicleState(transform.location.x, transform.location.y, transform.rotation.yaw, s.speed)
        self._road_hint = None
        autopilot = self._world._autopilot
        if autopilot.is_registered(self):
            port = autopilot._npcs[self.id].port
            autopilot.unregister(self)
            autopilot.register(self, port)

    # The pose is kept as plain numbers (the bicycle state, road height and pitch): building carla
    # objects every tick for every car would cost more than moving it. ``_transform`` reads as before.
    @property
    def _transform(self) -> carla.Transform:
        return self.get_transform()

    @_transform.setter
    def _transform(self, t: carla.Transform) -> None:
        self._z, self._pitch, self._roll = t.location.z, t.rotation.pitch, t.rotation.roll

    def get_transform(self) -> carla.Transform:
        self._world._keep_pace()
        s = self._state
        return carla.Transform(carla.Location(s.x, s.y, self._z),
                               carla.Rotation(pitch=self._pitch, yaw=s.yaw, roll=self._roll))

    def get_velocity(self) -> carla.Vector3D:
        """Velocity of the actor origin, m/s: along the heading plus the yaw-rate swing about the rear axle."""
        self._world._keep_pace()
        s = self._state
        yaw, pitch = math.radians(s.yaw), math.radians(self._pitch)
        lateral = math.radians(s.yaw_rate) * self._params.rear_axle_offset
        return carla.Vector3D(s.speed * math.cos(pitch) * math.cos(yaw) - lateral * math.sin(yaw),
                              s.speed * math.cos(pitch) * math.sin(yaw) + lateral * math.cos(yaw),
                              s.speed * math.sin(pitch))

    def get_angular_velocity(self) -> carla.Vector3D:
        return carla.Vector3D(0.0, 0.0, self._state.yaw_rate)       # deg/s, like carla

    def get_acceleration(self) -> carla.Vector3D:
        s = self._state
        yaw = math.radians(s.yaw)
        centripetal = s.speed * math.radians(s.yaw_rate)
        return carla.Vector3D(s.accel * math.cos(yaw) - centripetal * math.sin(yaw),
                              s.accel * math.sin(yaw) + centripetal * math.cos(yaw), 0.0)

    def apply_control(self, control: carla.VehicleControl) -> None:
        """Control used from the next tick on (sticky, as carla's default ``sticky_control``)."""
        self._check_alive("apply_control")
        self._control = _copy_control(control)

    def get_control(self) -> carla.VehicleControl:
        return _copy_control(self._control)

    def get_physics_control(self) -> carla.VehiclePhysicsControl:
        """The car's limits as CARLA reports them (see ``vehicle_physics``); wheel positions are now's."""
        self._check_alive("get_physics_control")
        return vehicle_physics(self.get_transform(), dataclasses.replace(self._spec, params=self._params))

    def apply_physics_control(self, physics_control: carla.VehiclePhysicsControl) -> None:
        """Apply a changed front-wheel ``max_steer_angle`` (the one number the bicycle model uses).

        As in CARLA, wheel positions are read-only and ignored. Any other change raises
        ``UnsupportedFeatureError`` instead of being silently dropped.

        Raises:
            ValueError: not 4 wheels, or a steer angle outside (0, 80) deg.
            UnsupportedFeatureError: rear-wheel steering, unequal front angles, or any other field changed.
        """
        self._check_alive("apply_physics_control")
        current, wheels = self.get_physics_control(), list(physics_control.wheels)
        if len(wheels) != 4:
            raise ValueError(f"apply_physics_control: {len(wheels)} wheels given, the car has 4 (FL, FR, RL, RR)")
        angles = [float(w.max_steer_angle) for w in wheels]
        if angles[0] != angles[1] or angles[2] != 0 or angles[3] != 0:
            raise UnsupportedFeatureError(f"wheel max_steer_angle={angles}",
                                          "only equal front angles and unsteered rear wheels")
        changed = [f for f in _PHYSICS_FIELDS
                   if _plain(getattr(physics_control, f)) != _plain(getattr(current, f))]
        changed += [f"wheels[{i}].{f}" for i, (new, old) in enumerate(zip(wheels, current.wheels))
                    for f in _WHEEL_FIELDS if _plain(getattr(new, f)) != _plain(getattr(old, f))]
        if changed:
            raise UnsupportedFeatureError(f"changing VehiclePhysicsControl {', '.join(changed)}",
                                          "the kinematic car only takes the front wheels' max_steer_angle")
        try:
            self._params = dataclasses.replace(self._params, max_steer_deg=angles[0])
        except ValueError as exc:
            raise ValueError(f"apply_physics_control: front max_steer_angle={angles[0]}: {exc}") from None

    def get_wheel_steer_angle(self, wheel_location: carla.VehicleWheelLocation) -> float:
        """Road-wheel angle of the current control, deg (front wheels; the rear ones never steer)."""
        if wheel_location not in _FRONT_WHEELS:
            return 0.0
        return max(-1.0, min(1.0, float(self._control.steer))) * self._params.max_steer_deg

    def set_target_velocity(self, velocity: carla.Vector3D) -> None:
        """Set the speed to the velocity's component along the heading (a kinematic car cannot slide)."""
        self._check_alive("set_target_velocity")
        yaw = math.radians(self._state.yaw)
        speed = velocity.x * math.cos(yaw) + velocity.y * math.sin(yaw)
        s = self._state
        self._state = VehicleState(s.x, s.y, s.yaw, speed, s.yaw_rate, s.accel)

    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        """Hand the car to the Traffic Manager on ``tm_port`` (see ``traffic_manager``), or take it back."""
        self._check_alive("set_autopilot")
        if enabled:
            self._world._autopilot.register(self, int(tm_port))
            if not self._world._settings.synchronous_mode:
                self._world._start_clock()
        else:
            self._world._autopilot.unregister(self)
            self._road_hint = None

    def _road_waypoint(self):
        if self._road_hint is not None:
            return self._road_hint[-1]
        return self._world.get_map().get_waypoint(self.get_location())

    def get_speed_limit(self) -> float:
        """Speed limit of the road under the car, km/h (OpenDRIVE speed records, else the road type's)."""
        wp = self._road_waypoint()
        return self._world.get_map().speed_limit(wp.road_id, wp.s) if wp is not None else 30.0

    def get_traffic_light(self):
        """The traffic light whose trigger zone (the lanes just before its stop line) the car is in, or None."""
        self._check_alive("get_traffic_light")
        return self._world._light_at(self._world.get_map().get_waypoint(self.get_location()))

    def get_traffic_light_state(self):
        """State of ``get_traffic_light()``; Green when none affects the car (as CARLA)."""
        light = self.get_traffic_light()
        return light.state if light is not None else carla.TrafficLightState.Green

    def is_at_traffic_light(self) -> bool:
        """True when the car is in the trigger zone of a red light (as CARLA)."""
        light = self.get_traffic_light()
        return light is not None and light.state == carla.TrafficLightState.Red

    def set_light_state(self, light_state) -> None:
        self._light_state = carla.VehicleLightState(int(light_state))

    def get_light_state(self):
        return self._light_state

    def _planar(self) -> tuple:
        """(x, y, vx, vy, half length, is walker, id) for the autopilot's obstacle search."""
        s = self._state
        yaw = math.radians(s.yaw)
        return (s.x, s.y, s.speed * math.cos(yaw), s.speed * math.sin(yaw), self._spec.extent[0], 0.0, self._id)

    def _stop_dead(self) -> None:
        """A contact: the car stops where it is (the world reports the collision). The velocity it hit
        with is kept for this tick's collision sensor (``_impact_velocity``), which measures the impulse."""
        self._impact_velocity = self.get_velocity()
        s = self._state
        self._state = VehicleState(s.x, s.y, s.yaw, 0.0, 0.0, s.accel)

    def set_simulate_physics(self, enabled: bool = True) -> None:
        """False freezes the car where it is (it moves only by set_transform), as in carla."""
        self._physics = bool(enabled)

    def _step(self, dt: float, carla_map) -> None:
        """One world tick: bicycle model, then z and pitch from the road under the car."""
        if self._physics:
            self._state = step(self._state, self._control, dt, self._params)
        hint = self._road_hint                           # autopilot cars: their route's pose (cheaper)
        if hint is not None:
            rx, ry, rz, ryaw, rpitch, _ = hint
            yaw = math.radians(ryaw)
            ahead = (rx - self._state.x) * math.cos(yaw) + (ry - self._state.y) * math.sin(yaw)
            z = rz - ahead * math.tan(math.radians(rpitch)) * _PITCH_SIGN    # the point is ahead: follow the slope back
            pitch = (rpitch + 180.0) % 360.0 - 180.0
            if math.cos(math.radians(self._state.yaw - ryaw)) < 0:
                pitch = -pitch
            self._z, self._pitch, self._roll = z, pitch, 0.0
            return
        loc = carla.Location(self._state.x, self._state.y, self._z)
        wp = carla_map.get_waypoint(loc, project_to_road=True, lane_type=carla.LaneType.Any)
        if wp is not None:
            road = wp.transform
            pitch = (road.rotation.pitch + 180.0) % 360.0 - 180.0
            if math.cos(math.radians(self._state.yaw - road.rotation.yaw)) < 0:
                pitch = -pitch                            # driving against the lane's direction
            self._z, self._pitch, self._roll = road.location.z, pitch, 0.0


_PITCH_SIGN = 1.0       # carla's waypoint pitch: positive when the lane climbs along its direction


class Spectator(Actor):
    """The free camera of the world: a plain actor that can be moved."""


# ------------------------------------------------------------------------------------------
# Sensor data
# ------------------------------------------------------------------------------------------
class Image:
    """carla.Image: BGRA pixels plus the frame/time/camera they belong to.

    ``raw_data`` is a zero-copy byte view (len W*H*4), so
    ``np.frombuffer(image.raw_data, np.uint8).reshape(H, W, 4)`` works as with carla.
    """

    def __init__(self, frame: int, timestamp: float, transform: carla.Transform, fov: float, pixels: np.ndarray):
        if pixels.ndim != 3 or pixels.shape[2] != 4 or pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be HxWx4 uint8 BGRA, got {pixels.shape} {pixels.dtype}")
        self.frame = frame
        self.timestamp = timestamp
        self.transform = transform
        self.fov = fov
        self.height, self.width = pixels.shape[:2]
        self._pixels = np.ascontiguousarray(pixels)

    @property
    def frame_number(self) -> int:
        return self.frame

    @property
    def raw_data(self) -> memoryview:
        return memoryview(self._pixels).cast("B")

    def __len__(self) -> int:
        return self.width * self.height

    def convert(self, color_converter) -> None:
        if color_converter != carla.ColorConverter.Raw:
            raise UnsupportedFeatureError(f"Image.convert({color_converter}) (only ColorConverter.Raw)")

    def save_to_disk(self, path: str, color_converter=carla.ColorConverter.Raw) -> str:
        """Write the image (format from the suffix, PNG if none); ``%d``-style paths get the frame."""
        import cv2

        self.convert(color_converter)
        target = Path(path % self.frame if "%" in path else path)
        if not target.suffix:
            target = target.with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(target), self._pixels):
            raise OSError(f"could not write image to {target}")
        return str(target)

    def __repr__(self):
        return f"Image(frame={self.frame}, timestamp={self.timestamp:.6f}, width={self.width}, height={self.height})"


class LaneInvasionEvent:
    """carla.LaneInvasionEvent: the marked lines the parent crossed during one tick."""

    def __init__(self, frame: int, timestamp: float, transform: carla.Transform, actor, markings):
        self.frame = frame
        self.timestamp = timestamp
        self.transform = transform
        self.actor = actor
        self.crossed_lane_markings = list(markings)

    @property
    def frame_number(self) -> int:
        return self.frame

    def __repr__(self):
        return (f"LaneInvasionEvent(frame={self.frame}, "
                f"markings={[str(m.type) for m in self.crossed_lane_markings]})")


# ------------------------------------------------------------------------------------------
# Sensors
# ------------------------------------------------------------------------------------------
class Sensor(Actor, carla.Sensor):
    """carla.Sensor: produces data during ``world.tick`` and hands it to the ``listen`` callback."""

    _carla_class = carla.Sensor

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._callback: Callable | None = None

    def listen(self, callback: Callable) -> None:
        self._check_alive("listen")
        if not callable(callback):
            raise TypeError(f"listen() needs a callable, got {callback!r}")
        self._callback = callback
        if not self._world._settings.synchronous_mode:
            self._world._start_clock()            # asynchronous mode: data flows on its own, as on a server

    def stop(self) -> None:
        self._callback = None

    def is_listening(self) -> bool:
        return self._callback is not None

    def destroy(self) -> bool:
        self.stop()
        return super().destroy()

    def _on_tick(self, frame: int, timestamp: carla.Timestamp) -> None:
        """Called by the world after the vehicles moved; delivers this frame's data, if any."""


class RgbCamera(Sensor):
    """sensor.camera.rgb: renders only when listened to and due (``sensor_tick``)."""

    def __init__(self, world, actor_id, type_id, transform, attributes, parent):
        super().__init__(world, actor_id, type_id, transform, attributes, parent)
        self.width = int(attributes["image_size_x"])
        self.height = int(attributes["image_size_y"])
        self.fov = float(attributes["fov"])
        self._sensor_tick = float(attributes["sensor_tick"])
        if not (1 <= self.width <= 8192 and 1 <= self.height <= 8192):
            raise ValueError(f"camera image size {self.width}x{self.height} must be within 1..8192 pixels")
        if not 0 < self.fov < 180:
            raise ValueError(f"camera fov={self.fov} must be in (0, 180) degrees")
        if self._sensor_tick < 0:
            raise ValueError(f"sensor_tick={self._sensor_tick} must be >= 0 seconds")
        self._next_time = 0.0

    def _on_tick(self, frame, timestamp):
        callback = self._callback           # read once: another thread may stop() the camera meanwhile
        if callback is None or timestamp.elapsed_seconds + 1e-9 < self._next_time:
            return
        if self._world._settings.no_rendering_mode:          # carla renders nothing in this mode
            return
        self._next_time = timestamp.elapsed_seconds + self._sensor_tick
        transform = self.get_transform()
        pixels = self._world._renderer().render(transform, self.width, self.height, self.fov,
                                                self._world._weather)
        callback(Image(frame, timestamp.elapsed_seconds, transform, self.fov, pixels))


class LaneInvasionSensor(Sensor):
    """sensor.other.lane_invasion: an event whenever a wheel of the parent crosses a marked line.

    As in CARLA, each of the four corners of the parent's bounding box is looked up on the map
    every tick; a corner that moved to another lane of the same road section crossed the
    markings between the two lanes. Crossings inside junctions and between roads are not
    reported (CARLA's LaneCrossingCalculator neither), nor are lines of type NONE.
    """

    _MAX_LANES = 8

    def __init__(self, world, actor_id, type_id, transform, attributes, parent):
        if parent is None:
            raise ValueError("sensor.other.lane_invasion must be spawned with attach_to=<vehicle>")
        super().__init__(world, actor_id, type_id, transform, attributes, parent)
        self._previous: list | None = None

    def _corners(self) -> list[carla.Location]:
        t = self._parent.get_transform()
        e = self._parent.bounding_box.extent
        points = [carla.Location(sx * e.x, sy * e.y, 0.0) for sx in (1, -1) for sy in (1, -1)]
        return [t.transform(p) for p in points]

    def _on_tick(self, frame, timestamp):
        if self._parent is None or not self._parent.is_alive:
            return
        carla_map = self._world.get_map()
        current = [carla_map.get_waypoint(c, project_to_road=False, lane_type=carla.LaneType.Any)
                   for c in self._corners()]
        previous, self._previous = self._previous, current
        callback = self._callback
        if previous is None or callback is None:
            return
        markings = []
        for before, after in zip(previous, current):
            markings += self._crossed(before, after)
        if markings:
            callback(LaneInvasionEvent(frame, timestamp.elapsed_seconds, self.get_transform(),
                                             self._parent, markings))

    @classmethod
    def _crossed(cls, before, after) -> list:
        """Marked lines between two waypoints of the same road section (walking lane by lane)."""
        if (before is None or after is None or before.is_junction or after.is_junction
                or (before.road_id, before.section_id) != (after.road_id, after.section_id)
                or before.lane_id == after.lane_id):
            return []
        target = after.transform.location
        found, wp = [], before
        for _ in range(cls._MAX_LANES):
            if wp.lane_id == after.lane_id:
                break
            right = wp.transform.get_right_vector()
            loc = wp.transform.location
            if (target.x - loc.x) * right.x + (target.y - loc.y) * right.y > 0:
                marking, wp = wp.right_lane_marking, wp.get_right_lane()
            else:
                marking, wp = wp.left_lane_marking, wp.get_left_lane()
            if marking is not None and marking.type != carla.LaneMarkingType.NONE:
                found.append(marking)
            if wp is None:
                break
        return found


class ActorList(list):
    """carla.ActorList: a list with ``filter(wildcard)`` on type ids and ``find(id)``."""

    def filter(self, wildcard_pattern: str) -> "ActorList":
        return ActorList(a for a in self if fnmatch.fnmatchcase(a.type_id, wildcard_pattern))

    def find(self, id: int):  # noqa: A002 (carla's parameter name)
        return next((a for a in self if a.id == id), None)
