"""Ground-truth curve/straight labels from the planned route ahead of the car.

The label is a property of the road the car WILL drive, read from the map, not of pixels:

    delta_psi = max over s in (0, L] of |psi(s) - psi(0)|

with psi the lane heading along the planned route and s the arc length from the car's
projection onto the route. ``curve`` if delta_psi >= theta_curve, ``straight`` if
delta_psi <= theta_straight, otherwise ambiguous and never saved (the gap keeps borderline
frames out of both classes).

Why the defaults (L = 25 m, theta_curve = 20 deg, theta_straight = 5 deg) fit the camera
(800x600, fov 90 deg, mounted 2 m high at x = 1.5 m, pitch 0, as in CARLA's examples):

* focal length f = W / (2 tan(fov/2)) = 400 px. A ground point d metres ahead lies
  f * h / d pixels below the horizon: the bottom row sees the road from ~2.7 m, 25 m ahead is
  32 px below the horizon and a 3.5 m lane there is still 56 px wide. Beyond ~30 m the road
  squeezes into a few rows, so what happens there is not visible; L = 25 m is where the
  camera still resolves the lane.
* a heading change of delta_psi over L displaces the road end by about L sin(delta_psi / 2)
  sideways: 20 deg -> 4.3 m (more than a lane width, ~70 px at 25 m: plainly a curve);
  5 deg -> 1.1 m (~17 px, less than half a lane: indistinguishable from a straight road's
  perspective). Town junction turns (90 deg, radius 7-20 m) and the bends of Town03-05
  (radius < ~70 m) clear 20 deg within 25 m.

Route-dependent frames (:func:`route_dependent`). The label follows the route the car will
drive, but at a junction with several ways on (straight or turn at a crossing, or along the
bar of a T) that choice is invisible: the camera shows the same crossing whether the planner
turns or not, so the same image would be saved as ``curve`` on one route and ``straight`` on
another. Such frames are label noise no camera classifier can learn (they capped a
from-scratch model at ~85% on held-out towns), so the collector skips them by default. A frame
is route-dependent when, over every legal way on through the junctions within its lookahead,
the labels computed exactly like the real one (same window, same thresholds, the alternative
path substituted from the junction on) include both classes. At a T-junction seen from its
stem or on a plain bend every way on turns, so ``curve`` is visible and kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import carla

from datasets.schema import CLASSES, LabelParams  # noqa: F401  (LabelParams: defined with the contract)

from .route import RoutePath

CURVE, STRAIGHT = CLASSES


@dataclass(frozen=True)
class LabelEvidence:
    """The label of one frame and the numbers behind it (written to the manifest)."""

    label: str | None  # "curve", "straight", or None when ambiguous
    heading_change_deg: float
    max_curvature: float  # 1/m
    lookahead_m: float


def classify(heading_change_deg: float, params: LabelParams) -> str | None:
    """Map delta_psi (deg) to ``curve`` / ``straight`` / None (ambiguous band)."""
    if heading_change_deg >= params.curve_deg:
        return CURVE
    if heading_change_deg <= params.straight_deg:
        return STRAIGHT
    return None


def heading_change_deg(path: RoutePath, s0: float, lookahead_m: float) -> float:
    """max |psi(s) - psi(s0)| over s in (s0, s0 + L], degrees.

    psi is piecewise linear in s between route points, so its extremes are at route points or
    at the window end: evaluating there is exact, with no sampling step to tune.
    """
    s1 = s0 + lookahead_m
    inner = path.s[(path.s > s0) & (path.s < s1)]
    psi = path.heading_at(np.concatenate((inner, [s1])))
    return math.degrees(float(np.max(np.abs(psi - path.heading_at(s0)))))


def label_at(path: RoutePath, s0: float, params: LabelParams) -> LabelEvidence | None:
    """Label of a car at arc length ``s0`` on ``path``; None when less than L of route is left."""
    if s0 + params.lookahead_m > path.length + 1e-6:
        return None
    dpsi = heading_change_deg(path, s0, params.lookahead_m)
    return LabelEvidence(label=classify(dpsi, params), heading_change_deg=dpsi,
                         max_curvature=path.max_curvature(s0, s0 + params.lookahead_m),
                         lookahead_m=params.lookahead_m)


OPEN_TOLERANCE_M = 0.3
"""A way on is still open while the car's route point is this close to it: just past a junction
entry the ways on have not parted yet and the camera cannot tell which one the car takes."""


@dataclass(frozen=True)
class JunctionChoice:
    """The legal ways on at one junction a route enters.

    Attributes:
        s_branch: arc length on the route where it enters the junction (the ways on part there), m.
        alternatives: one path per way on (the route's own included): the route up to the
            junction, then that way on; arc lengths agree with the route's up to the junction.
    """

    s_branch: float
    alternatives: tuple[RoutePath, ...]


def route_dependent(path: RoutePath, s0: float, params: LabelParams, choices) -> bool:
    """True when another legal route choice would label this frame with the other class.

    Collects the label of every way on that is still open at ``s0`` for each junction entered
    within the lookahead (computed with :func:`label_at`, exactly like the real label) plus the
    real label; route-dependent iff ``curve`` and ``straight`` both occur. An alternative that
    is only ambiguous does not count: it would never be saved, so it adds no contradicting label.

    Args:
        path: the planned route; s0: the car's arc length on it.
        choices: the route's :class:`JunctionChoice` entries (:meth:`JunctionChoices.along`).
    """
    L = params.lookahead_m
    near = [c for c in choices if s0 - L < c.s_branch < s0 + L]
    if not near:
        return False
    labels = set()
    x0, y0 = path.point_at(s0)
    for p in [path] + [alt for c in near for alt in c.alternatives]:
        if p is not path and math.hypot(*np.subtract(p.point_at(s0), (x0, y0))) > OPEN_TOLERANCE_M:
            continue  # the car is already on another way: this one is no longer a choice
        if s0 + L <= p.length + 1e-6:  # same rule as label_at, without the curvature it does not need
            labels.add(classify(heading_change_deg(p, s0, L), params))
    labels.discard(None)
    return len(labels) > 1


class JunctionChoices:
    """Finds the junctions a route enters on a ``carla.Map`` and their legal ways on.

    The ways on from one junction entry are a tree of lane paths (``waypoint.next`` branching
    wherever several successors exist, further junctions included) sampled every ``step_m``
    and followed ``horizon_m`` past the entry. Trees are cached per entry lane coordinate
    ``(road_id, section_id, lane_id, round(s, 1))``, so after the first episodes a route costs
    one dictionary look-up per junction plus splicing a few arrays.

    Args:
        wmap: the town (live, embedded or parsed offline).
        horizon_m: how far past the entry to follow each way on; at least the label lookahead.
        step_m: sampling step of the ways on, m.
        max_ways: guard against a malformed map exploding the tree.
    """

    def __init__(self, wmap: carla.Map, horizon_m: float, step_m: float = 1.0, max_ways: int = 64):
        if not horizon_m > 0 or not step_m > 0:
            raise ValueError(f"need horizon_m > 0 and step_m > 0, got {horizon_m}, {step_m}")
        self._map = wmap
        self._horizon = float(horizon_m) + 5.0  # the car may be a little past the entry
        self._step = float(step_m)
        self._max_ways = max_ways
        self._junction_road: dict[int, bool] = {}
        self._ways: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = {}

    def along(self, path: RoutePath) -> tuple[JunctionChoice, ...]:
        """The junction choices of ``path`` (entries with a single way on are left out)."""
        ids = path.ids
        out = []
        change = np.flatnonzero(np.any(ids[1:, :3] != ids[:-1, :3], axis=1)) + 1
        for k in change:
            i = k - 1
            if ids[i, 0] < 0 or ids[k, 0] < 0 or not self._is_junction(ids[k]) or self._is_junction(ids[i]):
                continue
            ways = self._ways_from(ids[i])
            if len(ways) < 2:
                continue
            prefix_xy = np.column_stack((path.x[:i + 1], path.y[:i + 1]))
            prefix_yaw = np.degrees(path.yaw[:i + 1])
            alts = tuple(RoutePath.from_points(np.r_[prefix_xy[:, 0], xy[1:, 0]], np.r_[prefix_xy[:, 1], xy[1:, 1]],
                                               np.r_[prefix_yaw, yaw[1:]]) for xy, yaw in ways)
            out.append(JunctionChoice(s_branch=float(path.s[k]), alternatives=alts))
        return tuple(out)

    # ------------------------------------------------------------------ helpers
    def _waypoint(self, lane_ids) -> carla.Waypoint | None:
        road, _section, lane, s = lane_ids
        for eps in (0.0, -1e-3, 1e-3):  # carla rejects s exactly at a lane's end
            wp = self._map.get_waypoint_xodr(int(road), int(lane), float(s) + eps)
            if wp is not None:
                return wp
        return None

    def _is_junction(self, lane_ids) -> bool:
        road = int(lane_ids[0])
        if road not in self._junction_road:
            wp = self._waypoint(lane_ids)
            self._junction_road[road] = bool(wp is not None and wp.is_junction)
        return self._junction_road[road]

    def _ways_from(self, lane_ids) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(xy (N, 2), yaw_deg (N,))] of every way on from the entry point, the entry first."""
        key = (int(lane_ids[0]), int(lane_ids[1]), int(lane_ids[2]), round(float(lane_ids[3]), 1))
        if key not in self._ways:
            start = self._waypoint(lane_ids)
            self._ways[key] = [] if start is None else [self._arrays(w) for w in self._tree(start)]
        return self._ways[key]

    def _tree(self, start: carla.Waypoint) -> list[list[carla.Waypoint]]:
        done = []
        stack = [([start], 0.0)]
        while stack and len(done) < self._max_ways:
            wps, length = stack.pop()
            while length < self._horizon:
                nxt = _unique(wps[-1].next(self._step))
                if not nxt:
                    break
                for other in nxt[1:]:
                    stack.append((wps + [other], length + self._step))
                length += self._step
                wps.append(nxt[0])
            done.append(wps)
        return done

    @staticmethod
    def _arrays(wps: list[carla.Waypoint]) -> tuple[np.ndarray, np.ndarray]:
        tf = [w.transform for w in wps]
        return (np.array([(t.location.x, t.location.y) for t in tf]), np.array([t.rotation.yaw for t in tf]))


def _unique(wps: list[carla.Waypoint]) -> list[carla.Waypoint]:
    seen, out = set(), []
    for w in wps:
        key = (w.road_id, w.lane_id, round(w.s, 1))
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out
