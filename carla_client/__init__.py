"""Client side of the carla API seam: connect, synchronous mode, route planning, ground-truth labels, data collection.

Everything here talks to the simulator only through the carla client API, so it runs unchanged
on a CARLA 0.9.14+ server or on ``carla_embedded``.
"""
from .cli import add_carla_args, parse_res
from .connection import SIMS, CarlaConnectionError, connect, sim_kind
from .labels import LabelEvidence, LabelParams, label_at
from .planner import GlobalRoutePlanner, RoadOption
from .route import RoutePath
from .sync import CarlaSyncMode, SensorTimeout

__all__ = ["SIMS", "CarlaConnectionError", "connect", "sim_kind", "add_carla_args", "parse_res", "CarlaSyncMode",
           "SensorTimeout", "GlobalRoutePlanner", "RoadOption", "RoutePath", "LabelParams", "LabelEvidence",
           "label_at"]
