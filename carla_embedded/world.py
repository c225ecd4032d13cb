"""The embedded world: a real ``carla.Map`` plus actors, settings, weather and the tick loop.

``tick()`` is the whole simulation step, in this order: frame += 1; traffic lights advance; the
autopilot (``traffic_manager``) sets its cars' controls; every vehicle advances by
``fixed_delta_seconds`` (0.05 s when unset) under its last control; walkers walk; touching
vehicles/walkers are stopped and their contact recorded (``_contacts``); every sensor produces
this frame's data and calls its ``listen`` callback; ``on_tick`` callbacks get the snapshot. So
when ``tick()`` returns the frame id, the callbacks of that frame have run.

Asynchronous mode (CARLA's default): as on a server, the world advances by itself, in real time
at the fixed (or 0.05 s) step, on a background thread that starts at the first ``wait_for_tick``,
``get_snapshot``, sensor ``listen`` or ``set_autopilot`` and stops when the world turns
synchronous, is replaced, or the program calls ``tick()`` itself (then it drives the clock).
Callbacks then run on that thread, as CARLA's run on the client's worker threads.
"""
from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

import carla

from .actors import Actor, ActorList, LaneInvasionSensor, Sensor, Spectator, Vehicle
from .blueprints import ActorBlueprint, BlueprintLibrary, default_blueprints
from .errors import CarlaSurface, UnsupportedFeatureError
from .towns import road_speed_limits
from .traffic_lights import TrafficLight, advance as advance_lights, build_traffic_lights
from .traffic_manager import ROUTE_STEP_M, Autopilot
from .walkers import SidewalkNetwork, Walker, WalkerAIController

logger = logging.getLogger(__name__)

DEFAULT_DELTA_SECONDS = 0.05
#: the longest a thread looking at a late asynchronous world waits for its step (``World._keep_pace``)
PACE_WAIT_SECONDS = 1.0
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
        self._speed_limits = road_speed_limits(opendrive)

    def speed_limit(self, road_id: int, s: float) -> float:
        """Speed limit in km/h at ``s`` on road ``road_id`` (see ``towns.road_speed_limits``)."""
        records = self._speed_limits.get(road_id)
        if not records:
            return self._speed_limits.get(None, [(0.0, 30.0)])[0][1]
        limit = records[0][1]
        for start, value in records:
            if start <= s + 1e-6:
                limit = value
        return limit

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


def _sensor_classes() -> dict:
    """Blueprint id -> class of the sensors in ``sensors.py`` (imported when first spawned)."""
    from .sensors import SENSOR_CLASSES
    return SENSOR_CLASSES


def _footprint(transform: carla.Transform, extent) -> np.ndarray:
    """4x2 corners of a box on the ground plane, in order around it (the separating-axis test
    takes consecutive corners as edges)."""
    yaw = math.radians(transform.rotation.yaw)
    fwd, right = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
    centre = np.array([transform.location.x, transform.location.y])
    return np.array([centre + sx * extent[0] * fwd + sy * extent[1] * right for sx, sy in ((1, 1), (1, -1), (-1, -1), (-1, 1))])


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


