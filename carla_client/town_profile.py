"""Per-town defaults derived from the map itself, so a new town (Town10HD, a user's .xodr) needs no
hand-written entry: traffic density from its spawn points, episode length from its road network.

Only carla.Map calls, so the same numbers come from a real server::

    profile = town_profile(world.get_map())
    TrafficConfig(vehicles=profile.vehicles, walkers=profile.walkers)
"""
from __future__ import annotations

from dataclasses import dataclass

import carla

#: one NPC vehicle per this many spawn points (CARLA's generate_traffic default, 30 cars on
#: Town10HD's ~155 points, is one per ~5)
SPAWN_POINTS_PER_VEHICLE = 5
WALKERS_PER_VEHICLE = 1 / 3
MAX_VEHICLES = 80


@dataclass(frozen=True)
class TownProfile:
    """What a town offers and the defaults derived from it.

    Attributes:
        name: the map's name without its folder.
        spawn_points: ``len(map.get_spawn_points())``.
        junctions: junctions in the road network.
        lane_km: total length of driving lanes, km (both directions counted).
        elevation_m: highest minus lowest spawn point, m (hills, bridges).
        vehicles, walkers: suggested NPC counts.
        route_m: suggested route length of one evaluation episode, m.
    """

    name: str
    spawn_points: int
    junctions: int
    lane_km: float
    elevation_m: float
    vehicles: int
    walkers: int
    route_m: float


def town_profile(carla_map, sampling_m: float = 2.0) -> TownProfile:
    """Measure ``carla_map`` (a ``carla.Map``) and derive its defaults."""
    points = carla_map.get_spawn_points()
    waypoints = [w for w in carla_map.generate_waypoints(sampling_m) if w.lane_type == carla.LaneType.Driving]
    junctions = {w.junction_id for w in waypoints if w.is_junction}
    heights = [p.location.z for p in points] or [0.0]
    lane_km = len(waypoints) * sampling_m / 1000.0
    vehicles = min(MAX_VEHICLES, len(points) // SPAWN_POINTS_PER_VEHICLE)
    return TownProfile(name=carla_map.name.rsplit("/", 1)[-1], spawn_points=len(points), junctions=len(junctions),
                       lane_km=round(lane_km, 2), elevation_m=round(max(heights) - min(heights), 2),
                       vehicles=vehicles, walkers=int(round(vehicles * WALKERS_PER_VEHICLE)),
                       route_m=float(min(1500.0, max(200.0, 40.0 * lane_km))))
