"""Traffic lights at junctions, with CARLA's state cycle, synthesised from the road network.

CARLA's Town01-05 OpenDRIVE files carry no ``<signal>`` records (the lights live in the Unreal
levels), so the embedded world places them itself: every junction that at least three roads
enter gets one ``TrafficLight`` per entering road and direction, at the right-hand side of the
stop line, with a trigger volume over the entering lanes just before the line (where CARLA's
agents look for it: ``get_trafficlight_trigger_location`` + ``map.get_waypoint``).

The lights of one junction form a group and take turns, as CARLA's ``TrafficLightGroup``: the
active light is green for ``green_time`` (CARLA default 10 s), yellow for ``yellow_time`` (3 s),
then red for ``red_time`` (2 s, all lights red) before the next light of the group turns green.
Every other light of the group is red. ``freeze(True)`` stops a light's clock (and the group's
turn-taking while any light of the group is frozen); ``set_state`` forces a state and restarts
that light's elapsed time; ``reset_group`` restarts the group with its first light green.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import carla

from .actors import Actor

GREEN_TIME_S = 10.0
YELLOW_TIME_S = 3.0
RED_TIME_S = 2.0
MIN_ENTERING_ROADS = 3                 # a junction fewer roads enter is a merge or a lane split: no lights
TRIGGER_BACK_M = 10.0                  # trigger volume centre, before the stop line (where agents look)
TRIGGER_LENGTH_M = 15.0                # how far before the stop line a car counts as "at" the light
POLE_OFFSET_M = 1.0                    # pole beyond the right edge of the rightmost lane
_S = carla.TrafficLightState


@dataclass
class _Group:
    lights: list = field(default_factory=list)
    active: int = 0
    frozen: bool = False


class TrafficLight(Actor, carla.TrafficLight):
    """carla.TrafficLight: state, timings, group and the lanes it controls.

    Attributes beyond carla's (private): ``_lanes`` the (road_id, lane_id) keys it stops, and
    ``_stop_s`` their stop-line ``s`` values, used by ``Vehicle.get_traffic_light``.
    """

    _carla_class = carla.TrafficLight

    def __init__(self, world, actor_id, transform, stop_waypoints, trigger_volume: carla.BoundingBox,
                 group: _Group, pole_index: int, junction_id: int):
        super().__init__(world, actor_id, "traffic.traffic_light", transform, {"role_name": ""},
                         extent=(0.3, 0.3, 2.5))
        self._stop_waypoints = list(stop_waypoints)
        self._lanes = {(w.road_id, w.lane_id): w.s for w in stop_waypoints}
        self._trigger = trigger_volume
        self._group = group
        self._pole_index = pole_index
        self._junction_id = junction_id
        self._state = _S.Red
        self._elapsed = 0.0
        self._times = {_S.Green: GREEN_TIME_S, _S.Yellow: YELLOW_TIME_S, _S.Red: RED_TIME_S}
        self._frozen = False

    # -- state -------------------------------------------------------------------------------
    @property
    def state(self):
        return self._state

    def get_state(self):
        return self._state

    def set_state(self, state) -> None:
        """Force ``state``; green or yellow makes this the group's active light (the others turn red)."""
        if state not in (_S.Red, _S.Yellow, _S.Green, _S.Off, _S.Unknown):
            raise ValueError(f"set_state({state!r}): not a carla.TrafficLightState")
        if state in (_S.Green, _S.Yellow):
            group = self._group
            for other in group.lights:
                if other is not self and other._state != _S.Off:
                    other._state, other._elapsed = _S.Red, 0.0
            group.active = group.lights.index(self)
        self._state, self._elapsed = state, 0.0

    def get_elapsed_time(self) -> float:
        return self._elapsed

    def get_green_time(self) -> float:
        return self._times[_S.Green]

    def get_yellow_time(self) -> float:
        return self._times[_S.Yellow]

    def get_red_time(self) -> float:
        return self._times[_S.Red]

    def set_green_time(self, green_time: float) -> None:
        self._set_time(_S.Green, green_time)

    def set_yellow_time(self, yellow_time: float) -> None:
        self._set_time(_S.Yellow, yellow_time)

    def set_red_time(self, red_time: float) -> None:
        self._set_time(_S.Red, red_time)

    def _set_time(self, state, seconds) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"traffic light time {seconds!r} must be >= 0 seconds")
        self._times[state] = float(seconds)

    def freeze(self, freeze: bool) -> None:
        self._frozen = bool(freeze)

    def is_frozen(self) -> bool:
        return self._frozen

    def reset_group(self) -> None:
        _reset(self._group)

    # -- geometry ----------------------------------------------------------------------------
    @property
    def trigger_volume(self) -> carla.BoundingBox:
        return carla.BoundingBox(self._trigger.location, self._trigger.extent)

    def get_group_traffic_lights(self) -> list:
        return list(self._group.lights)

    def get_pole_index(self) -> int:
        return self._pole_index

    def get_opendrive_id(self) -> str:
        return f"embedded_{self._junction_id}_{self._pole_index}"

    def get_stop_waypoints(self) -> list:
        return list(self._stop_waypoints)

    def get_affected_lane_waypoints(self) -> list:
        """One waypoint per controlled lane, ``TRIGGER_LENGTH_M`` before the stop line (or the lane start)."""
        out = []
        for wp in self._stop_waypoints:
            back = wp.previous(TRIGGER_LENGTH_M)
            out.append(back[0] if back and back[0].road_id == wp.road_id else wp)
        return out

    def get_light_boxes(self) -> list:
        t = self.get_transform()
        return [carla.BoundingBox(t.transform(carla.Location(0, 0, 3.0 + 0.35 * i)), carla.Vector3D(0.15, 0.15, 0.15))
                for i in range(3)]

    def _controls(self, road_id: int, lane_id: int, s: float) -> bool:
        """True when a point of lane (road_id, lane_id) at ``s`` is in this light's trigger zone."""
        stop_s = self._lanes.get((road_id, lane_id))
        return stop_s is not None and abs(stop_s - s) <= TRIGGER_LENGTH_M

    def __repr__(self):
        return f"TrafficLight(id={self.id}, junction={self._junction_id}, state={self._state})"