class World(CarlaSurface, carla.World):
    """carla.World on an embedded map. Obtain it from ``Client.get_world``/``load_world``."""

    _carla_class = carla.World
    #: bumped when an actor is added, removed or teleported: what the sensors' actor boxes keep depends on it
    _actors_version = 0
    #: perf_counter time past which the asynchronous clock is a step late (``_keep_pace``); None: no clock
    _late_after: float | None = None

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
        lights, self._light_groups = build_traffic_lights(self, lambda: next(self._next_actor_id))
        self._light_lanes: dict[tuple[int, int], TrafficLight] = {}
        self._lights = lights
        for index, light in enumerate(lights):
            light._index = index
            self._add(light)
            for lane in light._lanes:
                self._light_lanes[lane] = light
        self._autopilot = Autopilot(self)
        self._sidewalk_network: SidewalkNetwork | None = None
        self._walker_rng = np.random.default_rng(render_seed)
        self._pedestrians_cross_factor = 0.0
        self._contacts: list = []             # (frame, actor, other actor) touching during the last tick
        self._lock = threading.RLock()
        self._ticked = threading.Condition(self._lock)
        self._clock: threading.Thread | None = None
        self._manual_clock = False

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
        if not self._settings.synchronous_mode and (self._clock is not None or len(self._autopilot)):
            self._manual_clock = False
            self._start_clock()
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
        """Every actor but the spectator; with ``actor_ids``, those actors in the order asked
        (CARLA's ``generate_traffic.py`` relies on that order)."""
        self._keep_pace()
        if actor_ids is not None:
            found = (self._actors.get(int(i)) for i in actor_ids)
            return ActorList(a for a in found if a is not None and a is not self._spectator)
        return ActorList(a for a in list(self._actors.values()) if a is not self._spectator)

    # -- traffic lights ----------------------------------------------------------------------
    def freeze_all_traffic_lights(self, frozen: bool) -> None:
        for group in self._light_groups:
            for light in group.lights:
                light.freeze(frozen)

    def reset_all_traffic_lights(self) -> None:
        for group in self._light_groups:
            group.lights[0].reset_group()

    def get_traffic_lights_in_junction(self, junction_id: int) -> list:
        return [light for group in self._light_groups for light in group.lights if light._junction_id == junction_id]

    def _light_codes(self) -> np.ndarray:
        """State of every light as a code (0 red, 1 yellow, 2 green, 3 off), indexed by ``light._index``."""
        from .traffic_manager import _STATE_CODE
        return np.array([_STATE_CODE[light._state] if light.is_alive else 3 for light in self._lights], dtype=np.int64)

    def _light_for_stop(self, waypoint):
        """The light whose stop line is within one route step after ``waypoint``, else None."""
        light = self._light_lanes.get((waypoint.road_id, waypoint.lane_id))
        if light is None or waypoint.is_junction:
            return None
        stop_s = light._lanes[(waypoint.road_id, waypoint.lane_id)]
        return light if abs(stop_s - waypoint.s) < ROUTE_STEP_M + 0.1 else None

    def _light_at(self, waypoint):
        """The light whose trigger zone holds ``waypoint`` (``Vehicle.get_traffic_light``), else None."""
        if waypoint is None or waypoint.is_junction:
            return None
        light = self._light_lanes.get((waypoint.road_id, waypoint.lane_id))
        return light if light is not None and light._controls(waypoint.road_id, waypoint.lane_id, waypoint.s) else None

    # -- walkers -----------------------------------------------------------------------------
    def _sidewalks(self) -> SidewalkNetwork:
        if self._sidewalk_network is None:
            self._sidewalk_network = SidewalkNetwork(self._map)
        return self._sidewalk_network

    def get_random_location_from_navigation(self):
        """A random point on a sidewalk (the walkers' navigation), or None when the map has none."""
        return self._sidewalks().random_location(self._walker_rng)

    def set_pedestrians_seed(self, seed: int) -> None:
        self._walker_rng = np.random.default_rng(int(seed))

    def set_pedestrians_cross_factor(self, percentage: float) -> None:
        """Recorded only: walkers cross roads at junction corners, never mid-block (see ``walkers``)."""
        if not 0.0 <= percentage <= 1.0:
            raise ValueError(f"set_pedestrians_cross_factor({percentage!r}) must be in [0, 1]")
        self._pedestrians_cross_factor = float(percentage)

    def _moving_actors(self) -> list:
        """The vehicles and walkers (a new list), looked up again only when actors are added or removed."""
        key = (self._actors_version, len(self._actors))
        cached = self.__dict__.get("_moving_cache")
        if cached is None or cached[0] != key:
            cached = self._moving_cache = (key, [a for a in list(self._actors.values())
                                                 if isinstance(a, (Vehicle, Walker))])
        return list(cached[1])

    def get_actor(self, actor_id: int):
        self._keep_pace()
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
        elif blueprint.walker_extent is not None:
            if attach_to is not None:
                raise UnsupportedFeatureError("attaching a walker to another actor")
            actor = Walker(self, actor_id, blueprint.id, transform, attributes, blueprint.walker_extent)
        elif blueprint.id == "controller.ai.walker":
            actor = WalkerAIController(self, actor_id, blueprint.id, transform, attributes, attach_to)
        elif blueprint.id in _sensor_classes():
            actor = _sensor_classes()[blueprint.id](self, actor_id, blueprint.id, transform, attributes, attach_to)
            if blueprint.id == "sensor.camera.rgb":
                self._renderer()                # build the town raster now, not during the first tick
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
        with self._lock if hasattr(self, "_lock") else _NO_LOCK:
            self._actors[actor.id] = actor
            self._actors_version += 1
        return actor

    def _remove_actor(self, actor: Actor) -> None:
        with self._lock:
            self._actors.pop(actor.id, None)
            self._actors_version += 1
            if isinstance(actor, Vehicle):
                self._autopilot.unregister(actor)
            if isinstance(actor, Walker) and actor._controller is not None:
                actor._controller.stop()
        for other in self._actors.values():            # attached sensors stop, like carla's
            if other.parent is actor and isinstance(other, Sensor):
                other.stop()

    def _shutdown(self) -> None:
        """Called by the client when another world replaces this one: every actor dies."""
        self._alive = False
        clock = self._clock
        if clock is not None and clock is not threading.current_thread():
            clock.join(timeout=2.0)
        for actor in self._actors.values():
            if isinstance(actor, Sensor):
                actor.stop()
        self._alive = False

    def _renderer(self):
        if self._renderer_instance is None:
            from .render import Renderer     # built on first camera: worlds without cameras stay cheap
            from .threads import configure_render_threads
            configure_render_threads()       # two OpenCV threads unless $CARLA_EMBEDDED_THREADS says otherwise
            self._renderer_instance = Renderer(self._map, seed=self._render_seed)
        return self._renderer_instance

    # -- time ------------------------------------------------------------------------------
    def tick(self, seconds: float = 10.0) -> int:
        """Advance one step and deliver its sensor data; returns the new frame id.

        In asynchronous mode this also stops the world's own clock: the program drives it.
        """
        if not self._alive:
            raise RuntimeError("this world was replaced by load_world; use client.get_world()")
        if threading.current_thread() is not self._clock:
            self._manual_clock = True
        with self._lock:
            return self._step_world()

    def _step_world(self) -> int:
        dt = self.delta_seconds()
        self._frame += 1
        self._elapsed += dt
        self._timestamp = carla.Timestamp(self._frame, self._elapsed, dt, time.time())
        advance_lights(self._light_groups, dt)
        if len(self._autopilot):
            self._autopilot.update(dt)
        movers, sensors = [], []
        for actor in list(self._actors.values()):   # one pass, the actor's kind looked up by its class
            kind = _KINDS.get(type(actor))
            if kind is None:
                kind = _KINDS[type(actor)] = _kind_of(actor)
            if kind == "vehicle":
                actor._step(dt, self._map)
                movers.append(actor)
            elif kind == "walker":
                actor._step(dt)
                movers.append(actor)
            elif kind == "walker_ai":
                actor._step(dt)
            elif kind == "sensor":
                sensors.append(actor)
        self._contacts = _contacts(movers, self._frame) if len(movers) > 1 else []
        for actor in sensors:                     # after every actor moved: they see this tick's world
            if actor.is_alive:
                actor._on_tick(self._frame, self._timestamp)
        if self._on_tick:
            snapshot = self.get_snapshot()
            for callback in list(self._on_tick.values()):
                callback(snapshot)
        self._ticked.notify_all()
        return self._frame

    # -- the asynchronous clock ----------------------------------------------------------------
    def _start_clock(self) -> None:
        """Start the background clock if the world is asynchronous and nobody ticks it by hand."""
        if (self._settings.synchronous_mode or self._manual_clock or not self._alive
                or (self._clock is not None and self._clock.is_alive())):
            return
        self._clock = threading.Thread(target=self._run_clock, name=f"carla_embedded-world-{self._id}", daemon=True)
        self._clock.start()

    def _run_clock(self) -> None:
        next_time = time.perf_counter()
        try:
            while self._alive and not self._settings.synchronous_mode and not self._manual_clock:
                delta = self.delta_seconds()
                next_time += delta
                with self._lock:
                    if self._settings.synchronous_mode or self._manual_clock or not self._alive:
                        break
                    cpu = time.thread_time()
                    try:
                        self._step_world()
                    except Exception:                  # a user callback failed: report it, keep the world going
                        logger.exception("asynchronous world tick failed")
                    cpu = time.thread_time() - cpu
                now = time.perf_counter()
                delay = next_time - now
                next_time = max(next_time, now)       # running late (slow sensors): no catch-up burst
                # the next step starts at next_time and, with the GIL to itself, takes about this one's
                # CPU time (its wall time is no guide: starved, it is mostly waiting for the GIL)
                self._late_after = next_time + cpu + delta
                if delay > 0:
                    time.sleep(delay)
        finally:
            self._late_after = None
            with self._ticked:                        # nobody waits out PACE_WAIT_SECONDS for a stopped clock
                self._ticked.notify_all()

    def _keep_pace(self) -> None:
        """Asynchronous mode: a thread that looks at the world while its clock is more than a step
        late waits (up to ``PACE_WAIT_SECONDS``) for the clock's next step. Late: a step behind its
        schedule plus its own CPU time, so a world whose steps are merely slow (big cameras) makes
        nobody wait.

        Why: the clock is a thread of the user's process. A user thread that keeps the GIL
        (pygame's ``Clock.tick_busy_loop`` in ``manual_control.py``, a busy Python loop) starves it:
        each time the renderer releases the GIL it waits for it again, and the world fell to 0.4
        steps/s (``python -m carla_embedded.bench_async``). A CARLA server is another process and
        keeps its pace; waiting here gives the clock the GIL, so the world a program observes
        advances about as it would on a server.
        """
        late_after = self._late_after
        if late_after is None or time.perf_counter() < late_after:
            return
        clock = self._clock
        if clock is None or clock is threading.current_thread():
            return                                # the clock's own step (sensor callbacks) never waits
        start, deadline = self._frame, time.perf_counter() + PACE_WAIT_SECONDS
        stepped = False
        if self._lock.acquire(timeout=PACE_WAIT_SECONDS):   # held through a step: a step may be blocked
            try:
                stepped = self._ticked.wait_for(lambda: self._frame != start or self._late_after is None,
                                                timeout=max(0.0, deadline - time.perf_counter()))
            finally:
                self._lock.release()
        if not stepped:
            # a sensor callback may be waiting on this very thread: do not make every call wait again
            self._late_after = time.perf_counter() + PACE_WAIT_SECONDS

    def wait_for_tick(self, seconds: float = 10.0) -> WorldSnapshot:
        """Asynchronous mode: wait for the world's next step and return its snapshot."""
        if self._settings.synchronous_mode:
            raise RuntimeError(f"time-out of {seconds:g}s while waiting for the simulator: the world is in "
                               f"synchronous mode, call world.tick() to advance it")
        if self._manual_clock:
            self.tick(seconds)
            return self.get_snapshot()
        self._start_clock()
        with self._ticked:
            start = self._frame
            if not self._ticked.wait_for(lambda: self._frame > start or not self._alive, timeout=seconds):
                raise RuntimeError(f"time-out of {seconds:g}s while waiting for the simulator")
            return self.get_snapshot()

    def get_snapshot(self) -> WorldSnapshot:
        if not self._settings.synchronous_mode:
            self._start_clock()
            self._keep_pace()
        actors = {a.id: ActorSnapshot(a.id, a.get_transform(), a.get_velocity(), a.get_angular_velocity(),
                                      a.get_acceleration()) for a in list(self._actors.values())}
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


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()


