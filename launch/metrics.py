"""Per-tick records of a drive and the episode metrics computed from them.

The loop appends one :class:`TickRecord` per tick; :func:`episode_metrics` turns a list of them into
the numbers of the drive's ``--metrics`` file and of the evaluation report. Pure functions of the
records, so they are tested on synthetic drives.

Driving score (Leaderboard style): ``route_completion x product(coefficient ** count)``.
Penalty table: :data:`LEADERBOARD_1_0`, the CARLA Leaderboard 1.0 coefficients. Of its infractions
only two can occur on our empty-town routes, and they are handled as the Leaderboard does:

* off-road driving: the route distance covered while off the drivable lanes does not count towards
  route completion (Leaderboard 1.0 rule);
* collision with the static layout (0.65): each off-road *event* (leaving the driving lanes) is
  counted as one, because the embedded simulator has no collision meshes and in a CARLA town the
  space beside the driving lanes is curb, sidewalk, poles and buildings. This mapping is ours and is
  switchable (``off_road_as_layout_collision``).

Lane invasions are not a Leaderboard infraction; they are reported per km (BehaviorMetrics style)
and left out of the score. Collisions with vehicles/pedestrians and red-light/stop infractions cannot
happen without traffic; their coefficients are listed for completeness.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from datasets.schema import CLASSES


@dataclass(frozen=True)
class PenaltyTable:
    """Multiplicative penalty per infraction (Leaderboard convention: score *= coefficient per event)."""
    name: str = "CARLA Leaderboard 1.0"
    collision_pedestrian: float = 0.50
    collision_vehicle: float = 0.60
    collision_layout: float = 0.65
    red_light: float = 0.70
    stop_sign: float = 0.80
    off_road_as_layout_collision: bool = True

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if isinstance(v, float) and not 0.0 <= v <= 1.0:
                raise ValueError(f"penalty coefficient {k}={v} must be in [0, 1]")


LEADERBOARD_1_0 = PenaltyTable()


@dataclass
class TickRecord:
    """What happened on one tick. Positions in CARLA world metres, speeds in km/h.

    ``progress_m`` is the arc length of the car's projection onto the planned route,
    ``route_dist_m`` its distance to the route (lane centre line), ``truth`` the map label
    (``curve``/``straight``/None when ambiguous), ``expert`` the expert in charge.
    """
    frame: int
    t: float
    x: float
    y: float
    yaw: float
    speed_kmh: float
    steer: float
    throttle: float
    brake: float
    progress_m: float
    route_dist_m: float
    on_road: bool
    lane_invasions: int
    truth: str | None
    pred: str | None
    p_curve: float | None
    expert: str
    w_curve: float
    fallback: bool
    gate: str
    infer_ms: float | None = None
    red_light_hold: bool = False     # the traffic-light rule held the car (control.traffic_rules)


def _per_km(count: float, km: float) -> float:
    return count / km if km > 1e-6 else float("nan")


def _pct(values, q) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.percentile(vals, q)) if vals else float("nan")


def route_progress(records: list[TickRecord], route_length_m: float) -> tuple[float, float]:
    """(route completion in [0, 1] with off-road distance excluded, raw fraction of the route driven).

    Progress only counts forward moves of the furthest point reached, so reversing or oscillating
    on the projection does not add up.
    """
    if route_length_m <= 0 or not records:
        return 0.0, 0.0
    best = records[0].progress_m
    counted = 0.0
    for r in records[1:]:
        if r.progress_m > best:
            if r.on_road:
                counted += r.progress_m - best
            best = r.progress_m
    raw = (best - records[0].progress_m) / route_length_m
    return float(min(1.0, counted / route_length_m)), float(min(1.0, max(0.0, raw)))


def episode_metrics(records: list[TickRecord], route_length_m: float, dt: float,
                    penalty: PenaltyTable = LEADERBOARD_1_0) -> dict:
    """Metrics of one drive. Keys are stable (the report and tests read them); units in the names.

    Args:
        records: one per tick, in order.
        route_length_m: length of the planned route that counts as 100 %, m.
        dt: simulation step, s.
        penalty: the penalty table of the driving score.
    """
    n = len(records)
    if n == 0:
        nan = float("nan")
        return {"ticks": 0, "sim_time_s": 0.0, "route_length_m": float(route_length_m), "route_completion": 0.0,
                "route_completion_raw": 0.0, "driving_score": 0.0, "penalty_table": penalty.name,
                "infractions": {"off_road_events": 0, "collision_layout": 0, "lane_invasions": 0},
                "distance_m": 0.0, **{k: nan for k in (
                    "lane_invasions_per_km", "off_road_events_per_km", "off_road_fraction",
                    "lateral_deviation_mean_m", "lateral_deviation_max_m", "speed_mean_kmh", "steer_rate_mean_per_s",
                    "gate_accuracy", "classifier_accuracy", "gate_switches_per_km", "inference_p50_ms",
                    "inference_p99_ms")},
                "route_time_s": 0.0, "red_light_hold_s": 0.0, "gate_accuracy_frames": 0, "gate_switches": 0,
                "fallback_frames": 0,
                "expert_share": {c: nan for c in CLASSES}}
    xy = np.array([(r.x, r.y) for r in records])
    dist_m = float(np.sum(np.hypot(*np.diff(xy, axis=0).T))) if n > 1 else 0.0
    km = dist_m / 1000.0
    rc, rc_raw = route_progress(records, route_length_m)
    on_road = np.array([r.on_road for r in records])
    off_road_events = int(np.sum(~on_road[1:] & on_road[:-1])) + int(not on_road[0])
    lane_inv = int(sum(r.lane_invasions for r in records))
    layout = off_road_events if penalty.off_road_as_layout_collision else 0
    driving_score = rc * penalty.collision_layout ** layout
    dev = np.array([r.route_dist_m for r in records])
    steer = np.array([r.steer for r in records])
    experts = [r.expert for r in records]
    switches = sum(a != b for a, b in zip(experts[:-1], experts[1:]))
    scored = [r for r in records if r.truth in CLASSES and not r.red_light_hold]  # held: the gate decides nothing
    gate_acc = float(np.mean([r.expert == r.truth for r in scored])) if scored else float("nan")
    pred_scored = [r for r in scored if r.pred in CLASSES]
    cls_acc = float(np.mean([r.pred == r.truth for r in pred_scored])) if pred_scored else float("nan")
    duration = n * dt
    return {
        "ticks": n,
        "sim_time_s": duration,
        "route_length_m": float(route_length_m),
        "route_completion": rc,
        "route_completion_raw": rc_raw,
        "driving_score": float(driving_score),
        "penalty_table": penalty.name,
        "infractions": {"off_road_events": off_road_events, "collision_layout": layout, "lane_invasions": lane_inv},
        "distance_m": dist_m,
        "lane_invasions_per_km": _per_km(lane_inv, km),
        "off_road_events_per_km": _per_km(off_road_events, km),
        "off_road_fraction": float(1.0 - np.mean(on_road)),
        "lateral_deviation_mean_m": float(np.mean(dev)),
        "lateral_deviation_max_m": float(np.max(dev)),
        "speed_mean_kmh": float(np.mean([r.speed_kmh for r in records])),
        "route_time_s": duration,
        "red_light_hold_s": float(sum(r.red_light_hold for r in records) * dt),
        "steer_rate_mean_per_s": float(np.mean(np.abs(np.diff(steer))) / dt) if n > 1 else 0.0,
        "gate_accuracy": gate_acc,
        "gate_accuracy_frames": len(scored),
        "classifier_accuracy": cls_acc,
        "gate_switches": int(switches),
        "gate_switches_per_km": _per_km(switches, km),
        "fallback_frames": int(sum(r.fallback for r in records)),
        "expert_share": {c: float(np.mean([e == c for e in experts])) for c in CLASSES},
        "inference_p50_ms": _pct([r.infer_ms for r in records], 50),
        "inference_p99_ms": _pct([r.infer_ms for r in records], 99),
    }


@dataclass
class DriveTrace:
    """The per-tick arrays the trajectory plots need (kept small: no images)."""
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    expert: list[str] = field(default_factory=list)
    correct: list[bool | None] = field(default_factory=list)

    @classmethod
    def from_records(cls, records: list[TickRecord]) -> "DriveTrace":
        return cls(x=[r.x for r in records], y=[r.y for r in records], expert=[r.expert for r in records],
                   correct=[(r.expert == r.truth) if r.truth in CLASSES else None for r in records])
