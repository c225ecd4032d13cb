"""The road just beyond a label's lookahead, where a curve/straight classifier makes most of its mistakes.

A frame is labelled from the heading change over the next L metres of its route (``curve`` from
``curve_deg`` up, ``straight`` up to ``straight_deg``), but the camera sees further than L. A
straight frame whose route turns just past L shows the curve ahead, and a model must judge its
distance. That is where the models trained on the embedded simulator err (issue 14): run K, on
the 2200-frame Town02 sweep, got 2.7 % of the straight frames wrong whose road stays straight for
2L and 13.6 % of those whose road turns by ``curve_deg`` or more within 2L (48 of its 80 mistakes;
8 of the 11 in its worst preset, MidRainyNight). Its validation frames (other towns) show the same
gap, smaller: 1.2 % and 5.9 %.

Every dataset the collector writes keeps each episode's route (``routes/<episode>.json``: x, y and
yaw of every point the labels were computed from), so the heading change over 2L is known exactly
for every frame, old datasets included. A frame whose stored route does not reproduce its
recorded ``heading_change_deg`` (a route that passes the same place twice) is left unknown rather
than guessed.

For those frames :func:`road_ahead` also says how far past L the turn reaches ``curve_deg``: the
label's boundary in metres. Run L's 35 such mistakes on that sweep: 13 of the 45 frames whose turn
reaches it within 5 m past L are wrong (29 %), 9 of 85 at 5-10 m (11 %), 13 of 224 further on (6 %).
On the hood camera (2 m up, f = 400 px) a turn 25 m ahead and one 30 m ahead are 5 image rows
apart, one row of a 128-px input: near the boundary the label is finer than the picture.

Used by ``training.evaluate`` (the ``road ahead`` and ``turn past L`` groups of the robustness
report) and by ``training.train --horizon-weight`` (those straight frames weigh more in the loss).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from carla_client.labels import heading_change_deg
from carla_client.route import RoutePath
from datasets.dataset import FrameTable, read_info, read_manifest
from datasets.manifest import ROUTES_DIR
from datasets.schema import CLASSES, LabelParams

log = logging.getLogger(__name__)

HORIZON_FACTOR = 2.0
"""How far past the car the road is looked at, in lookaheads: 2L (50 m for CARLA's hood camera's 25 m)."""

MATCH_DEG = 1.0
"""The stored route must reproduce the frame's recorded heading change over L within this (deg)."""

MAX_OFF_ROUTE_M = 2.0

CLEAR = "straight, clear road"
TURN_AHEAD = "straight, turn beyond L"
CURVE = "curve"
UNKNOWN = "unknown (no route)"


def _route(root: Path, episode: str, cache: dict) -> RoutePath | None:
    key = (root, episode)
    if key not in cache:
        path = root / ROUTES_DIR / f"{episode}.json"
        try:
            data = json.loads(path.read_text())
            cols = data["columns"]
            pts = np.asarray(data["points"], np.float64)
            ix, iy, iyaw = cols.index("x"), cols.index("y"), cols.index("yaw_deg")
            cache[key] = RoutePath.from_points(pts[:, ix], pts[:, iy], pts[:, iyaw])
        except (OSError, ValueError, KeyError, IndexError):
            cache[key] = None
    return cache[key]


TURN_PAST_BANDS = ((0.0, 5.0, "< 5 m"), (5.0, 10.0, "5-10 m"), (10.0, np.inf, ">= 10 m"))
"""Bands of :func:`road_ahead`'s metres past L, as the robustness report's ``turn past L`` group names them."""


def first_reach_m(path: RoutePath, s0: float, start: float, end: float, deg: float) -> float | None:
    """Smallest arc length s in [start, end] where |psi(s) - psi(s0)| >= ``deg``, or None.

    psi is linear between route points (as in :func:`carla_client.labels.heading_change_deg`), so the
    crossing is found exactly: the first knot at or over ``deg``, then linear interpolation back.
    """
    knots = np.concatenate(([start], path.s[(path.s > start) & (path.s < end)], [end]))
    d = np.degrees(path.heading_at(knots) - path.heading_at(s0))
    hit = np.flatnonzero(np.abs(d) >= deg)
    if not len(hit):
        return None
    k = int(hit[0])
    if k == 0:
        return float(start)
    a, b = float(d[k - 1]), float(d[k])
    t = ((deg if b > 0 else -deg) - a) / (b - a)
    return float(knots[k - 1] + t * (knots[k] - knots[k - 1]))


