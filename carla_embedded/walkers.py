"""Pedestrians: ``walker.pedestrian.*`` actors, the ``controller.ai.walker`` that walks them on
sidewalks, and the navigation behind ``World.get_random_location_from_navigation``.

CARLA's walker AI walks a navigation mesh baked from the level. Here the mesh is the map's
sidewalk lanes (OpenDRIVE ``sidewalk`` lanes, sampled every ``SIDEWALK_STEP_M``): a walker follows
its sidewalk lane; where the lane ends (a junction mouth) it crosses to the nearest sidewalk of
another road within ``HOP_RADIUS_M`` (preferring the one nearest its ``go_to_location`` target),
or turns back when there is none. It stops within ``ARRIVAL_RADIUS_M`` of its target. Walkers
never leave sidewalks except at those corner crossings (``set_pedestrians_cross_factor`` is
recorded: mid-block crossings are not modelled).
"""
from __future__ import annotations

import math

import numpy as np

import carla

from .actors import Actor
from .errors import UnsupportedFeatureError

SIDEWALK_STEP_M = 2.0
HOP_RADIUS_M = 12.0
ARRIVAL_RADIUS_M = 2.0
_LOOKAHEAD_M = 1.5


class SidewalkNetwork:
    """Sidewalk waypoints of a map, with a grid-free nearest-point search over a numpy array."""

    def __init__(self, carla_map):
        seen, waypoints = set(), []
        for wp in carla_map.generate_waypoints(SIDEWALK_STEP_M):
            side = wp
            for _ in range(6):
                side = side.get_right_lane()
                if side is None:
                    break
                if side.lane_type == carla.LaneType.Sidewalk:
                    key = (side.road_id, side.section_id, side.lane_id, int(side.s // SIDEWALK_STEP_M))
                    if key not in seen:
                        seen.add(key)
                        waypoints.append(side)
                    break
        self.waypoints = waypoints
        self.points = np.array([[w.transform.location.x, w.transform.location.y, w.transform.location.z]
                                for w in waypoints], dtype=np.float64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.waypoints)

    def random_location(self, rng: np.random.Generator) -> carla.Location | None:
        if not self.waypoints:
            return None
        x, y, z = self.points[int(rng.integers(len(self.points)))]
        return carla.Location(float(x), float(y), float(z))

    def nearest(self, location: carla.Location, exclude_lane=None, radius: float = math.inf,
                towards: carla.Location | None = None):
        """The sidewalk waypoint nearest ``location`` (or, within ``radius``, the one nearest ``towards``)."""
        if not self.waypoints:
            return None
        d = np.hypot(self.points[:, 0] - location.x, self.points[:, 1] - location.y)
        mask = d <= radius
        if exclude_lane is not None:
            mask &= ~(self.lane_keys() == np.asarray(exclude_lane)).all(axis=1)
        if not mask.any():
            return None
        if towards is not None:
            score = np.hypot(self.points[:, 0] - towards.x, self.points[:, 1] - towards.y)
        else:
            score = d
        score = np.where(mask, score, np.inf)
        return self.waypoints[int(np.argmin(score))]

    def lane_keys(self) -> np.ndarray:
        if not hasattr(self, "_lane_keys"):
            self._lane_keys = np.array([(w.road_id, w.lane_id) for w in self.waypoints], dtype=np.int64).reshape(-1, 2)
        return self._lane_keys


class Walker(Actor, carla.Walker):
    """carla.Walker: moved by its AI controller, or by ``apply_control`` when it has none."""

    _carla_class = carla.Walker

    def __init__(self, world, actor_id, type_id, transform, attributes, extent):
        super().__init__(world, actor_id, type_id, transform, attributes, extent=(0.0, 0.0, 0.0))
        self._bbox = carla.BoundingBox(carla.Location(0.0, 0.0, 0.0), carla.Vector3D(*extent))
        self._velocity = carla.Vector3D()
        self._control = carla.WalkerControl()
        self._controller = None

    def get_velocity(self) -> carla.Vector3D:
        return carla.Vector3D(self._velocity.x, self._velocity.y, self._velocity.z)

    def _planar(self) -> tuple:
        """(x, y, vx, vy, half length, is walker, id) for the autopilot's obstacle search."""
        loc, v = self._transform.location, self._velocity
        return (loc.x, loc.y, v.x, v.y, self._bbox.extent.x, 1.0, self._id)

    def apply_control(self, control: carla.WalkerControl) -> None:
        self._check_alive("apply_control")
        if not isinstance(control, carla.WalkerControl):
            raise UnsupportedFeatureError(f"Walker.apply_control({type(control).__name__})",
                                          "only carla.WalkerControl (no bone control)")
        self._control = carla.WalkerControl(control.direction, control.speed, control.jump)

    def get_control(self) -> carla.WalkerControl:
        c = self._control
        return carla.WalkerControl(c.direction, c.speed, c.jump)

    def set_target_velocity(self, velocity: carla.Vector3D) -> None:
        speed = math.hypot(velocity.x, velocity.y)
        direction = carla.Vector3D(velocity.x / speed, velocity.y / speed, 0.0) if speed > 0 else carla.Vector3D()
        self._control = carla.WalkerControl(direction, speed, False)

    def _step(self, dt: float) -> None:
        if self._controller is not None and self._controller._active:
            return                                   # the controller moves it
        c = self._control
        norm = math.hypot(c.direction.x, c.direction.y)
        if norm == 0 or c.speed <= 0:
            self._velocity = carla.Vector3D()
            return
        vx, vy = c.direction.x / norm * c.speed, c.direction.y / norm * c.speed
        loc = self._transform.location
        self._transform = carla.Transform(carla.Location(loc.x + vx * dt, loc.y + vy * dt, loc.z),
                                          carla.Rotation(yaw=math.degrees(math.atan2(vy, vx))))
        self._velocity = carla.Vector3D(vx, vy, 0.0)


class WalkerAIController(Actor, carla.WalkerAIController):
    """controller.ai.walker: spawn it attached to a walker, then ``start``, ``go_to_location``,
    ``set_max_speed`` and ``stop`` as in CARLA."""

    _carla_class = carla.WalkerAIController

    def __init__(self, world, actor_id, type_id, transform, attributes, parent):
        if not isinstance(parent, Walker):
            raise ValueError("controller.ai.walker must be spawned with attach_to=<walker>")
        super().__init__(world, actor_id, type_id, carla.Transform(), attributes, parent)
        self._active = False
        self._max_speed = 1.4
        self._target: carla.Location | None = None
        self._waypoint = None
        self._direction = 1
        self._hop: carla.Location | None = None
        parent._controller = self

    def start(self) -> None:
        self._check_alive("start")
        walker = self._parent
        network = self._world._sidewalks()
        self._waypoint = network.nearest(walker.get_location())
        if self._waypoint is None:
            raise RuntimeError("controller.ai.walker.start: this map has no sidewalks to walk on")
        self._direction = 1 if self._world._walker_rng.random() < 0.5 else -1
        self._active = True

    def stop(self) -> None:
        self._active = False
        if self._parent is not None:
            self._parent._velocity = carla.Vector3D()

    def go_to_location(self, destination: carla.Location) -> None:
        self._check_alive("go_to_location")
        self._target = carla.Location(destination.x, destination.y, destination.z)

    def set_max_speed(self, speed: float = 1.4) -> None:
        if not (math.isfinite(speed) and speed >= 0):
            raise ValueError(f"set_max_speed({speed!r}) must be >= 0 m/s")
        self._max_speed = float(speed)

    def _next_point(self) -> carla.Location | None:
        """Where to walk next: along the sidewalk lane, across a corner, or back."""
        if self._hop is not None:
            return self._hop
        wp = self._waypoint
        step = wp.next(_LOOKAHEAD_M) if self._direction > 0 else wp.previous(_LOOKAHEAD_M)
        step = [w for w in step if w.lane_type == carla.LaneType.Sidewalk]
        if step:
            self._waypoint = step[int(self._world._walker_rng.integers(len(step)))] if len(step) > 1 else step[0]
            return self._waypoint.transform.location
        network = self._world._sidewalks()
        here = wp.transform.location
        other = network.nearest(here, exclude_lane=(wp.road_id, wp.lane_id), radius=HOP_RADIUS_M,
                                towards=self._target)
        if other is None:
            self._direction = -self._direction              # dead end: turn back
            return here
        self._hop = other.transform.location
        self._waypoint = other
        # continue in the direction that leads away from where we came from
        ahead = other.next(3.0)
        self._direction = 1 if ahead and ahead[0].transform.location.distance(here) > \
            other.transform.location.distance(here) else -1
        return self._hop

    def _step(self, dt: float) -> None:
        walker = self._parent
        if not self._active or walker is None or not walker.is_alive:
            return
        loc = walker._transform.location
        if self._target is not None and math.hypot(self._target.x - loc.x, self._target.y - loc.y) < ARRIVAL_RADIUS_M:
            walker._velocity = carla.Vector3D()
            return
        budget = self._max_speed * dt
        x, y = loc.x, loc.y
        z = loc.z
        yaw = walker._transform.rotation.yaw
        for _ in range(4):                               # a few short waypoint steps per tick at most
            if budget <= 1e-6:
                break
            point = self._hop if self._hop is not None else self._waypoint_location()
            dx, dy = point.x - x, point.y - y
            dist = math.hypot(dx, dy)
            if dist < 0.05:
                self._hop = None
                self._next_point()
                continue
            move = min(budget, dist)
            x, y = x + dx / dist * move, y + dy / dist * move
            yaw = math.degrees(math.atan2(dy, dx))
            z = point.z + walker._bbox.extent.z
            budget -= move
        walker._velocity = carla.Vector3D((x - loc.x) / dt, (y - loc.y) / dt, 0.0)
        walker._transform = carla.Transform(carla.Location(x, y, z), carla.Rotation(yaw=yaw))

    def _waypoint_location(self) -> carla.Location:
        """``self._waypoint.transform.location``, read once per waypoint (carla builds the transform each time)."""
        cached = self.__dict__.get("_waypoint_at")
        if cached is None or cached[0] is not self._waypoint:
            cached = self.__dict__["_waypoint_at"] = (self._waypoint, self._waypoint.transform.location)
        return cached[1]

    def get_transform(self) -> carla.Transform:
        return self._parent.get_transform() if self._parent is not None else super().get_transform()
