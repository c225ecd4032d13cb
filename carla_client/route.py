"""A planned route as numpy arrays: the shared geometry of labels and the route follower.

``RoutePath`` turns ``[(carla.Waypoint, RoadOption)]`` (what the planner returns) into
arc-length-parametrised arrays once, so that per-tick work (projecting the car onto the route,
reading the heading a few metres ahead) is a handful of vectorised numpy operations instead
of Python loops over waypoints. Headings come from the map's lane tangents
(``waypoint.transform.rotation.yaw``), unwrapped so that differences never jump by 360 deg.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

LANEFOLLOW = 4
"""RoadOption.LANEFOLLOW (carla_client.planner.RoadOption; the value is CARLA's agents')."""
_MIN_STEP_M = 0.05  # consecutive route points closer than this are duplicates (segment joints)


@dataclass(frozen=True)
class RoutePath:
    """Route polyline in CARLA world coordinates.

    Attributes:
        x, y: (N,) point positions, m.
        yaw: (N,) unwrapped lane heading, rad (CARLA convention: clockwise seen from above).
        s: (N,) cumulative arc length from the first point, m.
        ids: (N, 4) float array (road_id, section_id, lane_id, s_road) so a route can be stored and
            re-derived from the map by an auditor; -1 rows where unknown.
        options: (N,) int RoadOption value of each point (what the planner said there; LANEFOLLOW=4
            where unknown), read by :meth:`command_at`.
    """

    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    s: np.ndarray
    ids: np.ndarray = field(repr=False)
    options: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        n = len(self.x)
        if self.options is None:
            object.__setattr__(self, "options", np.full(n, LANEFOLLOW, dtype=np.int64))
        if n < 2:
            raise ValueError(f"a route needs at least 2 distinct points, got {n}")
        for name in ("y", "yaw", "s"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RoutePath.{name} has {len(getattr(self, name))} points, x has {n}")

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_points(cls, x, y, yaw_deg, ids=None, options=None) -> "RoutePath":
        """Build from raw arrays (yaw in degrees); drops duplicate consecutive points."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        yaw = np.radians(np.asarray(yaw_deg, dtype=np.float64))
        ids = np.full((len(x), 4), -1.0) if ids is None else np.asarray(ids, dtype=np.float64)
        options = np.full(len(x), LANEFOLLOW, dtype=np.int64) if options is None else np.asarray(options, np.int64)
        step = np.hypot(np.diff(x), np.diff(y))
        keep = np.concatenate(([True], step > _MIN_STEP_M))
        x, y, yaw, ids, options = x[keep], y[keep], yaw[keep], ids[keep], options[keep]
        s = np.concatenate(([0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))))
        return cls(x=x, y=y, yaw=np.unwrap(yaw), s=s, ids=ids, options=options)

    @classmethod
    def from_route(cls, route) -> "RoutePath":
        """Build from ``[(carla.Waypoint, RoadOption)]`` or a plain list of waypoints."""
        wps = [item[0] if isinstance(item, tuple) else item for item in route]
        opts = [int(item[1]) if isinstance(item, tuple) else LANEFOLLOW for item in route]
        tf = [wp.transform for wp in wps]
        return cls.from_points(
            [t.location.x for t in tf], [t.location.y for t in tf], [t.rotation.yaw for t in tf],
            ids=[(wp.road_id, wp.section_id, wp.lane_id, wp.s) for wp in wps], options=opts)

    # ----------------------------------------------------------------- queries
    @property
    def length(self) -> float:
        """Total arc length, m."""
        return float(self.s[-1])

    def project(self, x: float, y: float, hint: int = 0, window: int | None = 60) -> tuple[float, int, float]:
        """Closest point of the polyline to (x, y).

        Searches segments ``[hint - 5, hint + window)`` (the whole route when ``window`` is None) so
        that a route passing the same place twice is not confused while the car follows it.

        Returns:
            (s, index, distance): arc length of the projection (m), index of the segment start,
            and the distance from (x, y) to the route (m).
        """
        n = len(self.x)
        lo = 0 if window is None else max(0, hint - 5)
        hi = n - 1 if window is None else min(n - 1, hint + window)
        if hi <= lo:
            lo, hi = max(0, n - 2), n - 1
        x0, y0 = self.x[lo:hi], self.y[lo:hi]
        dx, dy = self.x[lo + 1:hi + 1] - x0, self.y[lo + 1:hi + 1] - y0
        seg2 = dx * dx + dy * dy
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / np.maximum(seg2, 1e-12), 0.0, 1.0)
        px, py = x0 + t * dx, y0 + t * dy
        d2 = (px - x) ** 2 + (py - y) ** 2
        k = int(np.argmin(d2))
        i = lo + k
        return float(self.s[i] + t[k] * math.sqrt(seg2[k])), i, float(math.sqrt(d2[k]))

    def command_at(self, s: float) -> int:
        """The high-level command at arc length ``s``, as a RoadOption value: the rule of
        :func:`carla_client.route_command.command_at` (the one definition the collector saves and the
        vision experts drive with) at the route point nearest ``s``."""
        from .planner import RoadOption
        from .route_command import command_at

        i = int(np.searchsorted(self.s, s))
        if i > 0 and (i == len(self.s) or s - self.s[i - 1] <= self.s[i] - s):
            i -= 1
        return int(RoadOption[command_at(self._option_names, self.s, i)])

    @functools.cached_property
    def _option_names(self) -> list[str]:
        from .planner import RoadOption
        from .route_command import option_name
        return [option_name(RoadOption(int(o))) for o in self.options]

    def point_at(self, s: float) -> tuple[float, float]:
        """(x, y) at arc length ``s`` (clamped to the route)."""
        return float(np.interp(s, self.s, self.x)), float(np.interp(s, self.s, self.y))

    def heading_at(self, s) -> np.ndarray | float:
        """Unwrapped lane heading (rad) at arc length(s) ``s``, linearly interpolated."""
        return np.interp(s, self.s, self.yaw)

    def max_curvature(self, s0: float, s1: float, step: float = 0.5, base: float = 2.0) -> float:
        """max |d psi / ds| (1/m) over [s0, s1], as heading differences over ``base`` metres.

        A finite base suppresses the tiny heading jumps at road joints that a per-segment
        derivative would turn into spikes.
        """
        grid = np.arange(s0, max(s1, s0 + base) + 1e-9, step)
        psi = self.heading_at(grid)
        k = max(1, int(round(base / step)))
        if len(psi) <= k:
            return 0.0
        return float(np.max(np.abs(psi[k:] - psi[:-k])) / (k * step))
