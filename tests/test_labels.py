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


# ------------------------------------------------------------------ route dependence at junctions (real towns)
import os  # noqa: E402

import carla  # noqa: E402

from carla_client.labels import JunctionChoices, route_dependent  # noqa: E402

_MAPS = {}


def town_map(town):
    if town not in _MAPS:
        with open(os.path.join(os.environ["CARLA_MAPS_DIR"], f"{town}.xodr"), encoding="utf-8") as f:
            _MAPS[town] = carla.Map(town, f.read())
    return _MAPS[town]


def turn_through(wp):
    """Heading change (deg, signed) from a lane end through the junction way starting at ``wp``."""
    w = wp
    while w.is_junction:
        w = w.next(1.0)[0]
    return (w.transform.rotation.yaw - wp.transform.rotation.yaw + 180.0) % 360.0 - 180.0


def junction_approaches(wmap, before_m=15.0):
    """(start waypoint ``before_m`` before a lane end, lane end, its ways on with their turns)."""
    seen = set()
    for a, b in wmap.get_topology():
        key = (a.road_id, a.section_id, a.lane_id)
        if a.is_junction or not b.is_junction or key in seen:
            continue
        seen.add(key)
        end = a
        while len(end.next(1.0)) == 1 and not end.next(1.0)[0].is_junction:
            end = end.next(1.0)[0]
        ways = end.next(1.0)
        back = end.previous(before_m)
        if len(ways) < 2 or len(back) != 1 or back[0].is_junction or back[0].road_id != end.road_id:
            continue
        yield back[0], end, [(w, turn_through(w)) for w in ways]


def route_via(start, way, length=60.0):
    """A route from ``start`` through the junction way ``way`` (first successor elsewhere)."""
    wps = [start]
    while len(wps) < length:
        nxt = wps[-1].next(1.0)
        if not nxt:
            break
        wps.append(next((n for n in nxt if (n.road_id, n.lane_id) == (way.road_id, way.lane_id)), nxt[0]))
    return RoutePath.from_route(wps)


def find_approach(town, want):
    for start, end, ways in junction_approaches(town_map(town)):
        if want(sorted(t for _, t in ways)):
            return start, ways
    pytest.fail(f"no junction approach in {town} matches the case")


@pytest.mark.parametrize("town,case", [
    ("Town03", "4-way: straight, left, right"),
    ("Town02", "T from its bar: straight or turn"),
])
def test_frame_before_a_junction_with_straight_and_turns_is_route_dependent(town, case):
    want = {"4-way: straight, left, right": lambda t: len(t) >= 3 and t[0] < -60 and t[-1] > 60
            and any(abs(x) < 5 for x in t),
            "T from its bar: straight or turn": lambda t: len(t) == 2 and any(abs(x) < 5 for x in t)
            and any(abs(x) > 60 for x in t)}[case]
    start, ways = find_approach(town, want)
    wmap, params = town_map(town), LabelParams()
    choices = JunctionChoices(wmap, params.lookahead_m).along(route_via(start, ways[0][0]))
    seen = set()
    for way, turn in ways:
        path = route_via(start, way)
        ev = label_at(path, 0.0, params)
        seen.add(ev.label)
        assert route_dependent(path, 0.0, params, JunctionChoices(wmap, params.lookahead_m).along(path)), (turn, ev)
        # still route-dependent 3 m before the junction
        assert route_dependent(path, 12.0, params, JunctionChoices(wmap, params.lookahead_m).along(path))
    assert {"curve", "straight"} <= seen  # the real labels do differ by route: the point of the test
    assert len(choices) == 1 and len(choices[0].alternatives) == len(ways)
    far = JunctionChoices(wmap, params.lookahead_m).along(route_via(start.previous(15.0)[0], ways[0][0]))
    assert not route_dependent(route_via(start.previous(15.0)[0], ways[0][0]), 0.0, params, far)  # 30 m away


def test_t_junction_from_its_stem_is_not_route_dependent():
    start, ways = find_approach("Town02", lambda t: len(t) >= 2 and all(abs(x) > 60 for x in t))
    wmap, params = town_map("Town02"), LabelParams()
    for way, _ in ways:
        path = route_via(start, way)
        assert label_at(path, 0.0, params).label == "curve"  # every way on turns: the camera sees a curve
        choices = JunctionChoices(wmap, params.lookahead_m).along(path)
        assert len(choices) == 1 and len(choices[0].alternatives) == len(ways)  # the choice is found...
        assert not route_dependent(path, 0.0, params, choices)                   # ...and does not matter


def test_plain_bend_of_town02_outer_loop_is_not_route_dependent():
    wmap, params = town_map("Town02"), LabelParams()
    for wp in wmap.generate_waypoints(5.0):
        if wp.is_junction or wp.lane_type != carla.LaneType.Driving:
            continue
        wps = [wp]
        while len(wps) < 45 and len(wps[-1].next(1.0)) == 1 and not wps[-1].next(1.0)[0].is_junction:
            wps.append(wps[-1].next(1.0)[0])
        if len(wps) < 45:
            continue  # a junction within the window: not a plain bend
        path = RoutePath.from_route(wps)
        if label_at(path, 0.0, params).label == "curve":
            choices = JunctionChoices(wmap, params.lookahead_m).along(path)
            assert choices == ()
            assert not route_dependent(path, 0.0, params, choices)
            return
    pytest.fail("no junction-free bend found in Town02")


def test_route_dependence_ignores_ambiguous_alternatives_and_closed_ways():
    """Synthetic: a straight route with one alternative 'way on' that only bends a little (ambiguous)
    is not route-dependent; one that turns 90 deg is; once the car is past the parting point and off
    the turning way, that way is no longer a choice."""
    from carla_client.labels import JunctionChoice

    route = straight(100.0, yaw_deg=0.0)
    turn = arc(10.0, 90.0, lead_in=30.0)
    gentle = arc(150.0, 30.0, lead_in=30.0)
    params = LabelParams()
    assert route_dependent(route, 10.0, params, (JunctionChoice(30.0, (route, turn)),))
    assert not route_dependent(route, 10.0, params, (JunctionChoice(30.0, (route, gentle)),))
    assert not route_dependent(route, 36.0, params, (JunctionChoice(30.0, (route, turn)),))  # car went straight
    assert not route_dependent(route, 10.0, params, ())
