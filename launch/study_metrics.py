"""Driving-quality metrics the MoE study adds to :func:`launch.metrics.episode_metrics`.

Pure functions of the per-tick records (and the vision experts' inference times), tested on
synthetic drives.

* ``lateral_deviation_p95_m``: 95th percentile of the distance to the route's lane centre line.
* ``deviation_per_km``: the origin's metric, sum over ticks of the lateral deviation (m) divided by
  the distance driven (km). It depends on the tick rate, so it is comparable only at one ``fps``
  (the study holds it fixed); the mean deviation is the rate-free version.
* steering suddenness: ``steer_rate_p95_per_s`` (95th percentile of |d steer/dt|) and
  ``steer_jerk_mean_per_s2`` (mean |d2 steer/dt2|): a policy that saws at the wheel scores high.
* inference: classifier + policy ms per tick (p50/p99), policy alone.
"""
from __future__ import annotations

import math

import numpy as np

from launch.metrics import TickRecord


def _pct(values, q) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.percentile(vals, q)) if vals else float("nan")


def study_metrics(records: list[TickRecord], dt: float, policy_ms: list[float] | None = None) -> dict:
    """Extra metrics of one drive (keys documented in the module docstring)."""
    nan = float("nan")
    if not records:
        return {k: nan for k in ("lateral_deviation_p95_m", "deviation_per_km", "steer_rate_p95_per_s",
                                 "steer_jerk_mean_per_s2", "policy_p50_ms", "policy_p99_ms", "frame_p50_ms",
                                 "frame_p99_ms")}
    dev = np.array([r.route_dist_m for r in records])
    xy = np.array([(r.x, r.y) for r in records])
    km = float(np.sum(np.hypot(*np.diff(xy, axis=0).T))) / 1000.0 if len(records) > 1 else 0.0
    steer = np.array([r.steer for r in records])
    rate = np.abs(np.diff(steer)) / dt if len(steer) > 1 else np.zeros(0)
    jerk = np.abs(np.diff(steer, 2)) / (dt * dt) if len(steer) > 2 else np.zeros(0)
    cls = [r.infer_ms if r.infer_ms is not None else 0.0 for r in records]
    pol = list(policy_ms or [])
    n = min(len(cls), len(pol)) if pol else len(cls)
    frame = [c + p for c, p in zip(cls[-n:], pol[-n:])] if pol else [c for c in cls if c]
    return {
        "lateral_deviation_p95_m": float(np.percentile(dev, 95)),
        "deviation_per_km": float(dev.sum() / km) if km > 1e-6 else nan,
        "steer_rate_p95_per_s": float(np.percentile(rate, 95)) if rate.size else 0.0,
        "steer_jerk_mean_per_s2": float(jerk.mean()) if jerk.size else 0.0,
        "policy_p50_ms": _pct(pol, 50),
        "policy_p99_ms": _pct(pol, 99),
        "frame_p50_ms": _pct(frame, 50),
        "frame_p99_ms": _pct(frame, 99),
    }
