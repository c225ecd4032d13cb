"""The high-level route command at a point of a planned route (conditional imitation learning's input).

One definition, so the command a frame is saved with (collector) and the command a camera policy is
driven with (``control.vision_experts``) cannot disagree: the planner's ``RoadOption`` of the route
point nearest the car, except that on a lane (``LANEFOLLOW``) the manoeuvre of a junction starting
within ``anticipation_m`` ahead is announced early, as a navigation system would, so the policy can
prepare the turn before it is inside the junction.
"""
from __future__ import annotations

import numpy as np

COMMANDS: tuple[str, ...] = ("LANEFOLLOW", "LEFT", "RIGHT", "STRAIGHT", "CHANGELANELEFT", "CHANGELANERIGHT")
"""Command order used by every policy head, checkpoint and ONNX one-hot input (index 0 is the default)."""

JUNCTION_COMMANDS = ("LEFT", "RIGHT", "STRAIGHT")
DEFAULT_ANTICIPATION_M = 10.0


def option_name(option) -> str:
    """``RoadOption`` (ours or CARLA's agents'), its name or None -> a name of :data:`COMMANDS`
    (``VOID``/unknown -> ``LANEFOLLOW``)."""
    name = getattr(option, "name", option)
    name = str(name).upper() if name is not None else ""
    return name if name in COMMANDS else "LANEFOLLOW"


def route_options(route) -> list[str]:
    """Command names of the points of ``[(waypoint, RoadOption)]`` (plain waypoints: ``LANEFOLLOW``)."""
    return [option_name(item[1]) if isinstance(item, tuple) else "LANEFOLLOW" for item in route]


def command_at(options: list[str], s: np.ndarray, index: int, anticipation_m: float = DEFAULT_ANTICIPATION_M) -> str:
    """The command at route point ``index``.

    Args:
        options: from :func:`route_options`.
        s: (N,) arc length of the route points, m (``RoutePath.s`` when no point was dropped).
        index: the route point nearest the car.
        anticipation_m: how far ahead a junction manoeuvre is announced on a lane.
    """
    n = len(options)
    if n == 0:
        return "LANEFOLLOW"
    index = int(min(max(index, 0), n - 1))
    here = options[index]
    if here != "LANEFOLLOW":
        return here
    j = index + 1
    while j < n and s[j] - s[index] <= anticipation_m:
        if options[j] in JUNCTION_COMMANDS:
            return options[j]
        j += 1
    return here
