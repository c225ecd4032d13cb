"""The embedded world: a real ``carla.Map`` plus actors, settings, weather and the tick loop.

``tick()`` is the whole simulation step, in this order: frame += 1; every vehicle advances by
``fixed_delta_seconds`` (0.05 s when unset) under its last control; every sensor produces this
frame's data and calls its ``listen`` callback; ``on_tick`` callbacks get the snapshot. So when
``tick()`` returns the frame id, the callbacks of that frame have run (carla's synchronous mode
guarantees the data is sent; here it is delivered too). In asynchronous mode nothing runs by
itself: ``tick()`` or ``wait_for_tick()`` advances the world.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

import carla

from .actors import Actor, ActorList, LaneInvasionSensor, RgbCamera, Sensor, Spectator, Vehicle
from .blueprints import ActorBlueprint, BlueprintLibrary, default_blueprints
from .errors import CarlaSurface, UnsupportedFeatureError

logger = logging.getLogger(__name__)

DEFAULT_DELTA_SECONDS = 0.05
SPAWN_POINT_SPACING_M = 25.0          # along a lane
SPAWN_POINT_SEPARATION_M = 8.0        # between any two points: two cars fit
SPAWN_POINT_HEIGHT_M = 0.5            # CARLA's spawn points float a little above the road
_JUNCTION_CLEARANCE_M = 8.0
_SETTINGS_FIELDS = ("synchronous_mode", "no_rendering_mode", "fixed_delta_seconds", "substepping",
                    "max_substep_delta_time", "max_substeps", "max_culling_distance",
                    "deterministic_ragdolls", "tile_stream_distance", "actor_active_distance",
                    "spectator_as_ego")
_WEATHER_FIELDS = ("cloudiness", "precipitation", "precipitation_deposits", "wind_intensity",
                   "sun_azimuth_angle", "sun_altitude_angle", "fog_density", "fog_distance",
                   "fog_falloff", "wetness", "scattering_intensity", "mie_scattering_scale",
                   "rayleigh_scattering_scale", "dust_storm")


def copy_settings(settings: carla.WorldSettings) -> carla.WorldSettings:
    out = carla.WorldSettings()
    for name in _SETTINGS_FIELDS:
        if hasattr(settings, name):
            setattr(out, name, getattr(settings, name))
    return out


def copy_weather(weather: carla.WeatherParameters) -> carla.WeatherParameters:
    return carla.WeatherParameters(**{name: getattr(weather, name) for name in _WEATHER_FIELDS})


class EmbeddedMap(carla.Map):
    """The real ``carla.Map`` whose ``get_spawn_points`` works offline.

    Spawn points: driving-lane waypoints at least ``SPAWN_POINT_SPACING_M`` apart along each lane
    and ``SPAWN_POINT_SEPARATION_M`` apart from each other, at least ``_JUNCTION_CLEARANCE_M`` from any junction, in a fixed order (road, section, lane, s),
    ``SPAWN_POINT_HEIGHT_M`` above the road, heading along the lane.
    """

    def __init__(self, name: str, opendrive: str):
        super().__init__(name, opendrive)
        self._spawn_points: list[carla.Transform] | None = None

    def get_spawn_points(self) -> list[carla.Transform]:
        if self._spawn_points is None:
            self._spawn_points = self._generate_spawn_points()
        return [carla.Transform(carla.Location(t.location), carla.Rotation(t.rotation.pitch, t.rotation.yaw,
                                                                            t.rotation.roll))
                for t in self._spawn_points]

    def _generate_spawn_points(self) -> list[carla.Transform]:
        def clear_of_junction(wp) -> bool:
            ahead = wp.next(_JUNCTION_CLEARANCE_M)
            behind = wp.previous(_JUNCTION_CLEARANCE_M)
            if not ahead or not behind or any(w.is_junction for w in ahead + behind):
                return False
            # Where a lane overlaps a junction's area, the map resolves the spot to the junction.
            loc = wp.transform.location
            here = self.get_waypoint(carla.Location(loc.x, loc.y, loc.z + SPAWN_POINT_HEIGHT_M),
                                     project_to_road=False, lane_type=carla.LaneType.Driving)
            return here is not None and not here.is_junction

        candidates = [wp for wp in self.generate_waypoints(2.0)
                      if wp.lane_type == carla.LaneType.Driving and not wp.is_junction]
        candidates.sort(key=lambda w: (w.road_id, w.section_id, w.lane_id, w.s))
        points, last, taken = [], {}, {}
        for wp in candidates:
            key = (wp.road_id, wp.section_id, wp.lane_id)
            if key in last and abs(wp.s - last[key]) < SPAWN_POINT_SPACING_M:
                continue
            loc = wp.transform.location
            cell = (int(loc.x // SPAWN_POINT_SEPARATION_M), int(loc.y // SPAWN_POINT_SEPARATION_M))
            neighbours = (taken.get((cell[0] + i, cell[1] + j), ()) for i in (-1, 0, 1) for j in (-1, 0, 1))
            if any(loc.distance(other) < SPAWN_POINT_SEPARATION_M for group in neighbours for other in group):
                continue                 # where two roads or lane sections meet: one point, not two
            if not clear_of_junction(wp):
                continue
            last[key] = wp.s
            taken.setdefault(cell, []).append(loc)
            points.append(carla.Transform(carla.Location(loc.x, loc.y, loc.z + SPAWN_POINT_HEIGHT_M),
                                          carla.Rotation(pitch=0.0, yaw=wp.transform.rotation.yaw, roll=0.0)))
        return points


@dataclass
class WorldSnapshot:
    """carla.WorldSnapshot of one frame (frame, timestamp and the actors' states)."""

    id: int
    frame: int
    timestamp: carla.Timestamp
    _actors: dict

    @property
    def frame_count(self) -> int:
        return self.frame

    @property
    def elapsed_seconds(self) -> float:
        return self.timestamp.elapsed_seconds

    @property
    def delta_seconds(self) -> float:
        return self.timestamp.delta_seconds

    @property
    def platform_timestamp(self) -> float:
        return self.timestamp.platform_timestamp

    def has_actor(self, actor_id: int) -> bool:
        return actor_id in self._actors

    def find(self, actor_id: int):
        return self._actors.get(actor_id)

    def __iter__(self):
        return iter(self._actors.values())

    def __len__(self):
        return len(self._actors)


@dataclass(frozen=True)
class ActorSnapshot:
    """carla.ActorSnapshot: an actor's state at the snapshot's frame."""

    id: int
    _transform: carla.Transform
    _velocity: carla.Vector3D
    _angular_velocity: carla.Vector3D
    _acceleration: carla.Vector3D

    def get_transform(self):
        return self._transform

    def get_velocity(self):
        return self._velocity

    def get_angular_velocity(self):
        return self._angular_velocity

    def get_acceleration(self):
        return self._acceleration


def _footprint(transform: carla.Transform, extent) -> np.ndarray:
    """4x2 corners of a box on the ground plane."""
    yaw = math.radians(transform.rotation.yaw)
    fwd, right = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
    centre = np.array([transform.location.x, transform.location.y])
    return np.array([centre + sx * extent[0] * fwd + sy * extent[1] * right for sx in (1, -1) for sy in (1, -1)])


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test of two convex quadrilaterals."""
    for poly in (a, b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = a @ axis, b @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


class World(CarlaSurface):
    """carla.World on an embedded map. Obtain it from ``Client.get_world``/``load_world``."""

    _carla_class = carla.World

    def __init__(self, carla_map: EmbeddedMap, settings: carla.WorldSettings | None = None,
                 render_seed: int = 0, episode_id: int = 1):
        self._map = carla_map
        self._id = episode_id
        self._settings = copy_settings(settings) if settings is not None else carla.WorldSettings()
        self._weather = copy_weather(carla.WeatherParameters.ClearNoon)
        self._blueprints = BlueprintLibrary(default_blueprints())
        self._actors: dict[int, Actor] = {}
        self._next_actor_id = itertools.count(1)
        self._frame = 0
        self._elapsed = 0.0
        self._timestamp = carla.Timestamp(0, 0.0, 0.0, time.time())
        self._on_tick: dict[int, object] = {}
        self._next_callback_id = itertools.count(1)
        self._render_seed = render_seed
        self._renderer_instance = None
        self._alive = True
        self._spectator = self._add(Spectator(self, next(self._next_actor_id), "spectator",
                                              carla.Transform(carla.Location(0, 0, 50), carla.Rotation(pitch=-90))))

    @property
    def id(self) -> int:
        return self._id

    def __repr__(self):
        return f"World(id={self._id}, map={self._map.name}, frame={self._frame})"

    # -- map, blueprints, settings, weather ------------------------------------------------
    def get_map(self) -> EmbeddedMap:
        return self._map

    def get_blueprint_library(self) -> BlueprintLibrary:
        return self._blueprints

    def get_settings(self) -> carla.WorldSettings:
        return copy_settings(self._settings)

    def apply_settings(self, settings: carla.WorldSettings, seconds: float = 10.0) -> int:
        """Take a copy of ``settings``; returns the frame id they apply from (as carla).

        Raises:
            ValueError: a negative or non-finite ``fixed_delta_seconds``.
        """
        delta = settings.fixed_delta_seconds
        if delta is not None and not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"fixed_delta_seconds={delta!r} must be None or a number >= 0 seconds")
        self._settings = copy_settings(settings)
        return self._frame

    def delta_seconds(self) -> float:
        """The step ``tick`` advances by: ``fixed_delta_seconds``, or 0.05 s when it is unset/0."""
        return self._settings.fixed_delta_seconds or DEFAULT_DELTA_SECONDS

    def get_weather(self) -> carla.WeatherParameters:
        return copy_weather(self._weather)

    def set_weather(self, weather: carla.WeatherParameters) -> None:
        self._weather = copy_weather(weather)

    # -- actors ----------------------------------------------------------------------------
    def set_domain_randomization(self, randomization) -> None:
        """Embedded-only extension (a CARLA server has no such call): render every camera with
        ``randomization`` (a :class:`carla_embedded.randomization.DomainRandomization`), or as-is
        with None. For training data; labels are unaffected (the vehicle never moves)."""
        self._renderer().randomization = randomization

    def get_spectator(self) -> Actor:
        return self._spectator

    def get_actors(self, actor_ids=None) -> ActorList:
        actors = [a for a in self._actors.values() if a is not self._spectator]
        if actor_ids is not None:
            wanted = set(actor_ids)
            actors = [a for a in actors if a.id in wanted]
        return ActorList(actors)

    def get_actor(self, actor_id: int):
        return self._actors.get(actor_id)

    def spawn_actor(self, blueprint: ActorBlueprint, transform: carla.Transform, attach_to: Actor | None = None,
                    attachment_type=carla.AttachmentType.Rigid, bone: str = "") -> Actor:
        """Spawn like carla: ``transform`` is relative to ``attach_to`` when given.

        SpringArm attachments are treated as rigid ones (no lag). Raises RuntimeError when a car
        would overlap another car, as carla does.
        """
        if not self._alive:
            raise RuntimeError("this world was replaced by load_world; use client.get_world()")
        if not isinstance(blueprint, ActorBlueprint):
            raise TypeError(f"spawn_actor needs a blueprint from world.get_blueprint_library(), got {blueprint!r}")
        if bone:
            raise UnsupportedFeatureError("attaching to a bone")
        if attach_to is not None and (attach_to.get_world() is not self or not attach_to.is_alive):
            raise RuntimeError(f"spawn_actor: cannot attach to {attach_to!r}: not alive in this world")
        attributes = {a.id: a.as_str() for a in blueprint}
        actor_id = next(self._next_actor_id)
        if blueprint.vehicle_spec is not None:
            if attach_to is not None:
                raise UnsupportedFeatureError("attaching a vehicle to another actor")
            footprint = _footprint(transform, blueprint.vehicle_spec.extent)
            for other in self._actors.values():
                if not isinstance(other, Vehicle):
                    continue
                extent = other.bounding_box.extent
                if _overlap(footprint, _footprint(other.get_transform(), (extent.x, extent.y))):
                    raise RuntimeError(f"Spawn failed because of collision at spawn position "
                                       f"({transform.location.x:.1f}, {transform.location.y:.1f}) with {other!r}")
            actor = Vehicle(self, actor_id, blueprint.id, transform, attributes, blueprint.vehicle_spec)
        elif blueprint.id == "sensor.camera.rgb":
            actor = RgbCamera(self, actor_id, blueprint.id, transform, attributes, attach_to)
            self._renderer()                    # build the town raster now, not during the first tick
        elif blueprint.id == "sensor.other.lane_invasion":
            actor = LaneInvasionSensor(self, actor_id, blueprint.id, transform, attributes, attach_to)
        else:
            raise UnsupportedFeatureError(f"spawning {blueprint.id!r}")
        if attach_to is not None:
            actor._parent = attach_to
        return self._add(actor)

    def try_spawn_actor(self, blueprint: ActorBlueprint, transform: carla.Transform, attach_to: Actor | None = None,
                        attachment_type=carla.AttachmentType.Rigid, bone: str = ""):
        """``spawn_actor`` that returns None instead of raising when the spot is taken."""
        try:
            return self.spawn_actor(blueprint, transform, attach_to, attachment_type, bone)
        except RuntimeError as exc:
            if isinstance(exc, UnsupportedFeatureError):
                raise
            logger.debug("try_spawn_actor: %s", exc)
            return None

    def _add(self, actor: Actor) -> Actor:
        self._actors[actor.id] = actor
        return actor

    def _remove_actor(self, actor: Actor) -> None:
        self._actors.pop(actor.id, None)
        for other in self._actors.values():            # attached sensors stop, like carla's
            if other.parent is actor and isinstance(other, Sensor):
                other.stop()

    def _shutdown(self) -> None:
        """Called by the client when another world replaces this one: every actor dies."""
        for actor in self._actors.values():
            if isinstance(actor, Sensor):
                actor.stop()
        self._alive = False

    def _renderer(self):
        if self._renderer_instance is None:
            from .render import Renderer     # built on first camera: worlds without cameras stay cheap
            self._renderer_instance = Renderer(self._map, seed=self._render_seed)
        return self._renderer_instance

    # -- time ------------------------------------------------------------------------------
    def tick(self, seconds: float = 10.0) -> int:
        """Advance one step and deliver its sensor data; returns the new frame id."""
        if not self._alive:
            raise RuntimeError("this world was replaced by load_world; use client.get_world()")
        dt = self.delta_seconds()
        self._frame += 1
        self._elapsed += dt
        self._timestamp = carla.Timestamp(self._frame, self._elapsed, dt, time.time())
        actors = list(self._actors.values())
        for actor in actors:
            if isinstance(actor, Vehicle):
                actor._step(dt, self._map)
        for actor in actors:
            if isinstance(actor, Sensor) and actor.is_alive:
                actor._on_tick(self._frame, self._timestamp)
        if self._on_tick:
            snapshot = self.get_snapshot()
            for callback in list(self._on_tick.values()):
                callback(snapshot)
        return self._frame

    def wait_for_tick(self, seconds: float = 10.0) -> WorldSnapshot:
        """Asynchronous mode: advance one step (nothing else would) and return its snapshot."""
        if self._settings.synchronous_mode:
            raise RuntimeError(f"time-out of {seconds:g}s while waiting for the simulator: the world is in "
                               f"synchronous mode, call world.tick() to advance it")
        self.tick(seconds)
        return self.get_snapshot()

    def get_snapshot(self) -> WorldSnapshot:
        actors = {a.id: ActorSnapshot(a.id, a.get_transform(), a.get_velocity(), a.get_angular_velocity(),
                                      a.get_acceleration()) for a in self._actors.values()}
        return WorldSnapshot(self._id, self._frame, carla.Timestamp(
            self._timestamp.frame, self._timestamp.elapsed_seconds, self._timestamp.delta_seconds,
            self._timestamp.platform_timestamp), actors)

    def on_tick(self, callback) -> int:
        if not callable(callback):
            raise TypeError(f"on_tick() needs a callable, got {callback!r}")
        callback_id = next(self._next_callback_id)
        self._on_tick[callback_id] = callback
        return callback_id

    def remove_on_tick(self, callback_id: int) -> None:
        self._on_tick.pop(callback_id, None)
