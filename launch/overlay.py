"""The HUD: drawn with cv2 straight onto the camera frame, so the window and the video show the same pixels.

:class:`Overlay` precomputes everything that does not change (panel geometry, font scale, the town
raster with the route for the minimap); :meth:`Overlay.draw` then costs a few cv2 calls per frame
(about 1-2 ms at 800x600). pygame only displays the result (:mod:`launch.display`).

Layout (scaled with the frame height; designed at 800x600): a translucent panel on the left with the
prediction, ground truth, gate and expert, speed, control bars, rates and latency; a minimap around
the car in the bottom-right corner; town / weather / simulation time along the bottom.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from datasets.schema import CLASSES
from datasets.preprocess import FULL_FRAME, band_rows

CURVE, STRAIGHT = CLASSES

# BGR colours, chosen to be readable on the dark panel and told apart by colour-blind viewers (blue/orange).
COLORS: dict[str, tuple[int, int, int]] = {
    CURVE: (0, 140, 255),      # orange
    STRAIGHT: (255, 160, 40),  # blue
    "ok": (80, 220, 80),
    "bad": (60, 60, 240),
    "text": (240, 240, 240),
    "dim": (160, 160, 160),
    "bar_bg": (70, 70, 70),
    "route": (255, 80, 255),   # magenta: not confused with yellow centre lines
    "car": (40, 40, 255),
    "throttle": (80, 200, 80),
    "brake": (60, 60, 220),
    "steer": (230, 230, 230),
}
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class HudState:
    """Everything the HUD shows for one tick. ``None`` fields are drawn as ``--``."""
    pred_label: str | None = None
    p_curve: float | None = None
    truth: str | None = None
    gate: str = ""
    weights: dict[str, float] = field(default_factory=dict)
    in_charge: str | None = None
    fallback: bool = False
    speed_kmh: float = 0.0
    steer: float = 0.0
    throttle: float = 0.0
    brake: float = 0.0
    sim_fps: float = float("nan")
    client_fps: float = float("nan")
    infer_p50_ms: float = float("nan")
    infer_p99_ms: float = float("nan")
    town: str = ""
    weather: str = ""
    sim_time: float = 0.0
    x: float | None = None
    y: float | None = None
    yaw: float = 0.0
    recording: bool = False
    paused: bool = False
    infractions: dict[str, int] = field(default_factory=dict)  # kind -> count (carla_client.infractions)
    penalty: float = 1.0   # the Leaderboard's product of penalty factors so far
    red_light_hold: bool = False   # the traffic-light rule holds the car at a red light


def _fmt(v: float | None, spec: str, none: str = "--") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


class Minimap:
    """A crop of the town raster around the car, north-up, with the route and a trail of gate decisions.

    Args:
        image: the town raster, HxWx3 BGR (e.g. ``carla_embedded.raster.TownRaster(...).image``).
        world_to_pixel: maps world (x, y) arrays in m to raster (u, v) pixel arrays.
        route_xy: Nx2 route points in world metres (drawn once into the raster).
        size: side of the square minimap, px.
    """

    def __init__(self, image: np.ndarray, world_to_pixel: Callable, route_xy: np.ndarray | None = None,
                 size: int = 160) -> None:
        self.size = int(size)
        self._w2p = world_to_pixel
        self._pad = self.size // 2 + 2
        self.canvas = cv2.copyMakeBorder(np.ascontiguousarray(image[..., :3]), self._pad, self._pad, self._pad,
                                         self._pad, cv2.BORDER_CONSTANT, value=(30, 30, 30))
        self._last: tuple[int, int] | None = None
        if route_xy is not None and len(route_xy) > 1:
            pts = self.to_canvas(np.asarray(route_xy, dtype=np.float64)).reshape(-1, 1, 2)
            cv2.polylines(self.canvas, [pts], False, COLORS["route"], 2, cv2.LINE_AA)

    @classmethod
    def from_map(cls, carla_map, route_xy: np.ndarray | None = None, resolution: float = 0.5,
                 size: int = 160) -> "Minimap":
        """Rasterise ``carla_map`` once with ``carla_embedded.raster.TownRaster`` (works on any carla.Map)."""
        from carla_embedded.raster import TownRaster
        raster = TownRaster.from_map(carla_map, resolution)
        return cls(raster.image, raster.world_to_pixel, route_xy, size)

    def to_canvas(self, xy: np.ndarray) -> np.ndarray:
        """World metres (N, 2) -> integer canvas pixels (N, 2)."""
        xy = np.atleast_2d(np.asarray(xy, dtype=np.float64))
        u, v = self._w2p(xy[:, 0], xy[:, 1])
        return np.stack([np.asarray(u), np.asarray(v)], axis=-1).round().astype(np.int32) + self._pad

    def mark(self, x: float, y: float, color: tuple[int, int, int]) -> None:
        """Extend the trail to (x, y) in ``color`` (kept in the raster: costs one short line per tick)."""
        p = tuple(int(c) for c in self.to_canvas(np.array([[x, y]]))[0])
        if self._last is not None:
            cv2.line(self.canvas, self._last, p, color, 2, cv2.LINE_AA)
        self._last = p

    def render(self, x: float, y: float, yaw_deg: float) -> np.ndarray:
        """The size x size BGR crop centred on the car with the car drawn as an arrow."""
        u, v = self.to_canvas(np.array([[x, y]]))[0]
        h, w = self.canvas.shape[:2]
        half = self.size // 2
        u = int(np.clip(u, half, w - half - 1))
        v = int(np.clip(v, half, h - half - 1))
        crop = self.canvas[v - half:v - half + self.size, u - half:u - half + self.size].copy()
        # Heading in pixels: probe one metre ahead in world coordinates (independent of the raster's axes).
        yaw = math.radians(yaw_deg)
        ahead = self.to_canvas(np.array([[x, y], [x + math.cos(yaw), y + math.sin(yaw)]]))
        d = (ahead[1] - ahead[0]).astype(np.float64)
        d /= max(np.linalg.norm(d), 1e-9)
        n = np.array([-d[1], d[0]])
        c = np.array([half, half], dtype=np.float64)
        s = max(5.0, self.size / 20)
        tri = np.stack([c + d * 1.6 * s, c - d * s + n * s, c - d * s - n * s]).round().astype(np.int32)
        cv2.fillConvexPoly(crop, tri, COLORS["car"], cv2.LINE_AA)
        cv2.rectangle(crop, (0, 0), (self.size - 1, self.size - 1), COLORS["dim"], 1)
        return crop


class Overlay:
    """Draws :class:`HudState` onto frames of one size.

    Args:
        size: frame (width, height), px.
        minimap: optional :class:`Minimap`; its size is rescaled to the frame height.
        crop_rows: the classifier's band of rows (``ModelMeta.crop_rows``); when it is not the whole
            frame its edges are drawn as dotted lines, so the viewer sees what the model sees.
    """

    def __init__(self, size: tuple[int, int], minimap: Minimap | None = None,
                 crop_rows: tuple[float, float] | None = None) -> None:
        self.width, self.height = int(size[0]), int(size[1])
        self.band_rows = None
        if crop_rows is not None and tuple(crop_rows) != FULL_FRAME:
            self.band_rows = band_rows(self.height, crop_rows)
        self.scale = self.height / 600.0
        self.minimap = minimap
        self.panel_w = max(60, int(230 * self.scale))
        self.line_h = max(8, int(22 * self.scale))
        self.font_scale = 0.5 * self.scale
        self.thick = 1
        self.margin = max(2, int(8 * self.scale))
        self.panel_h = min(self.height, self.margin * 2 + self.line_h * 16)

    def _text(self, img, text, row, x_off=0, color="text"):
        y = self.margin + self.line_h * (row + 1) - int(self.line_h * 0.3)
        cv2.putText(img, text, (self.margin + x_off, y), FONT, self.font_scale, COLORS[color] if isinstance(color, str)
                    else color, self.thick, cv2.LINE_AA)

    def _bar(self, img, row, value, lo, hi, color, centred=False, x_off=None, width=None):
        x0 = self.margin + (int(self.panel_w * 0.38) if x_off is None else x_off)
        w = (self.panel_w - x0 - self.margin) if width is None else width
        y0 = self.margin + self.line_h * row + int(self.line_h * 0.25)
        h = max(2, int(self.line_h * 0.55))
        cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), COLORS["bar_bg"], -1)
        v = float(np.clip(value if math.isfinite(value) else 0.0, lo, hi))
        if centred:
            mid = x0 + w // 2
            end = int(mid + (v / max(abs(lo), abs(hi))) * w / 2)
            if end != mid:
                cv2.rectangle(img, (min(mid, end), y0), (max(mid, end), y0 + h), color, -1)
            cv2.line(img, (mid, y0 - 1), (mid, y0 + h + 1), COLORS["dim"], 1)
        else:
            end = int(x0 + (v - lo) / (hi - lo) * w)
            if end > x0:
                cv2.rectangle(img, (x0, y0), (end, y0 + h), color, -1)

    def draw(self, frame: np.ndarray, s: HudState, show_hud: bool = True) -> np.ndarray:
        """Draw ``s`` onto ``frame`` (HxWx3 BGR uint8, modified in place) and return it."""
        if not show_hud:
            if s.recording:
                self._rec_dot(frame)
            return frame
        if self.band_rows is not None:
            self._band_edges(frame)
        roi = frame[:self.panel_h, :self.panel_w]
        cv2.convertScaleAbs(roi, roi, alpha=0.35)  # darken in place: the translucent panel
        # prediction
        pred_col = COLORS.get(s.pred_label or "", COLORS["dim"])
        self._text(frame, f"pred  {s.pred_label or '--'}", 0, color=pred_col)
        self._text(frame, "p(curve)", 1, color="dim")
        self._bar(frame, 1, s.p_curve if s.p_curve is not None else float("nan"), 0.0, 1.0, COLORS[CURVE])
        # ground truth + right/wrong
        truth = s.truth or "--"
        self._text(frame, f"truth {truth}", 2, color=COLORS.get(truth, COLORS["dim"]))
        if s.truth in CLASSES and s.pred_label in CLASSES:
            ok = s.truth == s.pred_label
            self._text(frame, "OK" if ok else "WRONG", 2, x_off=int(self.panel_w * 0.68), color="ok" if ok else "bad")
        # gate and experts
        self._text(frame, f"gate  {s.gate}" + ("  FALLBACK" if s.fallback else ""), 3,
                   color="bad" if s.fallback else "text")
        self._text(frame, f"expert {s.in_charge or '--'}", 4, color=COLORS.get(s.in_charge or "", COLORS["text"]))
        for i, name in enumerate(CLASSES):
            self._text(frame, f"w {name}", 5 + i, color="dim")
            self._bar(frame, 5 + i, s.weights.get(name, 0.0), 0.0, 1.0, COLORS[name])
        # vehicle
        self._text(frame, f"speed {s.speed_kmh:5.1f} km/h", 7)
        self._text(frame, "steer", 8, color="dim")
        self._bar(frame, 8, s.steer, -1.0, 1.0, COLORS["steer"], centred=True)
        self._text(frame, "throttle", 9, color="dim")
        self._bar(frame, 9, s.throttle, 0.0, 1.0, COLORS["throttle"])
        self._text(frame, "brake", 10, color="dim")
        self._bar(frame, 10, s.brake, 0.0, 1.0, COLORS["brake"])
        # rates and latency
        self._text(frame, f"sim {_fmt(s.sim_fps, '.0f')} fps  client {_fmt(s.client_fps, '.0f')} fps", 11)
        self._text(frame, f"infer p50 {_fmt(s.infer_p50_ms, '.1f')} p99 {_fmt(s.infer_p99_ms, '.1f')} ms", 12)
        self._text(frame, f"{s.town}  {s.weather}", 13, color="dim")
        self._text(frame, f"t {s.sim_time:7.2f} s" + ("  PAUSED" if s.paused else ""), 14, color="dim")
        collisions = sum(v for k, v in s.infractions.items() if k.startswith("collision"))
        red = s.infractions.get("red_light", 0)
        self._text(frame, f"collisions {collisions}  red lights {red}  x{s.penalty:.2f}"
                   + ("  HOLD: red light" if s.red_light_hold else ""), 15,
                   color="bad" if collisions or red else "brake" if s.red_light_hold else "dim")
        if self.minimap is not None and s.x is not None and s.y is not None:
            mm = self.minimap.render(s.x, s.y, s.yaw)
            side = min(int(mm.shape[0] * self.scale), self.height - 2 * self.margin, self.width // 3)
            if side >= 16:
                if side != mm.shape[0]:
                    mm = cv2.resize(mm, (side, side), interpolation=cv2.INTER_AREA)
                y0, x0 = self.height - side - self.margin, self.width - side - self.margin
                frame[y0:y0 + side, x0:x0 + side] = mm
        if s.recording:
            self._rec_dot(frame)
        return frame

    def _band_edges(self, frame: np.ndarray) -> None:
        """Dotted lines (8 px on, 8 off) at the top and bottom of the classifier's band of rows."""
        cols = np.arange(self.panel_w, self.width)
        cols = cols[(cols - self.panel_w) % 16 < 8]
        for row in self.band_rows:
            frame[min(max(row, 0), self.height - 1), cols] = COLORS["dim"]

    def _rec_dot(self, frame: np.ndarray) -> None:
        r = max(3, int(8 * self.scale))
        c = (self.width - self.margin - r, self.margin + r)
        cv2.circle(frame, c, r, COLORS["bad"], -1, cv2.LINE_AA)


def bgra_to_bgr(raw: np.ndarray) -> np.ndarray:
    """Drop the alpha of a CARLA BGRA frame into a new contiguous BGR array (the HUD draws on the copy,
    so the classifier always sees the clean frame)."""
    return cv2.cvtColor(raw, cv2.COLOR_BGRA2BGR)


def image_to_array(image) -> np.ndarray:
    """A ``carla.Image`` -> HxWx4 BGRA uint8 view of its ``raw_data`` (no copy)."""
    return np.frombuffer(image.raw_data, dtype=np.uint8).reshape(image.height, image.width, 4)


def route_to_xy(route: Sequence) -> np.ndarray:
    """``[(waypoint, option)]`` or ``[waypoint]`` -> Nx2 world (x, y), m."""
    pts = []
    for item in route:
        wp = item[0] if isinstance(item, tuple) else item
        loc = wp.transform.location
        pts.append((loc.x, loc.y))
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)
