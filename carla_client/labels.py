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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datasets.schema import CLASSES

from .route import RoutePath

CURVE, STRAIGHT = CLASSES


@dataclass(frozen=True)
class LabelParams:
    """Label thresholds; stored in ``dataset.json`` under ``"label"``.

    Args:
        lookahead_m: L, metres of route ahead of the car that decide the label.
        curve_deg: theta_curve; delta_psi at or above it is ``curve``.
        straight_deg: theta_straight; delta_psi at or below it is ``straight``.
    """

    lookahead_m: float = 25.0
    curve_deg: float = 20.0
    straight_deg: float = 5.0

    def __post_init__(self):
        if not self.lookahead_m > 0:
            raise ValueError(f"lookahead_m must be > 0, got {self.lookahead_m}")
        if not 0 <= self.straight_deg < self.curve_deg:
            raise ValueError(f"need 0 <= straight_deg < curve_deg, got straight_deg={self.straight_deg}, "
                             f"curve_deg={self.curve_deg}")

    def to_json(self) -> dict:
        return {"lookahead_m": self.lookahead_m, "curve_deg": self.curve_deg, "straight_deg": self.straight_deg}


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
