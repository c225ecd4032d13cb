"""The Traffic Manager: ``client.get_trafficmanager(port)`` and the autopilot that drives NPC cars.

``TrafficManager`` keeps CARLA 0.9.14's method names. One exists per port in the process (as a
TM server per port on a machine), created on first use by ``get_trafficmanager`` or
``vehicle.set_autopilot(True, port)``.

The autopilot (``Autopilot``, one per world) runs inside ``world.tick`` before the cars move, for
all autopilot cars at once with numpy:

* route: each car keeps ``ROUTE_POINTS`` lane-centre waypoints ``ROUTE_STEP_M`` apart ahead of it,
  extended with ``waypoint.next`` and a random branch at junctions (the TM's seeded generator);
* steering: pure pursuit on the route point ``lookahead`` ahead (2 m + 0.4 s of travel);
* speed: the road's speed limit (``Vehicle.get_speed_limit``) lowered by the percentage speed
  difference (CARLA's default 30 %), or ``set_desired_speed``; capped on curves so the lateral
  acceleration stays under ``LATERAL_ACCEL``;
* following: the Intelligent Driver Model against the nearest vehicle or walker on the route
  ahead (any actor within ``CORRIDOR_M`` of a route point) and against the stop line of a red
  light (or a yellow one it can still stop for) on the route;
* ``ignore_*_percentage``: the chance, drawn each tick per car, that it ignores that kind of
  obstacle. Cars that ignore each other collide (the world stops both and reports the contact);
* lane changes (map rules and path in ``lane_change``): a car moves to the same-direction Driving
  lane beside it where the lane markings allow, never in or into a junction, with a smooth lateral
  move over 20-40 m (its route is re-planned onto the neighbour lane; the steering follows). With
  ``auto_lane_change`` on (the default) a car held behind a slower vehicle (below 80 % of its own
  target speed, within max(20 m, 3 s)) for ``HOLD_S`` overtakes, right lane first as CARLA, where the
  move gains it speed. ``force_lane_change(actor, direction)`` (True: right, as CARLA) asks for one
  change; ``random_left/right_lanechange_percentage`` and ``keep_slow_lane_rule_percentage`` (0.9.14:
  ``keep_right_rule_percentage``) are the chance per tick, above 5 m/s, of one, as CARLA. After a
  change the car keeps its lane for max(10 m, 10 s of travel) (CARLA's rule). Every change first
  passes the car-following model's tests: its footprint clears everyone during the move, nobody is
  alongside in the target lane, and neither the car nor the one coming up behind it there would
  have to brake harder than ``SAFE_DECEL``. Unlike CARLA's TM, which also changes lanes for a
  same-speed car 20-50 m ahead and whose forced change ignores collisions and is dropped unless it
  can start on the next tick, a forced change here is dropped at once only where no lane beside
  may be entered; in or near a junction, right after a change, or with the target lane taken it
  waits up to ``FORCE_WAIT_S``.

Accepted and recorded, with no effect (documented, harmless): ``set_synchronous_mode`` (the
autopilot always runs inside the world's tick, which is what synchronous mode guarantees),
hybrid physics and its radius (every car is already kinematic), dormant-vehicle respawn (no car
is ever dormant), ``ignore_signs_percentage`` (no stop/yield signs are modelled), vehicle lights,
OSM mode and lane offsets. ``set_path``, ``set_route``, ``get_next_action`` and
``get_all_actions`` raise ``UnsupportedFeatureError``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

import carla

from . import lane_change
from .errors import CarlaSurface, UnsupportedFeatureError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8000
ROUTE_STEP_M = 2.0
ROUTE_POINTS = 24
CORRIDOR_M = 1.6                     # half width of the band along the route where an actor blocks it
LATERAL_ACCEL = 2.5                  # m/s^2 on curves
IDM_ACCEL = 2.0                      # m/s^2, comfortable acceleration
IDM_DECEL = 3.0                      # m/s^2, comfortable deceleration
IDM_HEADWAY_S = 1.2
DEFAULT_DISTANCE_M = 2.0             # CARLA TM's default minimum distance to the car ahead
DEFAULT_SPEED_DIFFERENCE = 30.0      # CARLA TM: cars drive 30 % under the limit by default
_LIGHT_STOP_MARGIN_M = 1.0
# lane changes (CARLA's LocalizationStage where it has a number; the rest is this simulator's choice)
MIN_LANE_CHANGE_SPEED = 5.0          # m/s, CARLA: random and keep-slow-lane changes only above it
INTER_LANE_CHANGE_M = 10.0           # CARLA: a new change only max(10 m, 10 s of travel) past the last one
HOLD_S = 1.0                         # held this long behind a slower vehicle before overtaking
RETRY_S = 0.5                        # then tries again this often while held (every 2 s where no lane is beside)
SLOWER = 0.8                         # a leader below this fraction of the car's target speed holds it ...
HOLD_LOOK_M, HOLD_LOOK_S = 20.0, 3.0  # ... within max(20 m, 3 s of travel)
MIN_TRANSITION_M = 12.0              # shortest lateral move (overtaking a stopped car close ahead) ...
MIN_OVERTAKE_GAP_M = 6.0             # ... which a car closer than this to its leader cannot steer round
SAFE_DECEL = 4.0                     # m/s^2: no car (this one or the new follower) must brake harder after a change
OVERTAKE_GAIN = 0.3                  # m/s^2: an overtake must improve the car's IDM acceleration this much
BACK_M = 50.0                        # the target lane is checked this far behind the car
FORCE_WAIT_S = 5.0                   # a forced change waits at most this long for a legal, safe place
_CLEARANCE_MARGIN_M = 0.4            # between footprints during the lateral move

_MANAGERS: dict[int, "TrafficManager"] = {}


def get_traffic_manager(client, port: int = DEFAULT_PORT) -> "TrafficManager":
    if port not in _MANAGERS:
        _MANAGERS[port] = TrafficManager(port)
    return _MANAGERS[port]


def _percentage(value: float, what: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and -100.0 <= value <= 100.0):
        raise ValueError(f"{what}={value!r} must be a percentage in [-100, 100]")
    return value


class TrafficManager(CarlaSurface):
    """carla.TrafficManager of the embedded simulator (see the module docstring for what is modelled)."""

    _carla_class = carla.TrafficManager

    def __init__(self, port: int = DEFAULT_PORT):
        self._port = int(port)
        self._rng = np.random.default_rng()
        self._global_distance = DEFAULT_DISTANCE_M
        self._global_speed_difference = DEFAULT_SPEED_DIFFERENCE
        self._per_vehicle: dict[int, dict] = {}
        self._version = 0
        self._no_collision_pairs: set[tuple[int, int]] = set()
        self._forced: dict[int, list] = {}      # actor id -> [right?, seconds it may still wait], see force_lane_change
        self.recorded: dict[str, object] = {"synchronous_mode": False}

    def __repr__(self):
        return f"TrafficManager(port={self._port})"

    def _vehicle(self, actor) -> dict:
        self._version += 1                     # the autopilot re-reads its cached settings
        return self._per_vehicle.setdefault(actor.id, {})

    def _setting(self, actor_id: int, name: str, default):
        return self._per_vehicle.get(actor_id, {}).get(name, default)

    # -- identity and global settings --------------------------------------------------------
    def get_port(self) -> int:
        return self._port

    def set_synchronous_mode(self, mode_switch: bool = True) -> None:
        self.recorded["synchronous_mode"] = bool(mode_switch)

    def set_random_device_seed(self, value: int = 0) -> None:
        self._rng = np.random.default_rng(int(value))

    def set_global_distance_to_leading_vehicle(self, distance: float) -> None:
        if not (math.isfinite(distance) and distance >= 0):
            raise ValueError(f"distance={distance!r} must be >= 0 m")
        self._global_distance = float(distance)
        self._version += 1

    def global_percentage_speed_difference(self, percentage: float) -> None:
        self._global_speed_difference = _percentage(percentage, "percentage")
        self._version += 1

    # -- per-vehicle settings ----------------------------------------------------------------
    def distance_to_leading_vehicle(self, actor, distance: float) -> None:
        if not (math.isfinite(distance) and distance >= 0):
            raise ValueError(f"distance={distance!r} must be >= 0 m")
        self._vehicle(actor)["distance"] = float(distance)

    def vehicle_percentage_speed_difference(self, actor, percentage: float) -> None:
        self._vehicle(actor)["speed_difference"] = _percentage(percentage, "percentage")
        self._vehicle(actor).pop("desired_speed", None)

    def set_desired_speed(self, actor, speed: float) -> None:
        """Target speed in km/h, whatever the limit (as CARLA)."""
        if not (math.isfinite(speed) and speed >= 0):
            raise ValueError(f"speed={speed!r} must be >= 0 km/h")
        self._vehicle(actor)["desired_speed"] = float(speed)

    def ignore_lights_percentage(self, actor, perc: float) -> None:
        self._vehicle(actor)["ignore_lights"] = _percentage(perc, "perc") / 100.0

    def ignore_vehicles_percentage(self, actor, perc: float) -> None:
        self._vehicle(actor)["ignore_vehicles"] = _percentage(perc, "perc") / 100.0

    def ignore_walkers_percentage(self, actor, perc: float) -> None:
        self._vehicle(actor)["ignore_walkers"] = _percentage(perc, "perc") / 100.0

    def ignore_signs_percentage(self, actor, perc: float) -> None:
        self._vehicle(actor)["ignore_signs"] = _percentage(perc, "perc") / 100.0   # recorded: no signs

    def collision_detection(self, reference_actor, other_actor, detect_collision: bool) -> None:
        pair = (reference_actor.id, other_actor.id)
        if detect_collision:
            self._no_collision_pairs.discard(pair)
        else:
            self._no_collision_pairs.add(pair)

    # -- lane changes (see the module docstring) ----------------------------------------------
    def auto_lane_change(self, actor, enable: bool) -> None:
        """On (CARLA's default): the car overtakes a slower vehicle ahead on a free neighbour lane."""
        self._vehicle(actor)["auto_lane_change"] = bool(enable)

    def force_lane_change(self, actor, direction: bool) -> None:
        """One lane change to the right (``direction`` True) or left (False), as CARLA: dropped at once
        where no same-direction lane on that side may be entered; it waits up to ``FORCE_WAIT_S`` while
        the car is in or near a junction, just changed lanes, or the target lane is taken alongside."""
        self._forced[actor.id] = [bool(direction), FORCE_WAIT_S]

    def random_left_lanechange_percentage(self, actor, percentage: float) -> None:
        """Chance (%), drawn every tick above 5 m/s, that the car changes to its left lane (CARLA)."""
        self._vehicle(actor)["random_left_lanechange"] = _percentage(percentage, "percentage")

    def random_right_lanechange_percentage(self, actor, percentage: float) -> None:
        """Chance (%), drawn every tick above 5 m/s, that the car changes to its right lane (CARLA)."""
        self._vehicle(actor)["random_right_lanechange"] = _percentage(percentage, "percentage")

    def keep_slow_lane_rule_percentage(self, actor, perc: float) -> None:
        """Chance (%), drawn every tick above 5 m/s, that the car moves back to its right (slow) lane."""
        self._vehicle(actor)["keep_slow_lane"] = _percentage(perc, "perc")

    def keep_right_rule_percentage(self, actor, perc: float) -> None:
        """CARLA 0.9.14's name of ``keep_slow_lane_rule_percentage``."""
        self.keep_slow_lane_rule_percentage(actor, perc)

    # -- recorded, no effect (see module docstring) ------------------------------------------
    def update_vehicle_lights(self, actor, do_update: bool) -> None:
        self._vehicle(actor)["update_lights"] = bool(do_update)

    def vehicle_lane_offset(self, actor, offset: float) -> None:
        self._vehicle(actor)["lane_offset"] = float(offset)

    def global_lane_offset(self, offset: float) -> None:
        self.recorded["global_lane_offset"] = float(offset)

    def set_hybrid_physics_mode(self, enabled: bool = False) -> None:
        self.recorded["hybrid_physics_mode"] = bool(enabled)

    def set_hybrid_physics_radius(self, r: float = 50.0) -> None:
        self.recorded["hybrid_physics_radius"] = float(r)

    def set_respawn_dormant_vehicles(self, mode_switch: bool = False) -> None:
        self.recorded["respawn_dormant_vehicles"] = bool(mode_switch)

    def set_boundaries_respawn_dormant_vehicles(self, lower_bound: float = 25.0, upper_bound: float = 100.0) -> None:
        self.recorded["respawn_boundaries"] = (float(lower_bound), float(upper_bound))

    def set_osm_mode(self, mode_switch: bool = True) -> None:
        self.recorded["osm_mode"] = bool(mode_switch)

    def shut_down(self) -> None:
        """Forget every setting (autopilot cars keep driving with the defaults, as after a TM restart)."""
        self._per_vehicle.clear()
        self._no_collision_pairs.clear()
        self._forced.clear()
        self._version += 1

    # -- not modelled ------------------------------------------------------------------------
    def set_path(self, actor, path, empty_buffer: bool = True) -> None:
        raise UnsupportedFeatureError("TrafficManager.set_path")

    def set_route(self, actor, path, empty_buffer: bool = True) -> None:
        raise UnsupportedFeatureError("TrafficManager.set_route")

    def get_next_action(self, actor):
        raise UnsupportedFeatureError("TrafficManager.get_next_action")

    def get_all_actions(self, actor):
        raise UnsupportedFeatureError("TrafficManager.get_all_actions")


@dataclass
class _Npc:
    vehicle: object
    port: int
    route: list = field(default_factory=list)            # waypoints ahead
    xy: list = field(default_factory=list)               # their (x, y): reading waypoint.transform is slow
    poses: list = field(default_factory=list)            # their (x, y, z, yaw, pitch, waypoint), for the car's z/pitch
    lights: list = field(default_factory=list)           # index of the light whose stop line is at route[k], or -1
    limits: list = field(default_factory=list)           # speed limit at route[k], km/h
    lane_change_end: tuple | None = None                  # (x, y, dir x, dir y) where the last lane change ended


class _Control:
    """The autopilot's control: VehicleControl's fields without building a carla object per car and tick
    (``Vehicle.get_control`` still returns a real ``carla.VehicleControl``)."""

    __slots__ = ("throttle", "steer", "brake", "hand_brake", "reverse", "manual_gear_shift", "gear")

    def __init__(self, throttle: float, steer: float, brake: float):
        self.throttle, self.steer, self.brake = throttle, steer, brake
        self.hand_brake = self.reverse = self.manual_gear_shift = False
        self.gear = 0


_STATE_CODE = {carla.TrafficLightState.Red: 0, carla.TrafficLightState.Yellow: 1,
               carla.TrafficLightState.Green: 2, carla.TrafficLightState.Off: 3,
               carla.TrafficLightState.Unknown: 3}


def idm_accel(speed, v0, gap, lead_speed, s0):
    """Intelligent Driver Model acceleration (m/s^2) of a car at ``speed`` wanting ``v0`` (m/s), ``gap`` m
    behind a leader at ``lead_speed``, keeping at least ``s0`` m (scalars or arrays)."""
    s_star = s0 + np.maximum(0.0, speed * IDM_HEADWAY_S
                             + speed * (speed - lead_speed) / (2.0 * math.sqrt(IDM_ACCEL * IDM_DECEL)))
    return IDM_ACCEL * (1.0 - (speed / v0) ** 4 - (s_star / np.maximum(gap, 0.01)) ** 2)


class Autopilot:
    """Drives every autopilot car of one world (see the module docstring)."""

    def __init__(self, world):
        self._world = world
        self._npcs: dict[int, _Npc] = {}
        self._cache_key = None
        self._cache = None
        self._rows = None           # (cars, route, light index, limits, held s) of the last tick, see _routes
        self._others = None         # this tick's (actors, their _planar rows) from _obstacles

    def __len__(self) -> int:
        return len(self._npcs)

    def register(self, vehicle, port: int) -> None:
        get_traffic_manager(None, port)
        npc = _Npc(vehicle, port)
        wp = self._world.get_map().get_waypoint(vehicle.get_location())
        if wp is None:
            raise RuntimeError(f"set_autopilot: vehicle {vehicle.id} is not near any driving lane")
        self._append(npc, wp)
        self._npcs[vehicle.id] = npc

    def unregister(self, vehicle) -> None:
        self._npcs.pop(vehicle.id, None)

    def is_registered(self, vehicle) -> bool:
        return vehicle.id in self._npcs

    def _append(self, npc: _Npc, wp) -> None:
        light = self._world._light_for_stop(wp)
        t = wp.transform
        loc, rot = t.location, t.rotation
        npc.xy.append((loc.x, loc.y))
        npc.poses.append((loc.x, loc.y, loc.z, rot.yaw, rot.pitch, wp))
        npc.route.append(wp)
        npc.lights.append(-1 if light is None else light._index)
        npc.limits.append(self._world.get_map().speed_limit(wp.road_id, wp.s))

    def _extend(self, npc: _Npc, rng) -> None:
        while len(npc.route) < ROUTE_POINTS:
            options = npc.route[-1].next(ROUTE_STEP_M)
            if not options:
                break                                       # dead end: the car stops there
            self._append(npc, options[int(rng.integers(len(options)))] if len(options) > 1 else options[0])

    def update(self, dt: float) -> None:
        """Set every autopilot car's control for the coming step (all cars at once)."""
        npcs = [n for n in self._npcs.values() if n.vehicle.is_alive]
        if len(npcs) != len(self._npcs):
            self._npcs = {n.vehicle.id: n for n in npcs}
        if not npcs:
            return
        n = len(npcs)
        state = np.array([(v._state.x, v._state.y, v._state.yaw, v._state.speed) for v in (m.vehicle for m in npcs)])
        pos, yaw, speed = state[:, :2], np.radians(state[:, 2]), np.maximum(state[:, 3], 0.0)
        heading = np.stack([np.cos(yaw), np.sin(yaw)], axis=1)
        # -- per-car settings and limits: cached until a car or a TM setting changes --------
        managers = [get_traffic_manager(None, npc.port) for npc in npcs]
        distinct = set(managers)
        key = (tuple(npc.vehicle.id for npc in npcs), tuple((id(tm), tm._version) for tm in distinct),
               tuple(id(npc.vehicle._params) for npc in npcs))
        if key != self._cache_key:
            self._cache_key, self._cache = key, self._settings(npcs, managers)
        v_set, diff, s0, ignore, geometry, auto_change, change_chances = self._cache
        draws = managers[0]._rng.random((n, 3))
        ignored = draws < ignore
        route, light_idx, limits = self._routes(npcs, managers, pos, heading)
        valid = ~np.isnan(route[:, :, 0])
        # arc length from the car along its route (inf past the route's end)
        first = np.hypot(route[:, 0, 0] - pos[:, 0], route[:, 0, 1] - pos[:, 1])
        step = np.diff(route, axis=1)
        seg = np.hypot(step[..., 0], step[..., 1])
        # np.nancumsum's own steps (NaN -> 0, then cumsum) without its Python overhead: the same numbers
        arc = np.concatenate([first[:, None], first[:, None] + np.cumsum(np.where(np.isnan(seg), 0.0, seg), axis=1)],
                             axis=1)
        arc = np.where(valid, arc, np.inf)
        # -- steering: pure pursuit ----------------------------------------------------------
        lookahead = 2.0 + 0.4 * speed
        last = valid.sum(axis=1) - 1
        idx = np.where((arc >= lookahead[:, None]).any(axis=1) & np.isfinite(arc).any(axis=1),
                       np.argmax(arc >= lookahead[:, None], axis=1), last)
        idx = np.minimum(idx, last)
        rows = np.arange(n)
        target = route[rows, idx]
        dx, dy = target[:, 0] - pos[:, 0], target[:, 1] - pos[:, 1]
        lateral = -heading[:, 1] * dx + heading[:, 0] * dy
        dist2 = np.maximum(dx * dx + dy * dy, 1e-6)
        wheelbase, max_steer, max_accel, top, brake_decel, rolling, drag, half_length = geometry.T
        steer = np.clip(np.arctan(2.0 * wheelbase * lateral / dist2) / np.radians(max_steer), -1.0, 1.0)
        # -- target speed: limit, TM percentage or desired speed, curves ---------------------
        v0 = np.where(np.isnan(v_set), limits * (1.0 - diff / 100.0), v_set) / 3.6
        direction = np.arctan2(np.diff(route[:, :, 1], axis=1), np.diff(route[:, :, 0], axis=1))
        turn = np.abs((np.diff(direction, axis=1) + np.pi) % (2 * np.pi) - np.pi)       # rad per step
        near = arc[:, 1:-1] < 8.0 + 2.0 * speed[:, None]
        curvature = np.max(np.where(near & np.isfinite(turn), turn, 0.0), axis=1, initial=0.0) / ROUTE_STEP_M
        v0 = np.maximum(np.minimum(v0, np.sqrt(LATERAL_ACCEL / np.maximum(curvature, 1e-4))), 0.1)
        # -- obstacles on the route: vehicles and walkers ----------------------------------
        gap, lead_speed, lead_vehicle = self._obstacles(npcs, pos, heading, route, arc, half_length, ignored)
        # -- red lights (and yellow ones the car can still stop for) -----------------------
        codes = self._world._light_codes()
        if codes.size:
            code = np.where(light_idx >= 0, codes[np.maximum(light_idx, 0)], 2)
            stop_gap = arc - half_length[:, None] - _LIGHT_STOP_MARGIN_M
            stop = (code == 0) | ((code == 1) & (stop_gap > (speed ** 2 / (2 * IDM_DECEL))[:, None]))
            stop &= (light_idx >= 0) & (stop_gap > -1.0) & ~ignored[:, 0:1]
            has = stop.any(axis=1)
            k = np.argmax(stop, axis=1)
            light_gap = np.where(has, np.maximum(stop_gap[rows, k], 0.01), np.inf)
            closer = light_gap < gap
            gap = np.where(closer, light_gap, gap)
            lead_speed = np.where(closer, 0.0, lead_speed)
            lead_vehicle &= ~closer
        # -- IDM ------------------------------------------------------------------------------
        accel = idm_accel(speed, v0, gap, lead_speed, s0)
        accel = np.where(last < 1, -IDM_DECEL, accel)            # dead end ahead
        resist = rolling + drag * speed * speed
        fade = np.maximum(0.05, 1.0 - speed / top)
        throttle = np.clip((accel + resist) / (max_accel * fade), 0.0, 1.0)
        brake = np.clip(-(accel + resist) / brake_decel, 0.0, 1.0)
        brake = np.where((speed < 0.3) & (accel < 0), 1.0, brake)
        throttle = np.where(brake > 0, 0.0, throttle)
        for npc, t, st, b in zip(npcs, throttle.tolist(), steer.tolist(), brake.tolist()):
            npc.vehicle._control = _Control(t, st, b)
        # -- lane changes: they re-plan routes for the next tick ------------------------------
        held = self._rows[4]
        holding = (auto_change & lead_vehicle & (lead_speed < SLOWER * v0) & (gap > MIN_OVERTAKE_GAP_M)
                   & (gap < np.maximum(HOLD_LOOK_M, HOLD_LOOK_S * speed)))
        np.copyto(held, np.where(holding, held + dt, 0.0))
        wanted = np.flatnonzero(held >= HOLD_S)
        if wanted.size or change_chances is not None or any(tm._forced for tm in distinct):
            self._lane_changes(npcs, managers, dt, wanted, change_chances,
                               (pos, heading, speed, v0, s0, gap, lead_speed, half_length))

    def _routes(self, npcs, managers, pos, heading) -> tuple:
        """Route upkeep: drop the points behind each car, extend ahead. Returns (route (n, ROUTE_POINTS, 2) x, y
        with NaN past its end, light index (n, ROUTE_POINTS), speed limit at the first point (n,)).

        The arrays are kept between ticks for the same cars: a car passes a point about every fifth tick,
        so only the rows of cars that passed one (found for all at once) or whose route is short are rebuilt."""
        n = len(npcs)
        rows = self._rows
        if rows is None or len(rows[0]) != n or any(a is not b for a, b in zip(rows[0], npcs)):
            route = np.full((n, ROUTE_POINTS, 2), np.nan)
            light_idx = np.full((n, ROUTE_POINTS), -1, dtype=np.int64)
            rows = self._rows = (list(npcs), route, light_idx, np.empty(n), np.zeros(n))
            todo = range(n)
        else:
            route = rows[1]
            # the first point is behind the car (same test as the loop below, all cars at once; NaN: no point)
            ahead = (route[:, 0, 0] - pos[:, 0]) * heading[:, 0] + (route[:, 0, 1] - pos[:, 1]) * heading[:, 1]
            todo = np.nonzero((ahead <= 0.5) | np.isnan(route[:, ROUTE_POINTS - 1, 0]))[0].tolist()
        _, route, light_idx, limits, _ = rows
        for i in todo:
            npc, tm = npcs[i], managers[i]
            pts, xy = npc.route, npc.xy
            hx, hy, px, py = heading[i, 0], heading[i, 1], pos[i, 0], pos[i, 1]
            while len(pts) > 1 and (xy[0][0] - px) * hx + (xy[0][1] - py) * hy <= 0.5:
                del pts[0], xy[0], npc.poses[0], npc.lights[0], npc.limits[0]
            self._extend(npc, tm._rng)
            k = len(pts)
            route[i] = np.nan
            route[i, :k] = xy
            light_idx[i] = -1
            light_idx[i, :k] = npc.lights
            limits[i] = npc.limits[0]
        for npc in npcs:
            npc.vehicle._road_hint = npc.poses[0]
        return route, light_idx, limits

    def _lane_changes(self, npcs, managers, dt, wanted, chances, state) -> None:
        """Start this tick's lane changes: forced ones (``force_lane_change``), the random and
        keep-slow-lane ones (one draw per car and tick, as CARLA) and overtakes of the cars in
        ``wanted`` (held behind a slower vehicle for ``HOLD_S``)."""
        speed = state[2]
        requests: dict[int, tuple] = {}                 # car row -> (sides to try in order, overtake?, forced entry)
        for i in wanted.tolist():
            requests[i] = ((True, False), True, None)   # CARLA tries the right lane first
        if chances is not None:
            for i in np.flatnonzero((chances >= 0).any(axis=1) & (speed > MIN_LANE_CHANGE_SPEED)).tolist():
                keep, right, left = chances[i]
                draws = managers[i]._rng.random(3) * 100.0
                to_right = keep > draws[0] or right >= draws[1]
                if left >= draws[2]:
                    to_right = managers[i]._rng.random() * 100.0 < 50.0 if to_right else False
                elif not to_right:
                    continue
                requests[i] = ((bool(to_right),), False, None)
        for tm in set(managers):
            if tm._forced:
                for i, npc in enumerate(npcs):
                    entry = tm._forced.get(npc.vehicle.id)
                    if entry is not None and managers[i] is tm:
                        requests[i] = ((entry[0],), False, (tm, npc.vehicle.id, entry))
        for i, (sides, overtake, forced) in requests.items():
            outcome = self._try_lane_change(i, npcs[i], managers[i], sides, overtake, state)
            if overtake and outcome != "done":
                self._rows[4][i] = HOLD_S - (RETRY_S if outcome == lane_change.LATER else 4 * RETRY_S)
            if forced is not None:
                tm, actor_id, entry = forced
                entry[1] -= dt
                if outcome != lane_change.LATER or entry[1] <= 0.0:
                    tm._forced.pop(actor_id, None)

    def _try_lane_change(self, i, npc, tm, sides, overtake, state) -> str:
        """Change car ``i`` to the first of ``sides`` (True: right) where the move is legal and safe;
        returns "done", ``lane_change.NEVER`` (no legal neighbour lane on any side here) or
        ``lane_change.LATER``."""
        pos, heading, speed, v0, s0, gap, lead_speed, half_length = (a[i] for a in state)
        px, py, v = float(pos[0]), float(pos[1]), float(speed)
        if npc.lane_change_end is not None:                 # CARLA: not again until past and away from the last
            ex, ey, hx, hy = npc.lane_change_end
            if (px - ex) * hx + (py - ey) * hy <= 0 or math.hypot(px - ex, py - ey) <= max(10.0 * v, INTER_LANE_CHANGE_M):
                return lane_change.LATER
        length = lane_change.transition_length(v)
        if overtake:
            length = min(length, max(MIN_TRANSITION_M, 1.6 * float(gap)))
        outcome = lane_change.NEVER
        for right in sides:
            plan = lane_change.plan(npc.route, npc.xy, right, length, ROUTE_STEP_M, ROUTE_POINTS)
            if isinstance(plan, str):
                outcome = lane_change.LATER if plan == lane_change.LATER else outcome
                continue
            current = idm_accel(v, float(v0), float(gap), float(lead_speed), float(s0)) if overtake else None
            if self._safe(npc, plan, pos, heading, v, float(v0), float(s0), float(half_length), current):
                self._commit(i, npc, tm, plan)
                return "done"
            outcome = lane_change.LATER
        return outcome

    def _safe(self, npc, plan, pos, heading, v, v0, s0, half_length, current) -> bool:
        """Whether the move ``plan`` is safe now, by the car-following model's own tests:

        * footprints: along the lateral move the car keeps clear of every vehicle and walker not
          behind it, each extrapolated with its velocity to when the car gets there;
        * the target lane, from ``BACK_M`` behind the car to the route's end (actors within
          ``CORRIDOR_M`` of its centre): nobody alongside; neither the car behind a vehicle/walker
          ahead nor a vehicle coming up behind would need the IDM to brake harder than ``SAFE_DECEL``;
        * an overtake (``current``: the IDM acceleration behind today's leader) must gain
          ``OVERTAKE_GAIN`` on the new route, whose leader is found as car following finds it."""
        if self._others is None:
            return True
        actors, info = self._others
        rel = info[:, 0:2] - pos
        lon = rel @ heading
        keep = (info[:, 6] != npc.vehicle.id) & (np.hypot(rel[:, 0], rel[:, 1]) < BACK_M + len(plan.xy) * ROUTE_STEP_M)
        if not keep.any():
            return True
        actors = [a for a, k in zip(actors, keep.tolist()) if k]
        opos, ovel, olen, walker, lon = info[keep, 0:2], info[keep, 2:4], info[keep, 4], info[keep, 5] > 0, lon[keep]
        # -- footprints along the move ------------------------------------------------------
        move = plan.xy[:plan.k_end + 2]
        seg = np.diff(move, axis=0)
        length = np.maximum(np.hypot(seg[:, 0], seg[:, 1]), 1e-6)
        arc = math.hypot(move[0, 0] - pos[0], move[0, 1] - pos[1]) + np.concatenate([[0.0], np.cumsum(length)[:-1]])
        front = lon > -(half_length + olen)
        if front.any():
            idx = np.flatnonzero(front)
            yaw = np.radians([actors[j]._transform.rotation.yaw for j in idx])
            width = np.array([actors[j]._bbox.extent.y for j in idx])
            if not lane_change.footprints_clear(
                    move[:-1], seg / length[:, None], half_length, arc / max(v, 3.0), opos[idx], ovel[idx],
                    np.stack([np.cos(yaw), np.sin(yaw)], axis=1), olen[idx],
                    npc.vehicle._bbox.extent.y + width + _CLEARANCE_MARGIN_M):
                return False
        # -- the target lane: alongside, ahead, behind ----------------------------------------
        behind = [(t.location.x, t.location.y)
                  for t in (w.transform for w in lane_change.lane_behind(plan.target, BACK_M, ROUTE_STEP_M))]
        lane = np.concatenate([np.array(behind).reshape(-1, 2), plan.lane_xy])
        arcs, inside, lane_dir = lane_change.along(lane, np.vstack([pos[None], opos]), CORRIDOR_M)
        car_front, car_rear = arcs[0] + half_length, arcs[0] - half_length
        arcs, inside, lane_dir = arcs[1:], inside[1:], lane_dir[1:]
        u = np.maximum((ovel * lane_dir).sum(axis=1), 0.0)
        ahead = inside & (arcs - olen >= car_front)
        back = inside & (arcs + olen <= car_rear)
        if (inside & ~ahead & ~back).any():
            return False                                                     # someone alongside
        if ahead.any() and (idm_accel(v, v0, arcs[ahead] - olen[ahead] - car_front, u[ahead], s0) < -SAFE_DECEL).any():
            return False
        back &= ~walker
        if back.any():
            follower = u[back]                                               # IDM of the car behind, free-road term left out
            s_star = DEFAULT_DISTANCE_M + np.maximum(0.0, follower * IDM_HEADWAY_S + follower * (follower - v)
                                                     / (2.0 * math.sqrt(IDM_ACCEL * IDM_DECEL)))
            gap = np.maximum(car_rear - arcs[back] - olen[back], 0.01)
            if (IDM_ACCEL * (1.0 - (s_star / gap) ** 2) < -SAFE_DECEL).any():
                return False
        if current is None:
            return True
        # -- an overtake must pay: the new route's leader, found as _obstacles finds it ------------
        path = plan.xy
        seg = np.diff(path, axis=0)
        length = np.hypot(seg[:, 0], seg[:, 1])
        arc = math.hypot(path[0, 0] - pos[0], path[0, 1] - pos[1]) + np.concatenate([[0.0], np.cumsum(length)])
        hit = (((path[None, :, :] - opos[:, None, :]) ** 2).sum(axis=2) < CORRIDOR_M ** 2) & (lon > 0)[:, None]
        rows = np.flatnonzero(hit.any(axis=1))
        gap_new, lead_new = 1e9, 0.0
        if rows.size:
            k = np.argmax(hit[rows], axis=1)
            gaps = arc[k] - olen[rows] - half_length
            j = int(np.argmin(gaps))
            kk = min(int(k[j]), len(seg) - 1)
            gap_new = float(gaps[j])
            lead_new = max(float(ovel[rows[j]] @ seg[kk]) / max(float(length[kk]), 1e-6), 0.0)
        return idm_accel(v, v0, gap_new, lead_new, s0) >= current + OVERTAKE_GAIN

    def _commit(self, i, npc, tm, plan) -> None:
        """Replace car ``i``'s route by the plan's (the route row is rebuilt next tick)."""
        npc.route, npc.xy, npc.poses, npc.lights, npc.limits = [], [], [], [], []
        for wp in plan.waypoints:
            self._append(npc, wp)
        for k in range(plan.k_end + 1):                       # the lateral move: between the lanes
            x, y = float(plan.xy[k, 0]), float(plan.xy[k, 1])
            npc.xy[k] = (x, y)
            npc.poses[k] = (x, y) + npc.poses[k][2:]
        self._extend(npc, tm._rng)
        end, before = plan.lane_xy[plan.k_end], plan.lane_xy[plan.k_end - 1]
        d = (end - before) / max(float(np.hypot(*(end - before))), 1e-6)
        npc.lane_change_end = (float(end[0]), float(end[1]), float(d[0]), float(d[1]))
        self._rows[1][i, -1] = np.nan                         # _routes rebuilds the row
        self._rows[4][i] = 0.0

    @staticmethod
    def _settings(npcs, managers) -> tuple:
        """(desired km/h or NaN, speed difference %, min gap m, ignore chances (lights, vehicles,
        walkers), car limits, auto lane change on, lane change chances % (keep slow lane, random
        right, random left; -1 unset) or None when no car has one) per car, as arrays."""
        n = len(npcs)
        v_set, diff, s0, ignore = np.empty(n), np.empty(n), np.empty(n), np.empty((n, 3))
        auto, chances = np.empty(n, dtype=bool), np.empty((n, 3))
        for i, (npc, tm) in enumerate(zip(npcs, managers)):
            own = tm._per_vehicle.get(npc.vehicle.id, {})
            v_set[i] = own.get("desired_speed", np.nan)
            diff[i] = own.get("speed_difference", tm._global_speed_difference)
            s0[i] = own.get("distance", tm._global_distance)
            ignore[i] = own.get("ignore_lights", 0.0), own.get("ignore_vehicles", 0.0), own.get("ignore_walkers", 0.0)
            auto[i] = own.get("auto_lane_change", True)
            chances[i] = (own.get("keep_slow_lane", -1.0), own.get("random_right_lanechange", -1.0),
                          own.get("random_left_lanechange", -1.0))
        geometry = np.array([(p.wheelbase, p.max_steer_deg, p.max_accel, p.top_speed, p.max_brake_decel,
                              p.rolling_resistance, p.drag_coefficient, npc.vehicle._spec.extent[0])
                             for p, npc in ((m.vehicle._params, m) for m in npcs)])
        return v_set, diff, s0, ignore, geometry, auto, (chances if (chances >= 0).any() else None)

    def _obstacles(self, npcs, pos, heading, route, arc, half_length, ignored):
        """(gap m, speed m/s along the route, is it a vehicle) of the nearest vehicle or walker on each
        car's route. Keeps the actors and their ``_planar`` rows in ``self._others`` for lane changes.

        Broad phase on the (car, actor) distance matrix, then the route-point test only for the
        few pairs close enough to matter."""
        n = len(npcs)
        gap = np.full(n, 1e9)
        lead_speed = np.zeros(n)
        lead_vehicle = np.zeros(n, dtype=bool)
        others = self._world._moving_actors()
        self._others = None
        if not others:
            return gap, lead_speed, lead_vehicle
        info = np.array([a._planar() for a in others])           # x, y, vx, vy, half length, is walker, id
        self._others = (others, info)
        opos, ovel, olen = info[:, 0:2], info[:, 2:4], info[:, 4]
        is_walker = info[:, 5] > 0
        ids = info[:, 6]
        own = np.array([npc.vehicle.id for npc in npcs], dtype=np.float64)
        rel = opos[None, :, :] - pos[:, None, :]                 # (n, M)
        reach = ROUTE_POINTS * ROUTE_STEP_M + CORRIDOR_M + 3.0
        # x*x + y*y written out: the same sums as .sum(axis=2) over two elements, at a third of the cost
        near = ((rel[..., 0] ** 2 + rel[..., 1] ** 2 < reach * reach)
                & (rel[..., 0] * heading[:, None, 0] + rel[..., 1] * heading[:, None, 1] > 0.0))
        near &= ids[None, :] != own[:, None]
        near &= ~(ignored[:, 1:2] & ~is_walker[None, :]) & ~(ignored[:, 2:3] & is_walker[None, :])
        pairs = set()
        for port in {npc.port for npc in npcs}:                   # pairs whose first car is one of its cars
            cars = {npc.vehicle.id for npc in npcs if npc.port == port}
            pairs |= {p for p in get_traffic_manager(None, port)._no_collision_pairs if p[0] in cars}
        if pairs:
            index = {int(i): j for j, i in enumerate(ids)}
            rows = {npc.vehicle.id: r for r, npc in enumerate(npcs)}
            for a, b in pairs:
                if a in rows and b in index:
                    near[rows[a], index[b]] = False
        ci, cj = np.nonzero(near)
        if ci.size == 0:
            return gap, lead_speed, lead_vehicle
        d2 = ((route[ci, :, 0] - opos[cj, 0][:, None]) ** 2
              + (route[ci, :, 1] - opos[cj, 1][:, None]) ** 2)                # (P, K)
        hit = (d2 < CORRIDOR_M ** 2) & np.isfinite(arc[ci])
        blocking = hit.any(axis=1)
        if not blocking.any():
            return gap, lead_speed, lead_vehicle
        ci, cj, hit = ci[blocking], cj[blocking], hit[blocking]
        k_first = np.argmax(hit, axis=1)
        along = arc[ci, k_first] - olen[cj] - half_length[ci]
        np.minimum.at(gap, ci, along)
        best = along <= gap[ci]                                   # the pair that set each car's gap
        ci, cj, k = ci[best], cj[best], np.minimum(k_first[best], ROUTE_POINTS - 2)
        seg = route[ci, k + 1] - route[ci, k]
        norm = np.hypot(seg[:, 0], seg[:, 1])
        ok = np.isfinite(norm) & (norm > 0)
        seg = np.where(np.isnan(seg), 0.0, seg)        # np.nan_to_num for a route's finite-or-NaN steps
        along_speed = np.where(ok, (ovel[cj, 0] * seg[:, 0] + ovel[cj, 1] * seg[:, 1]) / np.where(ok, norm, 1.0), 0.0)
        lead_speed[ci] = np.maximum(along_speed, 0.0)
        lead_vehicle[ci] = ~is_walker[cj]
        return gap, lead_speed, lead_vehicle
