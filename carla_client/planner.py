"""Route planning over a ``carla.Map``'s lane topology, in the spirit of CARLA's GlobalRoutePlanner.

The graph is built once from ``carla.Map.get_topology()``: one node per lane-segment end
(locations rounded to 1 m, so the exit of one segment and the entry of the next meet), one
directed edge per lane segment, carrying its waypoints sampled every ``sampling_resolution``
metres. Only the real ``carla.Map`` API is used (no server needed), so the same planner runs
on a live CARLA world, the embedded simulator, or a map parsed offline from OpenDRIVE.

Differences from CARLA's planner, on purpose: no lane-change edges (the collector and the
experts keep their lane), Dijkstra/A* implemented with ``heapq`` (no networkx dependency),
and a random walk (:meth:`GlobalRoutePlanner.random_route`) for data collection whose turn
preference can be biased towards the class that still needs frames.
"""
from __future__ import annotations

import heapq
import math
from enum import IntEnum

import numpy as np

import carla


class RoadOption(IntEnum):
    """Manoeuvre of a route segment; values match CARLA's ``agents.navigation.local_planner.RoadOption``."""

    VOID = -1
    LEFT = 1
    RIGHT = 2
    STRAIGHT = 3
    LANEFOLLOW = 4
    CHANGELANELEFT = 5
    CHANGELANERIGHT = 6


STRAIGHT_TOLERANCE_DEG = 35.0
"""A junction segment turning less than this is STRAIGHT, else LEFT/RIGHT (same idea as CARLA's)."""


