"""One episode lifecycle for every loop that drives a car: the collector, the drive loop and the benches.

Each of them needs the same four things, and they used to write them separately (and drift):

* :func:`ensure_town`: the world of a town, reusing the loaded one when it already is that town
  (a CARLA ``load_world`` costs seconds and resets the settings);
* :class:`EgoSpec`: which car (four-wheelers preferred: CARLA's ``vehicle.*`` also lists bikes),
  which camera (:class:`datasets.schema.CameraSpec`) and which extra sensors;
* :func:`spawn_ego`: a context manager that spawns the car and its sensors and always destroys what
  it spawned (in reverse order), whatever ends the episode;
* :class:`StopRule`: when an episode is over (route end, tick limit, stuck, off the route).

Only carla API calls: it runs unchanged on a CARLA server and on the embedded simulator.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import carla

from datasets.schema import CameraSpec, Mount

logger = logging.getLogger(__name__)

SPAWN_LIFT_M = 0.3
"""Spawn this far above the road point: CARLA refuses a spawn whose box touches the ground mesh."""


def ensure_town(client, town: str):
    """``(world, settings_before_load)``: the world of ``town``, loaded only when another town is up.

    ``settings_before_load`` is the world's settings before a load (CARLA's ``load_world`` resets them),
    None when the loaded world was reused; callers restore it when they are done.
    """
    world = client.get_world()
    if world.get_map().name.rsplit("/", 1)[-1] == town:
        return world, None
    before = world.get_settings()
    return client.load_world(town), before


def town_names(client) -> list[str]:
    """Short names of the towns the simulator offers (``Town02``, ...), sorted."""
    return sorted({m.rsplit("/", 1)[-1] for m in client.get_available_maps()})


def resolve_town(client, town: str) -> str:
    """The simulator's spelling of ``town`` (case-insensitive); ValueError listing the valid towns."""
    available = town_names(client)
    by_lower = {m.lower(): m for m in available}
    if town.lower() not in by_lower:
        raise ValueError(f"unknown town {town!r}; valid: {', '.join(available)}")
    return by_lower[town.lower()]


def mount_transform(mount: Mount) -> carla.Transform:
    """The camera's attach transform relative to the car."""
    return carla.Transform(carla.Location(x=mount.x, y=mount.y, z=mount.z),
                           carla.Rotation(pitch=mount.pitch, yaw=mount.yaw, roll=mount.roll))


def pick_vehicle(blueprint_library, pattern: str = "vehicle.*"):
    """First matching blueprint by id, preferring four-wheelers (CARLA's ``vehicle.*`` also lists bikes)."""
    matches = sorted(blueprint_library.filter(pattern), key=lambda b: b.id)
    if not matches:
        raise ValueError(f"no vehicle blueprint matches {pattern!r}")
    cars = [b for b in matches if b.has_attribute("number_of_wheels")
            and int(b.get_attribute("number_of_wheels").as_int()) == 4]
    return (cars or matches)[0]


def camera_blueprint(blueprint_library, spec: CameraSpec):
    """``sensor.camera.rgb`` set to the spec's resolution and field of view."""
    bp = blueprint_library.find("sensor.camera.rgb")
    bp.set_attribute("image_size_x", str(spec.width))
    bp.set_attribute("image_size_y", str(spec.height))
    bp.set_attribute("fov", str(spec.fov))
    return bp


@dataclass(frozen=True)
class EgoSpec:
    """The car under test and what it carries.

    Args:
        vehicle: blueprint filter; the first four-wheeler by id is used (:func:`pick_vehicle`).
        camera: the RGB camera (resolution, fov, mount); None spawns no camera.
        sensors: extra sensors by blueprint id, attached at the car's origin (e.g. ``sensor.other.lane_invasion``).
        role_name: CARLA's ``role_name`` attribute (``hero``: what CARLA tools look for).
    """

    vehicle: str = "vehicle.*"
    camera: CameraSpec | None = field(default_factory=CameraSpec)
    sensors: tuple[str, ...] = ()
    role_name: str = "hero"


@dataclass
class Ego:
    """What :func:`spawn_ego` spawned: the car, its camera and the extra sensors by blueprint id."""

    vehicle: object
    camera: object | None
    sensors: dict
    actors: list