def _reset(group: _Group) -> None:
    group.active = 0
    for i, light in enumerate(group.lights):
        light._state, light._elapsed = (_S.Green if i == 0 else _S.Red), 0.0


def advance(groups: list[_Group], dt: float) -> None:
    """One tick of every group's cycle (green -> yellow -> red, then the next light turns green)."""
    for group in groups:
        for light in group.lights:
            if not light._frozen:
                light._elapsed += dt
        if any(light._frozen for light in group.lights):
            continue
        light = group.lights[group.active]
        if light._state == _S.Off:
            continue
        if light._state == _S.Green and light._elapsed >= light._times[_S.Green]:
            light._state, light._elapsed = _S.Yellow, light._elapsed - light._times[_S.Green]
        if light._state == _S.Yellow and light._elapsed >= light._times[_S.Yellow]:
            light._state, light._elapsed = _S.Red, light._elapsed - light._times[_S.Yellow]
        if light._state == _S.Red and light._elapsed >= light._times[_S.Red]:
            group.active = (group.active + 1) % len(group.lights)
            nxt = group.lights[group.active]
            nxt._state, nxt._elapsed = _S.Green, 0.0


def _entering_lanes(carla_map) -> dict[int, dict[tuple[int, int], list]]:
    """junction id -> {(road_id, sign of lane_id): [last waypoint of each driving lane entering it]}."""
    found: dict[int, dict[tuple[int, int], list]] = {}
    # carla's topology pairs the start of a lane with the start of a lane that follows it
    for start, following in carla_map.get_topology():
        if start.is_junction or not following.is_junction or start.lane_type != carla.LaneType.Driving:
            continue
        junction = following.get_junction()
        to_end = start.next_until_lane_end(1.0)
        end = to_end[-1] if to_end else start
        if end.road_id != start.road_id or end.is_junction:
            end = to_end[-2] if len(to_end) > 1 else start
        key = (end.road_id, 1 if end.lane_id > 0 else -1)
        lanes = found.setdefault(junction.id, {}).setdefault(key, [])
        if all(w.lane_id != end.lane_id for w in lanes):
            lanes.append(end)
    return found


def build_traffic_lights(world, next_id) -> tuple[list[TrafficLight], list[_Group]]:
    """Lights and groups for every junction of ``world``'s map that at least three roads enter.

    Args:
        world: the embedded world (owner of the actors).
        next_id: callable returning a fresh actor id.
    """
    lights, groups = [], []
    for junction_id, entries in sorted(_entering_lanes(world.get_map()).items()):
        if len({road for road, _ in entries}) < MIN_ENTERING_ROADS:
            continue
        group = _Group()
        centre = _centre([w for lanes in entries.values() for w in lanes])
        # counter-clockwise order around the junction, like the poles of a CARLA junction
        ordered = sorted(entries.values(), key=lambda lanes: math.atan2(lanes[0].transform.location.y - centre[1],
                                                                        lanes[0].transform.location.x - centre[0]))
        for pole_index, lanes in enumerate(ordered):
            lanes = sorted(lanes, key=lambda w: abs(w.lane_id))
            outer = lanes[-1]
            t = outer.transform
            right = t.get_right_vector()
            offset = outer.lane_width / 2.0 + POLE_OFFSET_M
            pole = carla.Location(t.location.x + right.x * offset, t.location.y + right.y * offset, t.location.z)
            transform = carla.Transform(pole, carla.Rotation(yaw=t.rotation.yaw))
            tx, ty = _trigger_centre(world.get_map(), lanes)
            local = transform.inverse_transform(carla.Location(tx, ty, t.location.z))
            width = sum(w.lane_width for w in lanes)
            trigger = carla.BoundingBox(carla.Location(local.x, local.y, 0.0),
                                        carla.Vector3D(TRIGGER_BACK_M, width / 2.0, 1.0))
            light = TrafficLight(world, next_id(), transform, lanes, trigger, group, pole_index, junction_id)
            group.lights.append(light)
            lights.append(light)
        _reset(group)
        groups.append(group)
    return lights, groups


def _trigger_centre(carla_map, lanes) -> tuple[float, float]:
    """Centre of the trigger volume: ``TRIGGER_BACK_M`` before the stop line, or closer where the
    map would resolve that point to another road (short roads, junction areas): the agents look
    the light up with ``map.get_waypoint(trigger location)`` and compare road ids."""
    road_id = lanes[0].road_id
    for back_m in (TRIGGER_BACK_M, 6.0, 4.0, 2.0, 1.0, 0.3):
        points = []
        for w in lanes:
            back = w.previous(back_m)
            points.append((back[0] if back and back[0].road_id == road_id else w).transform.location)
        x, y = _centre_points(points)
        found = carla_map.get_waypoint(carla.Location(x, y, points[0].z))
        if found is not None and found.road_id == road_id and not found.is_junction:
            return x, y
    loc = lanes[0].transform.location
    return loc.x, loc.y


def _centre(waypoints) -> tuple[float, float]:
    return _centre_points([w.transform.location for w in waypoints])


def _centre_points(points) -> tuple[float, float]:
    return (sum(p.x for p in points) / len(points), sum(p.y for p in points) / len(points))
