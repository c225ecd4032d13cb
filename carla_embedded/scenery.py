"""Roadside 3D objects (buildings, trees, street lamps), placed deterministically from a seed.

Objects stand on free ground next to the roads of a :class:`~carla_embedded.raster.TownRaster`, never on
road, shoulder or sidewalk surface, and never overlap each other. Heights are relative to the ground
plane the renderer uses (the road height under the camera), see ``render.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .raster import Material, TownRaster

KIND_BUILDING = 0
KIND_TRUNK = 1
KIND_POLE = 2
KIND_LAMP_HEAD = 3

_BUILDING_COLOURS = np.array([  # BGR facades: plaster, brick, concrete, painted wood
    (170, 185, 200), (70, 85, 140), (140, 140, 140), (120, 150, 175), (185, 190, 180), (90, 110, 160),
    (150, 165, 150), (110, 120, 125), (190, 200, 210), (95, 125, 150)], dtype=np.float32)
_ROOF_COLOURS = np.array([(60, 60, 110), (70, 70, 70), (50, 65, 95), (90, 90, 95)], dtype=np.float32)
_TRUNK = (40, 60, 80)
_POLE = (90, 95, 100)
_CROWNS = np.array([(45, 105, 60), (40, 90, 50), (55, 120, 80), (35, 80, 55)], dtype=np.float32)

# Corner order of a box: bottom 0-3 counter-clockwise seen from above in (local x, local y), top 4-7.
_UNIT_CORNERS = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0],
                          [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)
#: Visible-candidate faces of a box (the bottom is never seen): corner indices and local outward normals.
BOX_FACES = np.array([[0, 1, 5, 4], [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7], [4, 5, 6, 7]])
_FACE_NORMALS = np.array([[0, -1, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=np.float64)


@dataclass
class Scenery:
    """All objects of a town, as flat arrays so the renderer can cull and project them at once.

    Boxes (buildings, trunks, poles, lamp heads): ``box_corners`` (N,8,3) world corners with z relative
    to the ground, ``box_normals`` (N,5,3) outward normals of the faces in :data:`BOX_FACES`,
    ``box_colour`` (N,5,3) BGR albedo per face, ``box_kind`` (N,), ``box_centre`` (N,3).
    Spheres (tree crowns): ``sphere_centre`` (M,3), ``sphere_radius`` (M,), ``sphere_colour`` (M,3).
    Cones (conifers): ``cone_base`` (K,3), ``cone_radius``, ``cone_height``, ``cone_colour``.
    Lamps: ``lamp_pos`` (L,3), the emissive heads lit at night.
    """

    box_corners: np.ndarray
    box_normals: np.ndarray
    box_colour: np.ndarray
    box_kind: np.ndarray
    box_centre: np.ndarray
    sphere_centre: np.ndarray
    sphere_radius: np.ndarray
    sphere_colour: np.ndarray
    cone_base: np.ndarray
    cone_radius: np.ndarray
    cone_height: np.ndarray
    cone_colour: np.ndarray
    lamp_pos: np.ndarray

    def __post_init__(self):
        # Derived once so the renderer's per-frame work is only the camera-dependent part.
        self.box_face_centre = self.box_corners[:, BOX_FACES].mean(axis=2) if len(self.box_corners) else np.zeros((0, 5, 3))
        self.box_radius = (np.linalg.norm(self.box_corners[:, 0] - self.box_corners[:, 6], axis=1) / 2
                           if len(self.box_corners) else np.zeros(0))

    @property
    def num_objects(self) -> int:
        return len(self.box_kind) + len(self.sphere_radius) + len(self.cone_radius)


class _Builder:
    """Accumulates objects and an occupancy grid so nothing overlaps roads or other objects."""

    CELL = 0.5  # occupancy metres per cell

    def __init__(self, raster: TownRaster, rng: np.random.Generator):
        self.raster = raster
        self.rng = rng
        f = max(1, int(round(self.CELL / raster.resolution)))
        blocked = (raster.material != Material.GROUND).astype(np.uint8) * 255
        h, w = blocked.shape
        blocked = cv2.resize(blocked[: h - h % f, : w - w % f], (w // f, h // f), interpolation=cv2.INTER_AREA)
        self.scale = raster.resolution * f
        self.occ = (blocked > 0).astype(np.uint8)
        # keep a little verge free next to every paved surface
        self.occ = cv2.dilate(self.occ, np.ones((3, 3), np.uint8))
        self.boxes: list[tuple] = []
        self.spheres: list[tuple] = []
        self.cones: list[tuple] = []
        self.lamps: list[tuple] = []

    def _footprint(self, cx, cy, hx, hy, yaw) -> np.ndarray:
        c, s = np.cos(yaw), np.sin(yaw)
        local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        world = np.stack([cx + local[:, 0] * c - local[:, 1] * s, cy + local[:, 0] * s + local[:, 1] * c], 1)
        u = (world[:, 0] - self.raster.x0) / self.scale
        v = (world[:, 1] - self.raster.y0) / self.scale
        return np.round(np.stack([u, v], 1) * 8).astype(np.int32)

    def try_claim(self, cx, cy, hx, hy, yaw, pad=0.3) -> bool:
        """Claim a rotated rectangle on free ground; False if it touches anything."""
        poly = self._footprint(cx, cy, hx + pad, hy + pad, yaw)
        x0, y0 = np.floor(poly.min(0) / 8).astype(int) - 1
        x1, y1 = np.ceil(poly.max(0) / 8).astype(int) + 2
        h, w = self.occ.shape
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            return False
        patch = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(patch, poly - np.array([x0, y0]) * 8, 1, cv2.LINE_8, 3)
        if np.any(patch & self.occ[y0:y1, x0:x1]):
            return False
        self.occ[y0:y1, x0:x1] |= patch
        return True

    def add_box(self, cx, cy, hx, hy, height, yaw, colour, roof, kind, z0=0.0) -> None:
        self.boxes.append((cx, cy, hx, hy, height, yaw, tuple(colour), tuple(roof), kind, z0))

    def building(self, px, py, nx, ny, gap) -> None:
        """Building whose front face stands ``gap`` metres behind (px, py) along the normal (nx, ny)."""
        rng = self.rng
        hx, hy = rng.uniform(4.0, 9.0), rng.uniform(4.0, 9.0)  # half depth (along normal), half frontage
        height = float(rng.uniform(4.0, 9.0) if rng.random() < 0.6 else rng.uniform(9.0, 26.0))
        cx, cy = px + nx * (gap + hx), py + ny * (gap + hx)
        yaw = float(np.arctan2(ny, nx))
        if self.try_claim(cx, cy, hx, hy, yaw, pad=0.5):
            colour = _BUILDING_COLOURS[rng.integers(len(_BUILDING_COLOURS))] * rng.uniform(0.85, 1.1)
            roof = _ROOF_COLOURS[rng.integers(len(_ROOF_COLOURS))]
            self.add_box(cx, cy, hx, hy, height, yaw, np.clip(colour, 0, 255), roof, KIND_BUILDING, z0=-1.0)

    def tree(self, cx, cy) -> None:
        rng = self.rng
        r = rng.uniform(1.4, 3.0)
        if not self.try_claim(cx, cy, r * 0.6, r * 0.6, 0.0, pad=0.2):
            return
        colour = _CROWNS[rng.integers(len(_CROWNS))] * rng.uniform(0.85, 1.15)
        trunk_h = rng.uniform(1.8, 3.0)
        self.add_box(cx, cy, 0.15, 0.15, trunk_h + r * 0.5, 0.0, _TRUNK, _TRUNK, KIND_TRUNK)
        if rng.random() < 0.35:  # conifer
            self.cones.append((cx, cy, trunk_h * 0.6, r * 0.9, r * 3.2, tuple(np.clip(colour * 0.8, 0, 255))))
        else:
            self.spheres.append((cx, cy, trunk_h + r * 0.8, r, tuple(np.clip(colour, 0, 255))))

    def lamp(self, x, y, nx, ny) -> None:
        """Street lamp at (x, y) with its arm reaching over the road along -normal."""
        yaw = np.arctan2(ny, nx)
        self.add_box(x, y, 0.09, 0.09, 6.5, yaw, _POLE, _POLE, KIND_POLE)
        hx, hy = x - nx * 0.9, y - ny * 0.9
        self.add_box(hx, hy, 0.9, 0.12, 0.18, yaw, _POLE, _POLE, KIND_LAMP_HEAD, z0=6.35)
        self.lamps.append((x - nx * 1.6, y - ny * 1.6, 6.3))

    def finish(self) -> Scenery:
        boxes = self.boxes
        n = len(boxes)
        corners = np.zeros((n, 8, 3))
        normals = np.zeros((n, 5, 3))
        colours = np.zeros((n, 5, 3), np.float32)
        kinds = np.zeros(n, np.int8)
        for i, (cx, cy, hx, hy, height, yaw, colour, roof, kind, z0) in enumerate(boxes):
            c, s = np.cos(yaw), np.sin(yaw)
            lx = _UNIT_CORNERS[:, 0] * hx
            ly = _UNIT_CORNERS[:, 1] * hy
            corners[i, :, 0] = cx + lx * c - ly * s
            corners[i, :, 1] = cy + lx * s + ly * c
            corners[i, :, 2] = z0 + _UNIT_CORNERS[:, 2] * (height if kind != KIND_LAMP_HEAD else 0.18)
            if kind == KIND_BUILDING:
                corners[i, :4, 2] = z0
                corners[i, 4:, 2] = height
            nl = _FACE_NORMALS
            normals[i, :, 0] = nl[:, 0] * c - nl[:, 1] * s
            normals[i, :, 1] = nl[:, 0] * s + nl[:, 1] * c
            normals[i, :, 2] = nl[:, 2]
            colours[i, :4] = colour
            colours[i, 4] = roof
            kinds[i] = kind
        sph = np.array([b[:4] for b in self.spheres], np.float64).reshape(-1, 4)
        cones = np.array([b[:5] for b in self.cones], np.float64).reshape(-1, 5)
        return Scenery(
            box_corners=corners, box_normals=normals, box_colour=colours, box_kind=kinds,
            box_centre=corners.mean(axis=1) if n else np.zeros((0, 3)),
            sphere_centre=sph[:, :3], sphere_radius=sph[:, 3],
            sphere_colour=np.array([b[4] for b in self.spheres], np.float32).reshape(-1, 3),
            cone_base=cones[:, :3], cone_radius=cones[:, 3], cone_height=cones[:, 4],
            cone_colour=np.array([b[5] for b in self.cones], np.float32).reshape(-1, 3),
            lamp_pos=np.array(self.lamps, np.float64).reshape(-1, 3))


def generate_scenery(raster: TownRaster, seed: int = 0, lamp_spacing: float = 30.0) -> Scenery:
    """Place buildings, trees and street lamps along the roads of ``raster``; same seed, same town."""
    rng = np.random.default_rng(seed)
    b = _Builder(raster, rng)
    pts, nrm = raster.roadside, raster.roadside_normal
    # Lamps first (they sit on the sidewalk edge, the only objects allowed on paved ground).
    next_lamp = rng.uniform(0, lamp_spacing)
    travelled = 0.0
    for i in range(len(pts)):
        step = 0.0 if i == 0 else float(np.hypot(*(pts[i] - pts[i - 1])))
        travelled = 0.0 if step > 3.0 else travelled + step  # a jump means a new road side
        if travelled >= next_lamp:
            x, y = pts[i] - nrm[i] * 0.4
            b.lamp(x, y, nrm[i][0], nrm[i][1])
            next_lamp = travelled + lamp_spacing * rng.uniform(0.8, 1.2)
        elif step > 3.0:
            next_lamp = rng.uniform(0, lamp_spacing)
    # Buildings and trees along every road side, then scattered further back for depth.
    order = rng.permutation(len(pts))[: max(1, len(pts) // 3)]
    for i in order:
        p, n = pts[i], nrm[i]
        r = rng.random()
        if r < 0.45:
            b.building(p[0], p[1], n[0], n[1], gap=rng.uniform(1.5, 6.0))
        elif r < 0.85:
            c = p + n * rng.uniform(2.0, 5.0)
            b.tree(c[0], c[1])
    x_min, y_min, x_max, y_max = raster.bounds
    area = (x_max - x_min) * (y_max - y_min)
    for _ in range(int(area / 500.0)):
        x, y = rng.uniform(x_min, x_max), rng.uniform(y_min, y_max)
        if rng.random() < 0.3:
            a = rng.uniform(0, 2 * np.pi)
            b.building(x, y, np.cos(a), np.sin(a), gap=0.0)
        else:
            b.tree(x, y)
    return b.finish()
