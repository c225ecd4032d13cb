"""Label function on synthetic routes: straight lines, arcs of known radius, the ambiguous band."""
import math

import numpy as np
import pytest

from carla_client.labels import LabelParams, classify, heading_change_deg, label_at
from carla_client.route import RoutePath


def straight(length=100.0, step=1.0, yaw_deg=30.0):
    s = np.arange(0.0, length + 1e-9, step)
    yaw = math.radians(yaw_deg)
    return RoutePath.from_points(s * math.cos(yaw), s * math.sin(yaw), np.full_like(s, yaw_deg))


def arc(radius, angle_deg, lead_in=0.0, step=0.5, right=True):
    """Straight lead-in along +x, then an arc turning right (CARLA: yaw grows) or left."""
    pts = [(x, 0.0, 0.0) for x in np.arange(0.0, lead_in, step)]
    sign = 1.0 if right else -1.0
    for phi in np.arange(0.0, math.radians(angle_deg) + 1e-9, step / radius):
        # left-handed frame: turning right = towards +y
        pts.append((lead_in + radius * math.sin(phi), sign * radius * (1 - math.cos(phi)), sign * math.degrees(phi)))
    x, y, yaw = np.array(pts).T
    return RoutePath.from_points(x, y, yaw)


def test_straight_line_is_straight():
    ev = label_at(straight(), 10.0, LabelParams())
    assert ev.label == "straight"
    assert ev.heading_change_deg == pytest.approx(0.0, abs=1e-9)
    assert ev.max_curvature == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("radius", [10.0, 30.0, 60.0, 71.0, 72.0, 100.0, 300.0, 1000.0])
@pytest.mark.parametrize("right", [True, False])
def test_arc_is_curve_exactly_when_heading_change_over_L_reaches_threshold(radius, right):
    params = LabelParams(lookahead_m=25.0, curve_deg=20.0, straight_deg=5.0)
    path = arc(radius, angle_deg=180.0, right=right)
    expected = math.degrees(min(params.lookahead_m / radius, math.pi))
    ev = label_at(path, 0.0, params)
    assert ev.heading_change_deg == pytest.approx(expected, rel=1e-3)
    assert ev.label == classify(expected, params)
    assert (ev.label == "curve") == (expected >= params.curve_deg)
    assert ev.max_curvature == pytest.approx(1.0 / radius, rel=0.02)


def test_threshold_radius_boundary():
    # L / R = 20 deg  <=>  R = 25 / radians(20) = 71.62 m
    r_star = 25.0 / math.radians(20.0)
    assert label_at(arc(r_star - 0.5, 90.0), 0.0, LabelParams()).label == "curve"
    assert label_at(arc(r_star + 0.5, 90.0), 0.0, LabelParams()).label is None  # ambiguous band


def test_curve_ahead_of_a_straight_lead_in():
    path = arc(10.0, 90.0, lead_in=40.0)
    params = LabelParams()
    assert label_at(path, 0.0, params).label == "straight"      # curve starts 40 m ahead: out of view
    assert label_at(path, 20.0, params).label == "curve"        # curve 20 m ahead: within L
    dpsi = [label_at(path, s, params).heading_change_deg for s in (10.0, 14.0, 18.0)]
    assert dpsi == sorted(dpsi)


def test_not_enough_route_left_gives_no_label():
    assert label_at(straight(30.0), 10.0, LabelParams()) is None


def test_heading_change_is_max_not_final():
    # an S-bend: right 30 deg then back left: final heading equals the start, max does not
    a = arc(20.0, 30.0)
    x2 = a.x[-1] + np.arange(1, 60) * 0.5 * math.cos(a.yaw[-1])
    y2 = a.y[-1] + np.arange(1, 60) * 0.5 * math.sin(a.yaw[-1])
    yaw2 = np.degrees(np.full(59, a.yaw[-1]) - np.linspace(0, a.yaw[-1], 59))
    path = RoutePath.from_points(np.r_[a.x, x2], np.r_[a.y, y2], np.r_[np.degrees(a.yaw), yaw2])
    peak = math.degrees(a.yaw[-1])
    assert peak > 25.0
    assert abs(math.degrees(path.heading_at(25.0) - path.heading_at(0.0))) < peak / 2  # mostly turned back
    assert heading_change_deg(path, 0.0, 25.0) == pytest.approx(peak, abs=1e-6)


def test_yaw_wraparound_does_not_fake_a_curve():
    s = np.arange(0, 60.0, 1.0)
    yaw = np.where(np.arange(len(s)) % 2 == 0, 179.9, -179.9)  # heading west, printed on both sides of +-180
    path = RoutePath.from_points(-s, np.zeros_like(s), yaw)
    assert label_at(path, 0.0, LabelParams()).label == "straight"


@pytest.mark.parametrize("kwargs", [dict(lookahead_m=0), dict(curve_deg=5, straight_deg=5),
                                    dict(straight_deg=-1)])
def test_bad_label_params(kwargs):
    with pytest.raises(ValueError):
        LabelParams(**kwargs)