def lifted(transform: carla.Transform, lift_m: float = SPAWN_LIFT_M) -> carla.Transform:
    loc = transform.location
    return carla.Transform(carla.Location(loc.x, loc.y, loc.z + lift_m), transform.rotation)


@contextlib.contextmanager
def spawn_ego(world, spec: EgoSpec, candidates: Iterable[carla.Transform]) -> Iterator[Ego]:
    """Spawn the car at the first free candidate transform (lifted :data:`SPAWN_LIFT_M`), then its sensors.

    ``candidates`` may be a lazy iterable (the collector draws random spawn points from its seeded
    generator only as far as needed). Everything spawned is destroyed on exit, in reverse order,
    also when the body raises or is interrupted.

    Raises:
        RuntimeError: no candidate was free.
    """
    bl = world.get_blueprint_library()
    vehicle_bp = pick_vehicle(bl, spec.vehicle)
    if vehicle_bp.has_attribute("role_name"):
        vehicle_bp.set_attribute("role_name", spec.role_name)
    actors: list = []
    try:
        vehicle = None
        tried = 0
        for transform in candidates:
            tried += 1
            vehicle = world.try_spawn_actor(vehicle_bp, lifted(transform))
            if vehicle is not None:
                break
        if vehicle is None:
            raise RuntimeError(f"could not spawn the vehicle at {tried} spawn point(s) (all occupied?)")
        actors.append(vehicle)
        camera = None
        if spec.camera is not None:
            camera = world.spawn_actor(camera_blueprint(bl, spec.camera), mount_transform(spec.camera.mount),
                                       attach_to=vehicle)
            actors.append(camera)
        sensors = {}
        for sensor_id in spec.sensors:
            sensors[sensor_id] = world.spawn_actor(bl.find(sensor_id), carla.Transform(), attach_to=vehicle)
            actors.append(sensors[sensor_id])
        yield Ego(vehicle, camera, sensors, actors)
    finally:
        destroy(actors)


def destroy(actors) -> None:
    """Destroy actors in reverse order (sensors before the car they ride on); one already gone is not an error."""
    for actor in reversed(actors):
        try:
            actor.destroy()
        except RuntimeError as e:  # already destroyed (server reset, map reload): nothing left to clean
            logger.debug("destroy %s failed: %s", actor, e)


@dataclass
class StopRule:
    """When an episode ends; one object for the collector, the drive loop and the evaluation.

    Call :meth:`check` once per tick. Reasons, in the order they are tested:
    ``route_completed`` (less than ``end_margin_m`` of route left), ``route_deviation`` (farther than
    ``max_route_deviation_m`` from the route), ``blocked`` (below ``stuck_speed_ms`` for more than
    ``stuck_s`` simulated seconds, counted after ``warmup_ticks``), ``max_ticks``.

    The collector ends early (4 s stuck, 4 m off the route: it wants frames, not a verdict); the
    evaluation follows the Leaderboard (30 m deviation) and gives a stopped car 30 s.
    """

    end_margin_m: float = 2.0
    max_route_deviation_m: float = 30.0
    stuck_speed_ms: float = 0.5 / 3.6
    stuck_s: float = 30.0
    max_ticks: int | None = None
    warmup_ticks: int = 0
    _slow_s: float = field(default=0.0, init=False, repr=False)
    _ticks: int = field(default=0, init=False, repr=False)

    def check(self, dt: float, speed_ms: float, remaining_m: float, route_dist_m: float,
              waiting: bool = False) -> str | None:
        """The reason the episode ends after this tick, or None to go on.

        ``waiting``: the car stands still on purpose (at a red light): that time does not count as blocked.
        """
        self._ticks += 1
        if not waiting:
            slow = speed_ms < self.stuck_speed_ms and self._ticks > self.warmup_ticks
            self._slow_s = self._slow_s + dt if slow else 0.0
        if remaining_m < self.end_margin_m:
            return "route_completed"
        if route_dist_m > self.max_route_deviation_m:
            return "route_deviation"
        if self._slow_s > self.stuck_s:
            return "blocked"
        if self.max_ticks is not None and self._ticks >= self.max_ticks:
            return "max_ticks"
        return None
