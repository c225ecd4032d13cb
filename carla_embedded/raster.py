"""Top-down raster of a CARLA town, drawn once from the real ``carla.Map`` and cached on disk.

The renderer never walks the road network per frame: the town is painted once into a top-down image
(asphalt, lane markings by OpenDRIVE type and colour, shoulders, sidewalks with curbs, textured ground),
and the ground seen by a camera is a single homography of that image. The same raster serves as a
minimap and as a background for trajectory plots, on real CARLA maps as well as embedded ones.

Pixel convention: ``u = (x - x0) / resolution``, ``v = (y - y0) / resolution`` with pixel centres on
integers. Because CARLA's world is left-handed (x forward, y right), this is the natural view from
above (x to the right, y down), not a mirror image.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Optional

import carla
import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: Bump when the drawing changes so cached rasters are rebuilt.
RASTER_VERSION = 3

_SHIFT = 3  # sub-pixel bits for cv2 polygon drawing
_SCALE = float(1 << _SHIFT)


class Material(IntEnum):
    """Surface class of each raster pixel (``TownRaster.material``)."""

    GROUND = 0
    ROAD = 1  # driving, parking and other lanes vehicles use
    SHOULDER = 2
    SIDEWALK = 3
    CURB = 4
    MARKING_WHITE = 5
    MARKING_YELLOW = 6
    MEDIAN = 7


# Daylight albedo of each material, BGR.
PALETTE = {
    Material.GROUND: (62, 112, 88),
    Material.ROAD: (78, 80, 82),
    Material.SHOULDER: (92, 94, 96),
    Material.SIDEWALK: (150, 158, 162),
    Material.CURB: (185, 190, 192),
    Material.MARKING_WHITE: (222, 226, 228),
    Material.MARKING_YELLOW: (40, 170, 215),
    Material.MEDIAN: (70, 118, 96),
}
_CURB_SHADOW = (52, 54, 56)
_SLAB_JOINT = (118, 124, 128)

_LANE_MATERIAL = {
    carla.LaneType.Driving: Material.ROAD,
    carla.LaneType.Parking: Material.ROAD,
    carla.LaneType.Bidirectional: Material.ROAD,
    carla.LaneType.Entry: Material.ROAD,
    carla.LaneType.Exit: Material.ROAD,
    carla.LaneType.OnRamp: Material.ROAD,
    carla.LaneType.OffRamp: Material.ROAD,
    carla.LaneType.Stop: Material.SHOULDER,
    carla.LaneType.Shoulder: Material.SHOULDER,
    carla.LaneType.Biking: Material.SHOULDER,
    carla.LaneType.Restricted: Material.SHOULDER,
    carla.LaneType.Sidewalk: Material.SIDEWALK,
    carla.LaneType.Border: Material.CURB,
    carla.LaneType.Median: Material.MEDIAN,
}
# Drawing order: raised/off-road surfaces first so asphalt (junctions!) covers them.
_DRAW_ORDER = (Material.MEDIAN, Material.SIDEWALK, Material.CURB, Material.SHOULDER, Material.ROAD)

# Lane marking geometry (metres). CARLA towns paint ~3 m dashes with ~6 m gaps.
DASH_ON = 3.0
DASH_PERIOD = 9.0
_LINE_WIDTH = 0.14
_DOUBLE_LINE_WIDTH = 0.11
_DOUBLE_GAP = 0.10
_CURB_WIDTH = 0.25
_SLAB_SPACING = 2.0

_MT = carla.LaneMarkingType
# (left component, right component) for each marking type; True = solid, False = broken.
_MARKING_PARTS = {
    _MT.Solid: (True,),
    _MT.Broken: (False,),
    _MT.SolidSolid: (True, True),
    _MT.SolidBroken: (True, False),
    _MT.BrokenSolid: (False, True),
    _MT.BrokenBroken: (False, False),
}


@dataclass
class _LaneRun:
    """Samples of one lane along its road where the lane keeps one type.

    Arrays have one row per sample: ``centre``/``right`` (N,2) world xy of the lane centre and its
    right unit vector in the lane's direction of travel, ``width`` and ``s`` (N,).
    ``marks`` maps "left"/"right" to lists of (type, colour) per sample.
    """

    road_id: int
    lane_id: int
    junction: bool
    material: Material
    centre: np.ndarray
    right: np.ndarray
    width: np.ndarray
    s: np.ndarray
    marks: dict = field(default_factory=dict)


def _parse_roads(xodr: str) -> list[tuple[int, float, bool, list[int]]]:
    """(road id, length, is junction connector, lane ids) for every road of the OpenDRIVE text."""
    root = ET.fromstring(xodr)
    roads = []
    for road in root.iter("road"):
        lane_ids = sorted({int(lane.get("id")) for lane in road.iter("lane")} - {0})
        roads.append((int(road.get("id")), float(road.get("length")), road.get("junction", "-1") != "-1",
                      lane_ids))
    return roads


def _sample_lanes(carla_map: carla.Map, xodr: str, step: float) -> list[_LaneRun]:
    """Walk every lane of every road with ``get_waypoint_xodr`` (all lane types, not only driving)."""
    runs: list[_LaneRun] = []
    for road_id, length, junction, lane_ids in _parse_roads(xodr):
        n = max(2, int(np.ceil(length / step)) + 1)
        s_values = np.linspace(0.0, max(length - 1e-3, 0.0), n)
        for lane_id in lane_ids:
            current: Optional[dict] = None
            for s in s_values:
                wp = carla_map.get_waypoint_xodr(road_id, lane_id, float(s))
                material = None if wp is None else _LANE_MATERIAL.get(wp.lane_type)
                if current is not None and (material != current["material"]):
                    if wp is not None and material is not None:
                        _append_sample(current, wp, s)  # share the boundary sample: no gap
                    runs.append(_finish_run(road_id, lane_id, junction, current))
                    current = None
                if material is None:
                    continue
                if current is None:
                    current = {"material": material, "rows": []}
                _append_sample(current, wp, s)
            if current is not None:
                runs.append(_finish_run(road_id, lane_id, junction, current))
    return [r for r in runs if len(r.s) >= 2]


def _append_sample(current: dict, wp: carla.Waypoint, s: float) -> None:
    tf = wp.transform
    yaw = np.radians(tf.rotation.yaw)
    lm, rm = wp.left_lane_marking, wp.right_lane_marking
    current["rows"].append((tf.location.x, tf.location.y, -np.sin(yaw), np.cos(yaw), wp.lane_width, s,
                            (lm.type, lm.color), (rm.type, rm.color)))


def _finish_run(road_id: int, lane_id: int, junction: bool, current: dict) -> _LaneRun:
    rows = current["rows"]
    num = np.array([r[:6] for r in rows], dtype=np.float64)
    return _LaneRun(road_id, lane_id, junction, current["material"], num[:, 0:2], num[:, 2:4], num[:, 4],
                    num[:, 5], {"left": [r[6] for r in rows], "right": [r[7] for r in rows]})


def _strip(points: np.ndarray, normals: np.ndarray, off_a: np.ndarray, off_b: np.ndarray,
           extend: float = 0.0) -> np.ndarray:
    """Polygon of the band between lateral offsets ``off_a`` and ``off_b`` along a polyline."""
    a = points + normals * np.asarray(off_a)[..., None]
    b = points + normals * np.asarray(off_b)[..., None]
    if extend > 0 and len(points) >= 2:
        t0 = points[0] - points[1]
        t1 = points[-1] - points[-2]
        t0 = t0 / max(np.linalg.norm(t0), 1e-9) * extend
        t1 = t1 / max(np.linalg.norm(t1), 1e-9) * extend
        a = np.vstack([a[:1] + t0, a, a[-1:] + t1])
        b = np.vstack([b[:1] + t0, b, b[-1:] + t1])
    return np.vstack([a, b[::-1]])


def _dash_pieces(s: np.ndarray, on: float = DASH_ON, period: float = DASH_PERIOD):
    """Yield the (start, end) arc positions of every painted dash within the span of ``s``."""
    s0, s1 = s[0], s[-1]
    k = np.floor(s0 / period)
    while k * period < s1:
        a, b = max(k * period, s0), min(k * period + on, s1)
        k += 1
        if b - a < 0.2:
            continue
        yield a, b


def _interp_polyline(s: np.ndarray, pts: np.ndarray, a: float, b: float) -> np.ndarray:
    """Sub-polyline of ``pts`` (sampled at increasing ``s``) between arc positions a and b."""
    inside = (s > a) & (s < b)
    start = np.array([np.interp(a, s, pts[:, 0]), np.interp(a, s, pts[:, 1])])
    end = np.array([np.interp(b, s, pts[:, 0]), np.interp(b, s, pts[:, 1])])
    return np.vstack([start[None], pts[inside], end[None]])


@dataclass
class TownRaster:
    """Top-down colour image of a town plus the per-pixel material it was painted from.

    ``image`` is BGR uint8, ``material`` holds :class:`Material` values, ``x0``/``y0`` are the world
    coordinates of pixel (0, 0)'s centre. ``roadside`` (N,2) and ``roadside_normal`` (N,2) sample the
    outer edge of every non-junction road side every ~1 m with the outward normal (scenery is placed
    from them).
    """

    image: np.ndarray
    material: np.ndarray
    resolution: float
    x0: float
    y0: float
    roadside: np.ndarray
    roadside_normal: np.ndarray
    cache_dir: Optional[Path] = field(default=None, compare=False, repr=False)  # where from_map cached it

    # ------------------------------------------------------------------ geometry
    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """World (x_min, y_min, x_max, y_max) covered by the image."""
        h, w = self.material.shape
        return (self.x0, self.y0, self.x0 + (w - 1) * self.resolution, self.y0 + (h - 1) * self.resolution)

    def world_to_pixel(self, x, y):
        """World xy (scalars or arrays) to continuous pixel (u, v)."""
        return ((np.asarray(x, dtype=np.float64) - self.x0) / self.resolution,
                (np.asarray(y, dtype=np.float64) - self.y0) / self.resolution)

    def pixel_to_world(self, u, v):
        """Continuous pixel (u, v) to world xy."""
        return (np.asarray(u, dtype=np.float64) * self.resolution + self.x0,
                np.asarray(v, dtype=np.float64) * self.resolution + self.y0)

    def world_to_pixel_matrix(self) -> np.ndarray:
        """3x3 homogeneous matrix taking world (x, y, 1) to pixel (u, v, 1)."""
        r = self.resolution
        return np.array([[1 / r, 0, -self.x0 / r], [0, 1 / r, -self.y0 / r], [0, 0, 1.0]])

    def material_at(self, x, y) -> np.ndarray:
        """Material of the pixels under world points (outside the raster counts as ground)."""
        u, v = self.world_to_pixel(x, y)
        u = np.rint(u).astype(np.int64)
        v = np.rint(v).astype(np.int64)
        h, w = self.material.shape
        ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        out = np.full(u.shape, Material.GROUND, dtype=np.uint8)
        out[ok] = self.material[v[ok], u[ok]]
        return out

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_map(cls, carla_map: carla.Map, resolution: float = 0.1, margin: float = 40.0,
                 cache_dir: Optional[os.PathLike] = None, use_cache: bool = True) -> "TownRaster":
        """Rasterise ``carla_map`` (or load it from the disk cache keyed by its OpenDRIVE text)."""
        if not (0.02 <= resolution <= 2.0):
            raise ValueError(f"resolution={resolution!r} m/px is out of range; use 0.02..2.0")
        if margin < 0:
            raise ValueError(f"margin={margin!r} must be >= 0 metres")
        xodr = carla_map.to_opendrive()
        key = hashlib.sha256(f"{RASTER_VERSION}|{resolution:.4f}|{margin:.2f}|".encode() + xodr.encode())
        path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = path / f"{carla_map.name.split('/')[-1]}-{key.hexdigest()[:16]}"
        if use_cache:
            cached = cls._load(path)
            if cached is not None:
                cached.cache_dir = path.parent
                return cached
        raster = cls._build(carla_map, xodr, resolution, margin)
        raster.cache_dir = path.parent if use_cache else None
        if use_cache:
            try:
                raster._save(path)
            except OSError as exc:  # read-only home: still usable, just not cached
                logger.warning("could not cache town raster in %s: %s", path, exc)
        return raster

    @classmethod
    def _build(cls, carla_map: carla.Map, xodr: str, resolution: float, margin: float) -> "TownRaster":
        logger.info("rasterising %s at %.2f m/px (cached afterwards)", carla_map.name, resolution)
        runs = _sample_lanes(carla_map, xodr, step=1.0)
        if not runs:
            raise ValueError(f"map {carla_map.name!r} has no lanes to rasterise")
        allpts = np.vstack([r.centre for r in runs])
        x_min, y_min = allpts.min(axis=0) - margin
        x_max, y_max = allpts.max(axis=0) + margin
        w = int(np.ceil((x_max - x_min) / resolution)) + 1
        h = int(np.ceil((y_max - y_min) / resolution)) + 1
        raster = cls(image=_ground_texture(h, w, resolution), material=np.zeros((h, w), np.uint8),
                     resolution=resolution, x0=float(x_min), y0=float(y_min),
                     roadside=np.zeros((0, 2)), roadside_normal=np.zeros((0, 2)))
        raster._paint(runs)
        _add_grain(raster.image)
        raster._roadside_from(runs)
        return raster

    def _to_px(self, pts: np.ndarray) -> np.ndarray:
        u, v = self.world_to_pixel(pts[:, 0], pts[:, 1])
        return np.round(np.stack([u, v], axis=1) * _SCALE).astype(np.int32)

    def _fill(self, poly: np.ndarray, colour, material: Material) -> None:
        px = self._to_px(poly)
        cv2.fillPoly(self.image, [px], colour, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(self.material, [px], int(material), cv2.LINE_8, _SHIFT)

    def _paint(self, runs: list[_LaneRun]) -> None:
        for material in _DRAW_ORDER:
            for run in runs:
                if run.material == material:
                    half = run.width / 2
                    self._fill(_strip(run.centre, run.right, -half, half, extend=0.05),
                               PALETTE[material], material)
        # Curbs: a light stone edge on the road side of each sidewalk, with a dark gutter shadow.
        for run in runs:
            if run.material != Material.SIDEWALK:
                continue
            half = run.width / 2
            self._fill(_strip(run.centre, run.right, -half - 0.10, -half), _CURB_SHADOW, Material.SHOULDER)
            self._fill(_strip(run.centre, run.right, -half, -half + _CURB_WIDTH), PALETTE[Material.CURB],
                       Material.CURB)
            self._slab_joints(run)
        for run in runs:
            if run.material in (Material.ROAD, Material.SHOULDER):
                self._paint_markings(run)

    def _slab_joints(self, run: _LaneRun) -> None:
        """Transverse joints across sidewalks: cheap texture that gives the eye a sense of distance."""
        half = run.width / 2
        for k in np.arange(np.ceil(run.s[0] / _SLAB_SPACING), np.floor(run.s[-1] / _SLAB_SPACING) + 1):
            s = k * _SLAB_SPACING
            c = np.array([np.interp(s, run.s, run.centre[:, 0]), np.interp(s, run.s, run.centre[:, 1])])
            r = np.array([np.interp(s, run.s, run.right[:, 0]), np.interp(s, run.s, run.right[:, 1])])
            hw = np.interp(s, run.s, half)
            a = self._to_px((c - r * (hw - _CURB_WIDTH))[None])[0]
            b = self._to_px((c + r * hw)[None])[0]
            cv2.line(self.image, tuple(int(t) for t in a), tuple(int(t) for t in b), _SLAB_JOINT, 1,
                     cv2.LINE_AA, _SHIFT)

    def _paint_markings(self, run: _LaneRun) -> None:
        half = run.width / 2
        for side, sign in (("left", -1.0), ("right", 1.0)):
            marks = run.marks[side]
            edge = run.centre + run.right * (sign * half)[:, None]
            # Double markings list their parts left-to-right along the OpenDRIVE reference line for the
            # centre line (seen from lane +1 that is right-to-left), inside-to-outside elsewhere.
            flip = -1.0 if (side == "left" and run.lane_id == 1) else 1.0
            start = 0
            for i in range(1, len(marks) + 1):
                if i < len(marks) and marks[i] == marks[start]:
                    continue
                self._paint_marking(edge[start:i + 1], run.right[start:i + 1] * flip, run.s[start:i + 1],
                                    *marks[start])
                start = i

    def _paint_marking(self, edge, normal, s, mtype, mcolour) -> None:
        if len(s) < 2:
            return
        parts = _MARKING_PARTS.get(mtype)
        if mtype == _MT.Curb:
            self._fill(_strip(edge, normal, np.full(len(s), -_CURB_WIDTH / 2), np.full(len(s), _CURB_WIDTH / 2)),
                       PALETTE[Material.CURB], Material.CURB)
            return
        if parts is None:  # NONE, Grass, BottsDots, Other: nothing painted
            return
        material = Material.MARKING_YELLOW if mcolour == carla.LaneMarkingColor.Yellow else Material.MARKING_WHITE
        if len(parts) == 1:
            offsets = [(-_LINE_WIDTH / 2, _LINE_WIDTH / 2)]
        else:
            d = _DOUBLE_GAP / 2
            offsets = [(-d - _DOUBLE_LINE_WIDTH, -d), (d, d + _DOUBLE_LINE_WIDTH)]
        ones = np.ones(len(s))
        for solid, (oa, ob) in zip(parts, offsets):
            if solid:
                self._fill(_strip(edge, normal, oa * ones, ob * ones, extend=0.02), PALETTE[material], material)
                continue
            for a, b in _dash_pieces(s):
                pts = _interp_polyline(s, edge, a, b)
                nrm = _interp_polyline(s, normal, a, b)
                m = np.ones(len(pts))
                self._fill(_strip(pts, nrm, oa * m, ob * m), PALETTE[material], material)

    def _roadside_from(self, runs: list[_LaneRun]) -> None:
        """Outer edge of the outermost lane on each road side (non-junction roads)."""
        outer: dict[tuple[int, int], _LaneRun] = {}
        for run in runs:
            if run.junction:
                continue
            key = (run.road_id, 1 if run.lane_id > 0 else -1)
            if key not in outer or abs(run.lane_id) > abs(outer[key].lane_id):
                outer[key] = run
        pts, nrm = [], []
        for run in outer.values():
            pts.append(run.centre + run.right * (run.width / 2)[:, None])
            nrm.append(run.right)
        self.roadside = np.vstack(pts) if pts else np.zeros((0, 2))
        self.roadside_normal = np.vstack(nrm) if nrm else np.zeros((0, 2))

    # ------------------------------------------------------------------ cache
    def _save(self, path: Path) -> None:
        # Several processes may build the same town at once: each writes its own temporary files and
        # renames them into place (atomic), and meta.json goes last to mark a complete entry.
        path.mkdir(parents=True, exist_ok=True)
        tag = f"{os.getpid()}-{id(self)}"
        for name, array in (("image.png", self.image), ("material.png", self.material)):
            tmp = path / f".{name}.{tag}.png"
            if not cv2.imwrite(str(tmp), array, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                raise OSError(f"cv2 could not write {tmp}")
            os.replace(tmp, path / name)
        tmp = path / f".roadside.{tag}.npz"
        np.savez(tmp, roadside=self.roadside, roadside_normal=self.roadside_normal)
        os.replace(tmp, path / "roadside.npz")
        meta = {"resolution": self.resolution, "x0": self.x0, "y0": self.y0, "version": RASTER_VERSION}
        tmp = path / f".meta.{tag}.json"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, path / "meta.json")

    @classmethod
    def _load(cls, path: Path) -> Optional["TownRaster"]:
        try:
            meta = json.loads((path / "meta.json").read_text())
            image = cv2.imread(str(path / "image.png"), cv2.IMREAD_COLOR)
            material = cv2.imread(str(path / "material.png"), cv2.IMREAD_GRAYSCALE)
            side = np.load(path / "roadside.npz")
        except (OSError, ValueError):
            return None
        if image is None or material is None or image.shape[:2] != material.shape:
            return None
        return cls(image=image, material=material, resolution=float(meta["resolution"]), x0=float(meta["x0"]),
                   y0=float(meta["y0"]), roadside=side["roadside"], roadside_normal=side["roadside_normal"])


#: Bump when the elevation field's construction changes so cached fields are rebuilt.
ELEVATION_VERSION = 1


@dataclass
class ElevationField:
    """Height (m) of a town's ground on a coarse grid, from the OpenDRIVE road surface.

    Driving-lane centres and edges (``generate_waypoints``) are averaged per ``cell`` and the empty cells filled
    outward by push-pull (coarser and coarser normalised averages), so off-road ground follows the
    nearby roads. Where a road passes over another (bridges, overpasses: more than ``LEVEL_GAP`` m above
    the lowest road within ~``LEVEL_REACH`` m) its points go to a second layer, ``high``; elsewhere
    ``high`` equals ``low``. :meth:`profile` follows the layer continuous with where it starts.
    ``x0``/``y0`` are the world coordinates of cell (0, 0)'s centre; outside the grid the edge holds.
    """

    low: np.ndarray
    high: np.ndarray
    cell: float
    x0: float
    y0: float

    LEVEL_GAP = 3.0
    LEVEL_REACH = 7.0

    @property
    def flat(self) -> bool:
        """True when every road of the town lies at one height (Town01, Town02)."""
        return float(self.low.max() - self.low.min()) < 1e-3 and bool(np.array_equal(self.low, self.high))

    def _bilinear(self, grid: np.ndarray, x, y) -> np.ndarray:
        h, w = grid.shape
        u = np.clip((np.asarray(x, np.float64) - self.x0) / self.cell, 0.0, w - 1.0)
        v = np.clip((np.asarray(y, np.float64) - self.y0) / self.cell, 0.0, h - 1.0)
        i0 = np.minimum(u.astype(np.int64), w - 2) if w > 1 else np.zeros(u.shape, np.int64)
        j0 = np.minimum(v.astype(np.int64), h - 2) if h > 1 else np.zeros(v.shape, np.int64)
        fu, fv = u - i0, v - j0
        i1, j1 = np.minimum(i0 + 1, w - 1), np.minimum(j0 + 1, h - 1)
        top = grid[j0, i0] * (1 - fu) + grid[j0, i1] * fu
        bottom = grid[j1, i0] * (1 - fu) + grid[j1, i1] * fu
        return top * (1 - fv) + bottom * fv

    def height(self, x, y) -> np.ndarray:
        """Ground height of the lower layer at world xy (what scenery stands on)."""
        return self._bilinear(self.low, x, y)

    def upper(self, x, y) -> np.ndarray:
        """Height of the upper layer at world xy: the bridge where a road passes over another, else ``height``."""
        return self._bilinear(self.high, x, y)

    def profile(self, x, y, z_start: float) -> np.ndarray:
        """Heights along a path of points (x, y) that starts at height ``z_start``: where the two layers
        differ, each point takes the one nearer to the height of the point before it. Bilinear to 1/32 of
        a cell (one ``cv2.remap`` of both layers: this runs once per camera view)."""
        layers = self.__dict__.get("_layers")
        if layers is None:
            layers = self._layers = np.ascontiguousarray(np.dstack([self.low, self.high]), np.float32)
        mx = ((np.asarray(x, np.float64) - self.x0) / self.cell).astype(np.float32).reshape(1, -1)
        my = ((np.asarray(y, np.float64) - self.y0) / self.cell).astype(np.float32).reshape(1, -1)
        both = cv2.remap(layers, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0].astype(np.float64)
        lo, hi = both[:, 0], both[:, 1]
        split = np.nonzero(np.abs(hi - lo) > 0.5)[0]
        if len(split):
            z = lo
            for i in split.tolist():                     # a few points near bridges at most
                prev = z[i - 1] if i > 0 else z_start
                if abs(hi[i] - prev) < abs(lo[i] - prev):
                    z[i] = hi[i]
            return z
        return lo

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_map(cls, carla_map: carla.Map, cache_dir: Optional[os.PathLike] = None, use_cache: bool = True,
                 cell: float = 2.0, margin: float = 60.0) -> "ElevationField":
        """The field of ``carla_map`` (or the one cached on disk beside the rasters, keyed by its OpenDRIVE)."""
        xodr = carla_map.to_opendrive()
        key = hashlib.sha256(f"{ELEVATION_VERSION}|{cell:.3f}|{margin:.2f}|".encode() + xodr.encode())
        path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / \
            f"{carla_map.name.split('/')[-1]}-elevation-{key.hexdigest()[:16]}.npz"
        if use_cache:
            try:
                with np.load(path) as data:
                    return cls(data["low"], data["high"], float(data["cell"]), float(data["x0"]), float(data["y0"]))
            except (OSError, ValueError, KeyError):
                pass
        rows = []
        for wp in carla_map.generate_waypoints(cell / 2):
            loc, right, half = wp.transform.location, wp.transform.get_right_vector(), wp.lane_width / 2
            rows.append((loc.x, loc.y, loc.z, right.x * half, right.y * half))
        r = np.array(rows, np.float64).reshape(-1, 5)
        # lane centres and both lane edges, so the whole road surface has data (not the fill's guess)
        pts = np.concatenate([r[:, :3], r[:, :3] + np.column_stack([r[:, 3:5], np.zeros(len(r))]),
                              r[:, :3] - np.column_stack([r[:, 3:5], np.zeros(len(r))])])
        field_ = cls.from_points(pts, cell, margin)
        if use_cache:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.parent / f".{path.stem}.{os.getpid()}-{id(field_)}.npz"
                np.savez(tmp, low=field_.low, high=field_.high, cell=field_.cell, x0=field_.x0, y0=field_.y0)
                os.replace(tmp, path)
            except OSError as exc:
                logger.warning("could not cache the elevation field in %s: %s", path, exc)
        return field_

    @classmethod
    def from_points(cls, pts: np.ndarray, cell: float = 2.0, margin: float = 60.0) -> "ElevationField":
        """Field of road surface points ``pts`` (N,3), see the class docstring."""
        if not len(pts):
            return cls(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), cell, 0.0, 0.0)
        x0, y0 = pts[:, :2].min(axis=0) - margin
        w = int(np.ceil((pts[:, 0].max() + margin - x0) / cell)) + 1
        h = int(np.ceil((pts[:, 1].max() + margin - y0) / cell)) + 1
        i = np.clip(np.rint((pts[:, 0] - x0) / cell).astype(np.int64), 0, w - 1)
        j = np.clip(np.rint((pts[:, 1] - y0) / cell).astype(np.int64), 0, h - 1)
        z = pts[:, 2]
        # The lowest road near each point: a point well above it is on a bridge over that road.
        lowest = np.full((h, w), 1e6, np.float32)
        np.minimum.at(lowest, (j, i), z.astype(np.float32))
        k = 2 * int(round(cls.LEVEL_REACH / cell)) + 1
        lowest = cv2.erode(lowest, np.ones((k, k), np.uint8))
        upper = z > lowest[j, i] + cls.LEVEL_GAP
        low = _push_pull(*_splat(i[~upper], j[~upper], z[~upper], h, w))
        high = low.copy()
        if upper.any():
            total, count = _splat(i[upper], j[upper], z[upper], h, w)
            mean = np.where(count > 0, total / np.maximum(count, 1e-9), -1e6).astype(np.float32)
            grown = cv2.dilate(mean, np.ones((3, 3), np.uint8))  # a cell of margin for bilinear sampling
            high = np.where(count > 0, mean, np.where(grown > -1e5, grown, low)).astype(np.float32)
        return cls(low, high, float(cell), float(x0), float(y0))


def _splat(i, j, z, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    total = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.float64)
    np.add.at(total, (j, i), z)
    np.add.at(count, (j, i), 1.0)
    return total.astype(np.float32), count.astype(np.float32)


def _push_pull(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Fill a sparse grid of sums/counts: each cell's mean where it has data, blended (by how much data
    it has) with the same fill one level coarser elsewhere, so gaps get smooth nearby averages."""
    if not count.any():
        return np.zeros(total.shape, np.float32)
    levels = [(total, count)]
    while min(levels[-1][0].shape) > 3:
        t, c = levels[-1]
        levels.append((cv2.pyrDown(t), cv2.pyrDown(c)))
    t, c = levels[-1]
    overall = float(total.sum() / count.sum())
    z = np.where(c > 1e-6, t / np.maximum(c, 1e-6), overall).astype(np.float32)
    for t, c in reversed(levels[:-1]):
        up = cv2.pyrUp(z, dstsize=(t.shape[1], t.shape[0]))
        a = np.minimum(c, 1.0)
        z = (np.where(c > 1e-6, t / np.maximum(c, 1e-6), 0.0) * a + up * (1.0 - a)).astype(np.float32)
    return z


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/carla_embedded/rasters`` (default ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "carla_embedded" / "rasters"


def smooth_noise(h: int, w: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Value noise in [0, 1] with features ~``cell`` pixels across (float32, h x w)."""
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    grid = rng.random((gh, gw), dtype=np.float32)
    big = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[:h, :w], 0.0, 1.0)


def _ground_texture(h: int, w: int, resolution: float) -> np.ndarray:
    """Grass/dirt ground: large patches of dry and lush grass, computed coarse then upsampled."""
    rng = np.random.default_rng(12345)
    f = 4
    hs, ws = h // f + 2, w // f + 2
    cell = f * resolution
    t = np.clip(0.65 * smooth_noise(hs, ws, 18.0 / cell, rng) + 0.35 * smooth_noise(hs, ws, 2.5 / cell, rng), 0, 1)
    lush = np.array(PALETTE[Material.GROUND], np.float32)
    dry = np.array((70, 128, 128), np.float32)  # yellowish dirt/dry grass, BGR
    small = np.clip(lush + (dry - lush) * t[..., None], 0, 255).astype(np.uint8)
    return cv2.resize(small, (ws * f, hs * f), interpolation=cv2.INTER_LINEAR)[:h, :w].copy()


def _add_grain(image: np.ndarray, amplitude: int = 9) -> None:
    """Fine per-pixel grain over everything (asphalt, grass, paint wear), in place, row block by block."""
    rng = np.random.default_rng(54321)
    tile = rng.integers(-amplitude, amplitude + 1, size=(512, 512, 1), dtype=np.int16)
    h, w = image.shape[:2]
    reps = int(np.ceil(w / 512))
    row_tile = np.tile(tile, (1, reps, 1))[:, :w]
    for r0 in range(0, h, 512):
        r1 = min(h, r0 + 512)
        block = image[r0:r1].astype(np.int16)
        block += row_tile[: r1 - r0]
        np.clip(block, 0, 255, out=block)
        image[r0:r1] = block