_KINDS: dict = {}
"""Actor class -> what a tick does with it (the world holds ~100 traffic lights that need nothing)."""


def _kind_of(actor) -> str:
    for cls, kind in ((Vehicle, "vehicle"), (Walker, "walker"), (WalkerAIController, "walker_ai"), (Sensor, "sensor")):
        if isinstance(actor, cls):
            return kind
    return "other"


def _contacts(movers: list, frame: int) -> list:
    """Pairs of vehicles/walkers whose footprints overlap after this step; a car moving into the
    other stops (one backing away keeps going, so it can get free).

    Broad phase: centre distance against the sum of half diagonals, all pairs at once; exact
    separating-axis test only for the few close pairs.
    """
    centres = np.array([a._planar()[:2] for a in movers])
    radii = np.array([math.hypot(a._bbox.extent.x, a._bbox.extent.y) for a in movers])
    d = np.hypot(centres[:, None, 0] - centres[None, :, 0], centres[:, None, 1] - centres[None, :, 1])
    close = np.argwhere(np.triu(d < radii[:, None] + radii[None, :], k=1))
    found = []
    for i, j in close:
        a, b = movers[i], movers[j]
        if isinstance(a, Walker) and isinstance(b, Walker):
            continue                                  # walkers brush past each other
        fa = _footprint(a._transform, (a._bbox.extent.x, a._bbox.extent.y))
        fb = _footprint(b._transform, (b._bbox.extent.x, b._bbox.extent.y))
        if _overlap(fa, fb):
            found.append((frame, a, b))
            for actor, other in ((a, b), (b, a)):
                if isinstance(actor, Vehicle):
                    x, y, vx, vy = actor._planar()[:4]
                    ox, oy = other._planar()[:2]
                    if vx * (ox - x) + vy * (oy - y) > 0.0:      # moving into the other: stop; backing away: go on
                        actor._stop_dead()
    return found