class GlobalRoutePlanner:
    """Plans lane-keeping routes over the map's topology graph.

    Args:
        wmap: a ``carla.Map`` (live, embedded or parsed offline).
        sampling_resolution: spacing of the route's waypoints, m.

    Internal structures:
        ``_edges``: list of dicts with keys ``entry``, ``exit`` (node ids), ``path`` (list of
        carla.Waypoint from the segment entry to its exit), ``length`` (m), ``intersection``
        (bool), ``option`` (RoadOption of the segment).
        ``_out``: node id -> list of edge indices leaving it.
        ``_lane_edges``: (road_id, section_id, lane_id) -> list of edge indices on that lane.
        ``_node_xyz``: node id -> (x, y, z) location (A* heuristic).
    """

    def __init__(self, wmap: carla.Map, sampling_resolution: float = 2.0):
        if not sampling_resolution > 0:
            raise ValueError(f"sampling_resolution must be > 0 m, got {sampling_resolution}")
        self._map = wmap
        self._resolution = float(sampling_resolution)
        self._edges: list[dict] = []
        self._out: dict[int, list[int]] = {}
        self._lane_edges: dict[tuple[int, int, int], list[int]] = {}
        self._node_xyz: dict[int, tuple[float, float, float]] = {}
        self._build_graph()

    @property
    def sampling_resolution(self) -> float:
        return self._resolution

    # ------------------------------------------------------------------ public API
    def trace_route(self, origin: carla.Location, destination: carla.Location) -> list[tuple[carla.Waypoint, RoadOption]]:
        """Shortest lane-keeping route from ``origin`` to ``destination``.

        Returns:
            ``[(waypoint, RoadOption)]`` spaced about ``sampling_resolution`` apart, starting at
            the waypoint closest to ``origin``.

        Raises:
            ValueError: when a location is not on a drivable lane or no route connects them.
        """
        start_wp, start_edge = self._localize(origin)
        end_wp, end_edge = self._localize(destination)
        start_idx = self._closest_index(self._edges[start_edge]["path"], start_wp.transform.location)
        end_idx = self._closest_index(self._edges[end_edge]["path"], end_wp.transform.location)
        if start_edge == end_edge and end_idx >= start_idx:
            return self._edge_items(start_edge, start_idx, end_idx + 1)
        chain = self._search(self._edges[start_edge]["exit"], self._edges[end_edge]["entry"])
        if chain is None:
            raise ValueError(f"no route from {_fmt(origin)} to {_fmt(destination)} on {self._map.name}")
        route = self._edge_items(start_edge, start_idx)
        for e in chain:
            route += self._edge_items(e, 1)
        route += self._edge_items(end_edge, 1, end_idx + 1)
        return route

    def random_route(self, start: carla.Location | carla.Waypoint, min_length: float, rng: np.random.Generator,
                     turn_probability: float | None = None) -> list[tuple[carla.Waypoint, RoadOption]]:
        """A random walk over the junction graph, at least ``min_length`` m long (unless it dead-ends).

        Args:
            start: where the route begins (projected onto the closest driving lane).
            min_length: route length to reach, m.
            rng: numpy Generator, so routes are reproducible from a seed.
            turn_probability: chance of taking a LEFT/RIGHT branch at a junction when one
                exists; None picks uniformly among the branches.
        """
        if turn_probability is not None and not 0.0 <= turn_probability <= 1.0:
            raise ValueError(f"turn_probability must be in [0, 1], got {turn_probability}")
        loc = start.transform.location if isinstance(start, carla.Waypoint) else start
        wp, edge = self._localize(loc)
        route = self._edge_items(edge, self._closest_index(self._edges[edge]["path"], wp.transform.location))
        length = sum(a[0].transform.location.distance(b[0].transform.location) for a, b in zip(route, route[1:]))
        node = self._edges[edge]["exit"]
        while length < min_length:
            choices = self._out.get(node, [])
            if not choices:
                break
            e = self._choose(choices, rng, turn_probability)
            route += self._edge_items(e, 1)
            length += self._edges[e]["length"]
            node = self._edges[e]["exit"]
        return route

    def spawn_waypoints(self, spacing: float = 10.0) -> list[carla.Waypoint]:
        """Driving-lane waypoints outside junctions, every ``spacing`` m: start points when the
        map has no spawn points (an offline ``carla.Map``)."""
        return [w for w in self._map.generate_waypoints(spacing)
                if not w.is_junction and w.lane_type == carla.LaneType.Driving
                and (w.road_id, w.section_id, w.lane_id) in self._lane_edges]

    # ------------------------------------------------------------------ graph construction
    def _build_graph(self) -> None:
        node_ids: dict[tuple[int, int, int, float], int] = {}

        def node(wp: carla.Waypoint) -> int:
            # A segment's exit waypoint IS the next segment's entry waypoint (same lane, same s),
            # so lane coordinates join segments exactly; rounding locations would also merge
            # the sub-metre junction sections of towns like Town02 into self-loops.
            key = (wp.road_id, wp.section_id, wp.lane_id, round(wp.s, 2))
            if key not in node_ids:
                node_ids[key] = len(node_ids)
                loc = wp.transform.location
                self._node_xyz[node_ids[key]] = (loc.x, loc.y, loc.z)
            return node_ids[key]

        for wp1, wp2 in self._map.get_topology():
            path = self._sample_segment(wp1, wp2)
            if path is None:
                continue
            n1, n2 = node(wp1), node(wp2)
            length = sum(a.transform.location.distance(b.transform.location) for a, b in zip(path, path[1:]))
            idx = len(self._edges)
            self._edges.append({"entry": n1, "exit": n2, "path": path, "length": length,
                                "intersection": bool(wp1.is_junction),
                                "option": (self._turn_option(path[0], path[-1]) if wp1.is_junction
                                           else RoadOption.LANEFOLLOW)})
            self._out.setdefault(n1, []).append(idx)
            self._lane_edges.setdefault((wp1.road_id, wp1.section_id, wp1.lane_id), []).append(idx)
        self._assign_junction_options()

    def _assign_junction_options(self) -> None:
        """Give every segment of one junction crossing the RoadOption of the whole crossing.

        Junction roads are split into several short sections (Town02 has 0.3 m ones); judged
        one by one, each section of a 90 deg turn would look STRAIGHT.
        """
        after_lane = {e["exit"] for e in self._edges if not e["intersection"]}
        heads = [i for i, e in enumerate(self._edges) if e["intersection"]
                 and (e["entry"] in after_lane or len(self._out.get(e["entry"], [])) > 1)]
        for head in heads:
            chain = [head]
            nxt = self._out.get(self._edges[head]["exit"], [])
            while len(nxt) == 1 and self._edges[nxt[0]]["intersection"] and nxt[0] not in chain:
                chain.append(nxt[0])
                nxt = self._out.get(self._edges[nxt[0]]["exit"], [])
            option = self._turn_option(self._edges[head]["path"][0], self._edges[chain[-1]]["path"][-1])
            for i in chain:
                self._edges[i]["option"] = option

    def _sample_segment(self, wp1: carla.Waypoint, wp2: carla.Waypoint) -> list[carla.Waypoint] | None:
        """Waypoints from ``wp1`` to ``wp2`` every ``sampling_resolution`` m (both ends included)."""
        end = wp2.transform.location
        path = [wp1]
        w = wp1
        while w.transform.location.distance(end) > self._resolution:
            nxt = w.next(self._resolution)
            if not nxt:
                break
            same_lane = [c for c in nxt if (c.road_id, c.lane_id) == (w.road_id, w.lane_id)]
            w = min(same_lane or nxt, key=lambda c: c.transform.location.distance(end))
            path.append(w)
            if len(path) > 10000:  # a malformed map must not hang the planner
                return None
        path.append(wp2)
        return path

    @staticmethod
    def _turn_option(first: carla.Waypoint, last: carla.Waypoint) -> RoadOption:
        turn = (last.transform.rotation.yaw - first.transform.rotation.yaw + 180.0) % 360.0 - 180.0
        if abs(turn) < STRAIGHT_TOLERANCE_DEG:
            return RoadOption.STRAIGHT
        return RoadOption.RIGHT if turn > 0 else RoadOption.LEFT  # CARLA yaw grows clockwise

    # ------------------------------------------------------------------ helpers
    def _localize(self, loc: carla.Location) -> tuple[carla.Waypoint, int]:
        wp = self._map.get_waypoint(loc, project_to_road=True, lane_type=carla.LaneType.Driving)
        if wp is None:
            raise ValueError(f"{_fmt(loc)} is not on a driving lane of {self._map.name}")
        candidates = self._lane_edges.get((wp.road_id, wp.section_id, wp.lane_id))
        if not candidates:
            raise ValueError(f"lane (road {wp.road_id}, section {wp.section_id}, lane {wp.lane_id}) at {_fmt(loc)} "
                             f"is not in the route graph of {self._map.name}")
        edge = min(candidates, key=lambda e: min(w.transform.location.distance(wp.transform.location)
                                                  for w in self._edges[e]["path"]))
        return wp, edge

    @staticmethod
    def _closest_index(path: list[carla.Waypoint], loc: carla.Location) -> int:
        return min(range(len(path)), key=lambda i: path[i].transform.location.distance(loc))

    def _edge_items(self, edge: int, start: int = 0, stop: int | None = None) -> list[tuple[carla.Waypoint, RoadOption]]:
        e = self._edges[edge]
        return [(w, e["option"]) for w in e["path"][start:stop]]

    def _choose(self, choices: list[int], rng: np.random.Generator, turn_probability: float | None) -> int:
        if turn_probability is None or len(choices) == 1:
            return choices[int(rng.integers(len(choices)))]
        turns = [e for e in choices if self._branch_option(e) in (RoadOption.LEFT, RoadOption.RIGHT)]
        others = [e for e in choices if e not in turns]
        if turns and (not others or rng.random() < turn_probability):
            return turns[int(rng.integers(len(turns)))]
        return others[int(rng.integers(len(others)))]

    def _branch_option(self, edge: int) -> RoadOption:
        """Manoeuvre a branch leads to: topology splits the lane BEFORE a junction once per
        junction road it feeds, so the choice made on a lane edge is the crossing that follows."""
        e = self._edges[edge]
        if e["intersection"]:
            return e["option"]
        nxt = self._out.get(e["exit"], [])
        if len(nxt) == 1 and self._edges[nxt[0]]["intersection"]:
            return self._edges[nxt[0]]["option"]
        return e["option"]

    def _search(self, source: int, target: int) -> list[int] | None:
        """A* over nodes (Euclidean heuristic); returns the list of edge indices, or None."""
        def h(n: int) -> float:
            a, b = self._node_xyz[n], self._node_xyz[target]
            return math.dist(a, b)

        best = {source: 0.0}
        back: dict[int, tuple[int, int]] = {}
        heap = [(h(source), 0.0, source)]
        while heap:
            _, g, n = heapq.heappop(heap)
            if n == target:
                chain = []
                while n != source:
                    n, e = back[n]
                    chain.append(e)
                return chain[::-1]
            if g > best.get(n, math.inf):
                continue
            for e in self._out.get(n, []):
                m = self._edges[e]["exit"]
                g2 = g + self._edges[e]["length"]
                if g2 < best.get(m, math.inf):
                    best[m] = g2
                    back[m] = (n, e)
                    heapq.heappush(heap, (g2 + h(m), g2, m))
        return None


def _fmt(loc: carla.Location) -> str:
    return f"({loc.x:.1f}, {loc.y:.1f}, {loc.z:.1f})"
