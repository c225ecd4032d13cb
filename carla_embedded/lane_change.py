"""Geometry of the autopilot's lane changes: which neighbour lane is legal, the path onto it, and
where other actors sit along a lane.

The Traffic Manager (``traffic_manager.Autopilot``) decides when a car changes lanes and checks the
gaps with its car-following model; this module only answers the map questions, with CARLA
0.9.14's rules (``InMemoryMap::FindAndLinkLaneChange`` and ``LocalizationStage``):

* a car may change to the left/right lane of the waypoint it drives on when the waypoint's
  ``lane_change`` permits that side and the neighbour is a Driving lane of the same direction
  (same sign of ``lane_id``); never from inside a junction;
* the path is a smooth lateral move (smoothstep of the distance) from the car's own lane centre
  to the neighbour's over ``transition_length`` metres; the transition may neither touch a
  junction nor cross a marking that forbids the change.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

import carla

TRANSITION_M = (20.0, 40.0)      # lateral move length: 10 m + 2 s of travel, within these bounds
TAIL_POINTS = 2                  # the neighbour lane must go on at least this many route steps past the move
NEVER, LATER = "never", "later"  # plan() failures: no legal neighbour lane here / not at this point

_ALLOWED = {True: (carla.LaneChange.Right, carla.LaneChange.Both),
            False: (carla.LaneChange.Left, carla.LaneChange.Both)}


class Plan(NamedTuple):
    """A lane change's new route: ``xy[:k_end + 1]`` is the lateral move, then the neighbour lane."""
    waypoints: list          # the lane each point belongs to (own lane for the first half of the move)
    xy: np.ndarray           # (K, 2) route points
    lane_xy: np.ndarray      # (K, 2) the neighbour lane's centre at the same points
    k_end: int
    target: object           # the neighbour lane's waypoint abreast of the first route point


def neighbour(wp, right: bool):
    """The same-direction Driving lane on the ``right`` (else left) of ``wp`` that its markings let a
    car change to, or None (CARLA's TM links only these)."""
    if wp.lane_change not in _ALLOWED[right]:
        return None
    other = wp.get_right_lane() if right else wp.get_left_lane()
    if other is None or other.lane_type != carla.LaneType.Driving or other.lane_id * wp.lane_id <= 0:
        return None
    return other


def transition_length(speed: float) -> float:
    """Metres over which the car moves across: 10 m + 2 s of travel, 20-40 m. The smoothstep's peak
    lateral acceleration, 6 * lane width * v^2 / length^2, is ~3 m/s^2 at 10 m/s; faster than that the
    autopilot's curve speed cap slows the car a little during the move."""
    return min(max(10.0 + 2.0 * speed, TRANSITION_M[0]), TRANSITION_M[1])


def plan(route: list, route_xy: list, right: bool, length: float, step: float, points: int):
    """The ``Plan`` from ``route`` (the car's waypoints ahead, ``step`` m apart, ``route_xy`` their x, y)
    onto its neighbour lane on the ``right`` (else left), moving across over ``length`` m; at most
    ``points`` route points (the move itself must fit in them with ``TAIL_POINTS`` to spare).

    On failure returns ``NEVER`` (no legal neighbour lane at the car's first route point) or ``LATER``
    (in or too near a junction, a marking ahead forbids the change, a lane ends)."""
    first = route[0]
    if first.is_junction:
        return LATER
    target = neighbour(first, right)
    if target is None:
        return NEVER
    k_end = min(max(2, math.ceil(length / step)), points - 1 - TAIL_POINTS)
    if len(route) <= k_end:
        return LATER
    allowed = _ALLOWED[right]
    if any(wp.is_junction or wp.lane_change not in allowed for wp in route[1:k_end]) or route[k_end].is_junction:
        return LATER
    lane = [target]
    while len(lane) < points:
        nxt = lane[-1].next(step)
        if not nxt:
            if len(lane) <= k_end + TAIL_POINTS:
                return LATER                               # the neighbour lane ends (a lane drop)
            break
        if nxt[0].is_junction:
            if len(lane) <= k_end:
                return LATER
            break                                          # past the move: the route extension takes the junction
        lane.append(nxt[0])
    own = np.asarray(route_xy[:k_end + 1], dtype=np.float64)
    lane_xy = np.array([(t.location.x, t.location.y) for t in (wp.transform for wp in lane)])
    u = np.arange(k_end + 1) / k_end
    w = u * u * (3.0 - 2.0 * u)
    xy = lane_xy.copy()
    xy[:k_end + 1] = own + w[:, None] * (lane_xy[:k_end + 1] - own)
    waypoints = [route[k] if k <= k_end and w[k] < 0.5 else lane[k] for k in range(len(lane))]
    return Plan(waypoints, xy, lane_xy, k_end, target)


def lane_behind(wp, metres: float, step: float) -> list:
    """Waypoints of ``wp``'s lane up to ``metres`` behind it, farthest first (the lane a car changes
    into is checked for cars coming up from behind)."""
    points = []
    for _ in range(int(metres // step)):
        prev = wp.previous(step)
        if not prev:
            break
        wp = prev[0]
        points.append(wp)
    return points[::-1]


def along(polyline: np.ndarray, positions: np.ndarray, corridor: float):
    """For each position (M, 2): its arc length along ``polyline`` (P, 2) from the polyline's first
    point, projected on the nearest segment, and whether it lies within ``corridor`` m of it.
    Returns (arc (M,), inside (M,), unit direction of the nearest segment (M, 2))."""
    a, b = polyline[:-1], polyline[1:]
    seg = b - a
    length = np.maximum(np.hypot(seg[:, 0], seg[:, 1]), 1e-6)
    rel = positions[:, None, :] - a[None, :, :]                                   # (M, S, 2)
    t = np.clip((rel * seg[None]).sum(axis=2) / (length * length)[None], 0.0, 1.0)
    off = rel - t[..., None] * seg[None]
    d2 = (off ** 2).sum(axis=2)
    j = np.argmin(d2, axis=1)
    rows = np.arange(len(positions))
    start = np.concatenate([[0.0], np.cumsum(length)])[:-1]
    arc = start[j] + t[rows, j] * length[j]
    return arc, d2[rows, j] < corridor * corridor, seg[j] / length[j][:, None]


def footprints_clear(centres, direction, half_length, when, opos, ovel, odir, olen, clearance) -> bool:
    """Whether a car passing ``centres`` (K, 2) heading ``direction`` (K, 2), ``half_length`` m long each
    side, at times ``when`` (K,), keeps ``clearance`` (M,) m (both half widths and a margin) from the
    axis of every other actor: centre ``opos`` + ``ovel`` * time, heading ``odir``, half length ``olen``.
    The car is sampled at its rear, centre and front."""
    other = opos[:, None, :] + ovel[:, None, :] * when[None, :, None]                 # (M, K, 2)
    rear = other - olen[:, None, None] * odir[:, None, :]
    axis = 2.0 * olen[:, None] * odir                                                 # (M, 2)
    samples = centres[:, None, :] + np.array([-1.0, 0.0, 1.0])[None, :, None] * half_length * direction[:, None, :]
    rel = samples[None, :, :, :] - rear[:, :, None, :]                                 # (M, K, 3, 2)
    t = np.clip((rel * axis[:, None, None, :]).sum(axis=3)
                / np.maximum((axis * axis).sum(axis=1), 1e-6)[:, None, None], 0.0, 1.0)
    off = rel - t[..., None] * axis[:, None, None, :]
    return not ((off ** 2).sum(axis=3) < (clearance ** 2)[:, None, None]).any()