def road_ahead_deg(table: FrameTable, factor: float = HORIZON_FACTOR) -> np.ndarray:
    """Per frame of ``table``: max |heading change| of its route over ``factor`` lookaheads ahead, deg
    (up to the route's end when it ends sooner); NaN where the route is not stored or does not
    reproduce the frame's label evidence."""
    return road_ahead(table, factor)[0]


def road_ahead(table: FrameTable, factor: float = HORIZON_FACTOR) -> tuple[np.ndarray, np.ndarray]:
    """Per frame of ``table``: (:func:`road_ahead_deg`'s degrees, metres past the lookahead L at which the
    route's heading change first reaches the dataset's ``curve_deg``). The metres are NaN unless the
    change stays under ``curve_deg`` over L and reaches it within ``factor`` L: a straight frame whose
    road turns just beyond its label's horizon, and how far beyond."""
    out = np.full(len(table), np.nan)
    past = np.full(len(table), np.nan)
    curve_deg = curve_thresholds(table)
    routes: dict = {}
    for s, root in enumerate(table.roots):
        idx = np.flatnonzero(table.source == s)
        if not len(idx):
            continue
        root = Path(root)
        if not (root / ROUTES_DIR).is_dir():
            continue
        rows = read_manifest(root, strict=False)
        for i in idx:
            r = rows[int(table.row[i])]
            path = _route(root, r["episode"], routes)
            if path is None:
                continue
            try:
                x, y, lookahead = float(r["x"]), float(r["y"]), float(r["lookahead_m"])
                recorded = float(r["heading_change_deg"])
            except (KeyError, ValueError):
                continue
            s0, _, off = path.project(x, y, window=None)
            if off > MAX_OFF_ROUTE_M or s0 + lookahead > path.length + 1e-6:
                continue
            near = heading_change_deg(path, s0, lookahead)
            if abs(near - recorded) > MATCH_DEG:
                continue
            far = min(factor * lookahead, path.length - s0)
            out[i] = heading_change_deg(path, s0, far)
            if near < curve_deg[i] <= out[i]:
                reach = first_reach_m(path, s0, s0 + lookahead, s0 + far, curve_deg[i])
                if reach is not None:
                    past[i] = reach - (s0 + lookahead)
    return out, past


def turn_past_bands(past_m: np.ndarray) -> np.ndarray:
    """Per frame: the :data:`TURN_PAST_BANDS` name of its metres past L, '' where there is none."""
    out = np.full(len(past_m), "", dtype=object)
    for lo, hi, name in TURN_PAST_BANDS:
        out[(past_m >= lo) & (past_m < hi)] = name
    return out


def curve_thresholds(table: FrameTable) -> np.ndarray:
    """Per frame: its dataset's ``curve_deg`` (``dataset.json``, else the default label definition)."""
    out = np.empty(len(table), dtype=np.float64)
    for s, root in enumerate(table.roots):
        out[table.source == s] = LabelParams.from_json(read_info(root).get("label") or {}).curve_deg
    return out


def road_ahead_groups(table: FrameTable, ahead_deg: np.ndarray | None = None) -> np.ndarray:
    """Per frame: :data:`CURVE`, :data:`CLEAR`, :data:`TURN_AHEAD` or :data:`UNKNOWN` (see the module docstring)."""
    ahead = road_ahead_deg(table) if ahead_deg is None else ahead_deg
    out = np.full(len(table), UNKNOWN, dtype=object)
    straight = table.label == CLASSES.index("straight")
    known = ~np.isnan(ahead)
    turn = known & (ahead >= curve_thresholds(table))
    out[~straight] = CURVE
    out[straight & known & ~turn] = CLEAR
    out[straight & turn] = TURN_AHEAD
    return out


def horizon_weights(table: FrameTable, weight: float) -> np.ndarray:
    """Loss weight per frame: ``weight`` for straight frames whose road turns within 2L, else 1."""
    w = np.ones(len(table), np.float32)
    if weight == 1.0 or not len(table):
        return w
    groups = road_ahead_groups(table)
    w[groups == TURN_AHEAD] = weight
    unknown = int((groups == UNKNOWN).sum())
    if unknown == int((table.label == CLASSES.index("straight")).sum()):
        log.warning("--horizon-weight %g has no effect: no straight training frame has a usable stored route "
                    "(routes/<episode>.json, written by carla_client.collect)", weight)
    log.info("--horizon-weight %g: %d of %d training frames are straights with a turn within 2L; "
             "%d frames have no usable stored route (weight 1)", weight, int((groups == TURN_AHEAD).sum()),
             len(table), unknown)
    return w
