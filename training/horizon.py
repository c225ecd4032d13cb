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

Used by ``training.evaluate`` (the ``road ahead`` group of the robustness report) and by
``training.train --horizon-weight`` (those straight frames weigh more in the loss).
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


def road_ahead_deg(table: FrameTable, factor: float = HORIZON_FACTOR) -> np.ndarray:
    """Per frame of ``table``: max |heading change| of its route over ``factor`` lookaheads ahead, deg
    (up to the route's end when it ends sooner); NaN where the route is not stored or does not
    reproduce the frame's label evidence."""
    out = np.full(len(table), np.nan)
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
            if abs(heading_change_deg(path, s0, lookahead) - recorded) > MATCH_DEG:
                continue
            far = min(factor * lookahead, path.length - s0)
            out[i] = heading_change_deg(path, s0, far)
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
