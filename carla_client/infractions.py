"""Collisions and red-light runs of the ego car, with the CARLA Leaderboard's penalty factors.

The Leaderboard multiplies a route's completion by one factor per infraction:
collision with a pedestrian 0.50, with a vehicle 0.60, with anything else (static) 0.65, a red
light run 0.70. ``InfractionMonitor`` counts them with carla API calls only: a
``sensor.other.collision`` attached to the ego, and ``vehicle.get_traffic_light()`` read each
tick (a run is the ego entering the junction while the light it was waiting at is red)::

    with InfractionMonitor(world, ego) as monitor:
        for _ in range(n):
            world.tick()
            monitor.update()
    print(monitor.counts(), monitor.penalty())
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import carla

logger = logging.getLogger(__name__)

#: CARLA Leaderboard penalty factor per infraction kind
PENALTIES = {"collision_pedestrian": 0.50, "collision_vehicle": 0.60, "collision_static": 0.65,
             "red_light": 0.70}
COLLISION_BLUEPRINT = "sensor.other.collision"


@dataclass(frozen=True)
class Infraction:
    kind: str                 # a key of PENALTIES
    frame: int
    location: tuple[float, float, float]
    other: str = ""           # the other actor's type id (collisions) or the light's id (red lights)


class InfractionMonitor:
    """Counts the ego's infractions (see the module docstring).

    Args:
        world: the ego's world.
        ego: the ego vehicle.
        collisions: attach the collision sensor (needs ``sensor.other.collision``).
        repeat_window_s: a collision with the same actor within this time counts once (the sensor
            reports every physics contact).

    Raises:
        RuntimeError: ``collisions`` is asked and the simulator has no collision sensor.
    """

    def __init__(self, world, ego, collisions: bool = True, repeat_window_s: float = 2.0):
        self.world, self.ego = world, ego
        self.want_collisions = collisions
        self.repeat_window_s = repeat_window_s
        self.infractions: list[Infraction] = []
        self._sensor = None
        self._last_hit: dict[int, float] = {}
        self._waiting_at = None            # the light whose trigger zone the ego was in at the last update
        self._seen_red = False

    def __enter__(self) -> "InfractionMonitor":
        if self.want_collisions:
            self.attach_collision_sensor()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def attach_collision_sensor(self) -> None:
        library = self.world.get_blueprint_library()
        if not library.filter(COLLISION_BLUEPRINT):
            raise RuntimeError(f"this simulator has no {COLLISION_BLUEPRINT!r} blueprint, so collisions cannot be "
                               f"counted; pass collisions=False to count red lights only")
        self._sensor = self.world.spawn_actor(library.find(COLLISION_BLUEPRINT), carla.Transform(),
                                              attach_to=self.ego)
        self._sensor.listen(self._on_collision)

    def close(self) -> None:
        if self._sensor is not None:
            self._sensor.stop()
            if self._sensor.is_alive:
                self._sensor.destroy()
            self._sensor = None

    # -- events ------------------------------------------------------------------------------
    def _on_collision(self, event) -> None:
        other = event.other_actor
        type_id = other.type_id if other is not None else ""
        other_id = other.id if other is not None else -1
        now = event.timestamp
        last = self._last_hit.get(other_id)
        self._last_hit[other_id] = now
        if last is not None and now - last < self.repeat_window_s:
            return
        if type_id.startswith("walker."):
            kind = "collision_pedestrian"
        elif type_id.startswith("vehicle."):
            kind = "collision_vehicle"
        else:
            kind = "collision_static"
        loc = event.transform.location
        self.infractions.append(Infraction(kind, event.frame, (loc.x, loc.y, loc.z), type_id))
        logger.info("infraction: %s with %s at frame %d", kind, type_id or "the scene", event.frame)

    def update(self) -> None:
        """Call once per tick, after ``world.tick()``: detects a run of the light the ego waits at."""
        light = self.ego.get_traffic_light()
        if light is not None:
            if self._waiting_at is None or light.id != self._waiting_at.id:
                self._seen_red = False
            self._waiting_at = light
            self._seen_red = light.get_state() == carla.TrafficLightState.Red
            return
        if self._waiting_at is None:
            return
        waypoint = self.world.get_map().get_waypoint(self.ego.get_location())
        if waypoint is not None and waypoint.is_junction and self._seen_red:
            loc = self.ego.get_location()
            snapshot = self.world.get_snapshot()
            self.infractions.append(Infraction("red_light", snapshot.frame, (loc.x, loc.y, loc.z),
                                               str(self._waiting_at.id)))
            logger.info("infraction: red light %d run at frame %d", self._waiting_at.id, snapshot.frame)
        self._waiting_at, self._seen_red = None, False

    # -- results -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {kind: 0 for kind in PENALTIES}
        for infraction in self.infractions:
            out[infraction.kind] += 1
        return out

    def penalty(self) -> float:
        """Product of the penalty factors of every infraction (1.0 when none)."""
        factor = 1.0
        for infraction in self.infractions:
            factor *= PENALTIES[infraction.kind]
        return factor
