"""Built-in towns whose OpenDRIVE is generated in code, so the simulator works with zero files.

``Embedded01`` is one 4-way junction with two closed loops hanging off it. Every loop is a
two-way road (one driving lane per direction, sidewalks both sides) made of straights and left
arcs of different radii (15 to 60 m), so a route through the town has straights, gentle and
sharp curves and junction turns: the mix the curve/straight classifier must see. The junction
has a connecting road for every straight, left and right movement.

OpenDRIVE is right-handed (x east, y north, heading counter-clockwise); ``carla.Map`` converts
to CARLA's left-handed frame itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable
from xml.sax.saxutils import quoteattr

LANE_WIDTH = 3.5          # m, CARLA's urban driving lanes are 3.5-4 m
SIDEWALK_WIDTH = 2.5      # m
JUNCTION_HALF = 12.0      # m from the junction centre to where the arms start


@dataclass(frozen=True)
class Segment:
    """One planView record: a straight (curvature 0) or an arc (curvature 1/R, > 0 turns left)."""

    length: float
    curvature: float = 0.0


@dataclass(frozen=True)
class RoadSpec:
    """A road of the town: its reference-line start pose, segments and centre-line marking."""

    road_id: int
    x: float
    y: float
    hdg: float
    segments: tuple[Segment, ...]
    centre_mark: str                     # OpenDRIVE roadMark type of the centre line
    junction: int = -1
    predecessor: tuple[str, int, str] | None = None    # (elementType, elementId, contactPoint)
    successor: tuple[str, int, str] | None = None
    two_way: bool = True

    @property
    def length(self) -> float:
        return sum(s.length for s in self.segments)


def _advance(x: float, y: float, hdg: float, seg: Segment) -> tuple[float, float, float]:
    """Pose at the end of a segment (exact for lines and arcs)."""
    if seg.curvature == 0:
        return x + seg.length * math.cos(hdg), y + seg.length * math.sin(hdg), hdg
    r = 1.0 / seg.curvature
    new_hdg = hdg + seg.length * seg.curvature
    return (x + r * (math.sin(new_hdg) - math.sin(hdg)),
            y - r * (math.cos(new_hdg) - math.cos(hdg)), new_hdg)


def end_pose(road: RoadSpec) -> tuple[float, float, float]:
    x, y, hdg = road.x, road.y, road.hdg
    for seg in road.segments:
        x, y, hdg = _advance(x, y, hdg, seg)
    return x, y, hdg


def _loop_segments(a: float, l1: float, r1: float, l2: float, r2: float, r3: float) -> tuple[Segment, ...]:
    """Straight, three quarter-turns to the left and the straights between them, closing exactly on
    the junction arm a quarter turn around (see module docstring)."""
    l3 = a + l1 + r1 - r2 - r3
    l4 = r1 + l2 + r2 - r3 - a
    if min(l3, l4) <= 0:
        raise ValueError(f"loop radii ({r1}, {r2}, {r3}) too large for straights ({l1}, {l2})")
    quarter = math.pi / 2
    return (Segment(l1), Segment(quarter * r1, 1 / r1), Segment(l2), Segment(quarter * r2, 1 / r2),
            Segment(l3), Segment(quarter * r3, 1 / r3), Segment(l4))


def _lane(lane_id: int, lane_type: str, width: float, mark: str, color: str = "white",
          pred: int | None = None, succ: int | None = None) -> str:
    lane_change = "both" if mark == "broken" else "none"
    link = ""
    if pred is not None or succ is not None:
        link = ("<link>" + (f'<predecessor id="{pred}"/>' if pred is not None else "")
                + (f'<successor id="{succ}"/>' if succ is not None else "") + "</link>")
    mark_xml = (f'<roadMark sOffset="0" type={quoteattr(mark)} weight="standard" color="{color}" '
                f'width="{0.15 if mark != "none" else 0}" laneChange="{lane_change}"/>')
    return (f'<lane id="{lane_id}" type="{lane_type}" level="false">{link}'
            f'<width sOffset="0" a="{width}" b="0" c="0" d="0"/>{mark_xml}</lane>')


def _road_xml(road: RoadSpec, lane_links: dict[int, tuple[int | None, int | None]]) -> str:
    geoms, s = [], 0.0
    x, y, hdg = road.x, road.y, road.hdg
    for seg in road.segments:
        shape = "<line/>" if seg.curvature == 0 else f'<arc curvature="{seg.curvature!r}"/>'
        geoms.append(f'<geometry s="{s!r}" x="{x!r}" y="{y!r}" hdg="{hdg!r}" length="{seg.length!r}">'
                     f'{shape}</geometry>')
        x, y, hdg = _advance(x, y, hdg, seg)
        s += seg.length
    link = ""
    for tag, ref in (("predecessor", road.predecessor), ("successor", road.successor)):
        if ref:
            contact = f' contactPoint="{ref[2]}"' if ref[2] else ""
            link += f'<{tag} elementType="{ref[0]}" elementId="{ref[1]}"{contact}/>'
    centre_color = "yellow" if road.two_way else "white"
    left = right = ""
    if road.two_way:
        left = (_lane(2, "sidewalk", SIDEWALK_WIDTH, "none")
                + _lane(1, "driving", LANE_WIDTH, "solid", pred=lane_links.get(1, (None, None))[0],
                        succ=lane_links.get(1, (None, None))[1]))
        right = (_lane(-1, "driving", LANE_WIDTH, "solid", pred=lane_links.get(-1, (None, None))[0],
                       succ=lane_links.get(-1, (None, None))[1])
                 + _lane(-2, "sidewalk", SIDEWALK_WIDTH, "none"))
    else:
        right = _lane(-1, "driving", LANE_WIDTH, "none", pred=lane_links.get(-1, (None, None))[0],
                      succ=lane_links.get(-1, (None, None))[1])
    centre = (f'<lane id="0" type="none" level="false"><roadMark sOffset="0" type={quoteattr(road.centre_mark)} '
              f'weight="standard" color="{centre_color}" width="0.15" '
              f'laneChange="{"both" if road.centre_mark == "broken" else "none"}"/></lane>')
    return (f'<road name="Road {road.road_id}" length="{road.length!r}" id="{road.road_id}" '
            f'junction="{road.junction}"><link>{link}</link>'
            f'<type s="0" type="town"><speed max="40" unit="km/h"/></type>'
            f'<planView>{"".join(geoms)}</planView>'
            f'<elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/></elevationProfile>'
            f'<lateralProfile/><lanes><laneSection s="0">'
            + (f"<left>{left}</left>" if left else "")
            + f"<center>{centre}</center><right>{right}</right></laneSection></lanes></road>")


def _embedded01() -> str:
    a, junction_id = JUNCTION_HALF, 100
    junction = ("junction", junction_id, "")
    loops = []
    # Each loop is two roads (first/second half) so that no road meets the junction at both ends:
    # carla's map builder mixes up the lane links of such a road.
    for first_id, second_id, start, hdg, radii, mark, target in (
            (1, 3, (a, 0.0), 0.0, (60, 25, 80, 45, 15), "solid solid", (0.0, a)),
            (2, 4, (-a, 0.0), math.pi, (40, 60, 50, 20, 35), "broken", (0.0, -a))):
        segs = _loop_segments(a, *radii)
        first = RoadSpec(first_id, *start, hdg, segs[:3], mark, predecessor=junction,
                         successor=("road", second_id, "start"))
        mx, my, mh = end_pose(first)
        second = RoadSpec(second_id, mx, my, mh, segs[3:], mark, predecessor=("road", first_id, "end"),
                          successor=junction)
        ex, ey, _ = end_pose(second)
        assert math.hypot(ex - target[0], ey - target[1]) < 1e-6, (second_id, ex, ey)
        loops += [(first, {-1: (None, -1), 1: (None, 1)}), (second, {-1: (-1, None), 1: (1, None)})]
    # Junction arms: (road, contact, point where it meets the junction, heading INTO the junction).
    # An arm whose reference line starts at the junction brings traffic in on lane 1, else lane -1.
    arms = [(1, "start", (a, 0.0), math.pi), (3, "end", (0.0, a), -math.pi / 2),
            (2, "start", (-a, 0.0), 0.0), (4, "end", (0.0, -a), math.pi / 2)]
    roads = list(loops)
    connections, next_id = [], 10
    for in_road, in_contact, (x0, y0), h0 in arms:
        for out_road, out_contact, (x1, y1), h1 in arms:
            if (out_road, out_contact) == (in_road, in_contact):
                continue
            out_hdg = h1 + math.pi                      # leaving the junction through that arm
            turn = (out_hdg - h0 + math.pi) % (2 * math.pi) - math.pi
            if abs(turn) < 1e-6:
                segs = (Segment(math.hypot(x1 - x0, y1 - y0)),)
            else:                                       # quarter arc of radius a, left (+) or right (-)
                segs = (Segment(abs(turn) * a, math.copysign(1 / a, turn)),)
            conn = RoadSpec(next_id, x0, y0, h0, segs, "none", junction=junction_id,
                            predecessor=("road", in_road, in_contact),
                            successor=("road", out_road, out_contact), two_way=False)
            ex, ey, _ = end_pose(conn)
            assert math.hypot(ex - x1, ey - y1) < 1e-6, (conn, ex, ey)
            in_lane = 1 if in_contact == "start" else -1
            out_lane = -1 if out_contact == "start" else 1
            roads.append((conn, {-1: (in_lane, out_lane)}))
            connections.append(
                f'<connection id="{len(connections)}" incomingRoad="{in_road}" connectingRoad="{next_id}" '
                f'contactPoint="start"><laneLink from="{in_lane}" to="-1"/></connection>')
            next_id += 1
    body = "".join(_road_xml(r, links) for r, links in roads)
    junction = f'<junction id="{junction_id}" name="junction{junction_id}">{"".join(connections)}</junction>'
    return ('<?xml version="1.0" standalone="yes"?>\n<OpenDRIVE><header revMajor="1" revMinor="4" '
            'name="Embedded01" version="1.00" north="0" south="0" east="0" west="0" vendor="carla_embedded">'
            '<geoReference><![CDATA[+lat_0=4.9e+1 +lon_0=8.0e+0]]></geoReference></header>'
            + body + junction + "</OpenDRIVE>\n")


#: Built-in town name -> function returning its OpenDRIVE text.
PROCEDURAL_TOWNS: dict[str, Callable[[], str]] = {"Embedded01": _embedded01}


def generate(name: str) -> str:
    """OpenDRIVE text of a built-in town.

    Raises:
        ValueError: ``name`` is not a built-in town (the message lists them).
    """
    try:
        return PROCEDURAL_TOWNS[name]()
    except KeyError:
        raise ValueError(f"unknown procedural town {name!r}; built-in towns: "
                         f"{', '.join(PROCEDURAL_TOWNS)}") from None
