"""Blueprint library: the actor types the embedded simulator can spawn, with carla's API.

``ActorAttribute``/``ActorBlueprint``/``BlueprintLibrary`` mirror the carla classes of the same
name (carla's cannot be constructed from Python). Only what the simulator really implements is
listed: three cars, ``sensor.other.lane_invasion`` and the sensors of ``sensors.py`` (cameras
RGB/depth/semantic segmentation, collision, obstacle, GNSS, IMU, lidar, radar). A script asking
for anything else gets carla's error for a missing blueprint (``IndexError`` from ``find``) or
an empty ``filter`` result, like on a server without that asset.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass

import carla

from .vehicle import VehicleParams

_TYPE = carla.ActorAttributeType


class ActorAttribute:
    """One blueprint attribute: a string value with a carla type, optionally modifiable."""

    def __init__(self, attr_id: str, type_, value: str, recommended_values=(), is_modifiable=False):
        self.id = attr_id
        self.type = type_
        self.recommended_values = [str(v) for v in recommended_values]
        self.is_modifiable = is_modifiable
        self._value = self._parse(value)

    def _parse(self, value) -> str:
        """Validate ``value`` against the attribute type; store carla's string form."""
        text = str(value).strip()
        try:
            if self.type == _TYPE.Int:
                return str(int(float(text)) if float(text).is_integer() else int(text))
            if self.type == _TYPE.Float:
                return repr(float(text))
            if self.type == _TYPE.Bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                return "true" if text.lower() in ("true", "1") else "false"
            if self.type == _TYPE.RGBColor:
                parts = [int(p) for p in text.split(",")]
                if len(parts) != 3 or not all(0 <= p <= 255 for p in parts):
                    raise ValueError(text)
                return ",".join(map(str, parts))
        except ValueError:
            raise ValueError(f"attribute {self.id!r}: {value!r} is not a valid {self.type}") from None
        return text

    def as_bool(self) -> bool:
        return self._value == "true"

    def as_int(self) -> int:
        return int(self._value)

    def as_float(self) -> float:
        return float(self._value)

    def as_str(self) -> str:
        return self._value

    def as_color(self) -> carla.Color:
        return carla.Color(*(int(p) for p in self._value.split(",")))

    def __str__(self):
        return self._value

    def __int__(self):
        return self.as_int()

    def __float__(self):
        return self.as_float()

    def __bool__(self):
        return self.as_bool() if self.type == _TYPE.Bool else bool(self._value)

    def __eq__(self, other):
        if isinstance(other, ActorAttribute):
            return self.id == other.id and self._value == other._value
        if isinstance(other, bool) and self.type == _TYPE.Bool:
            return self.as_bool() == other
        if isinstance(other, (int, float)) and self.type in (_TYPE.Int, _TYPE.Float):
            return self.as_float() == float(other)
        return self._value == str(other)

    __hash__ = None

    def __repr__(self):
        return f"ActorAttribute(id={self.id},type={self.type},value={self._value})"


@dataclass(frozen=True)
class VehicleSpec:
    """Geometry and dynamics of a car blueprint.

    Attributes:
        extent: half sizes of the bounding box, m (like carla.BoundingBox.extent).
        params: the bicycle model's limits.
        mass: kg; reported by ``get_physics_control`` (the kinematic model does not need it).
        wheel_radius: m; places the wheels and turns speed into engine rpm for ``get_physics_control``.
    """

    extent: tuple[float, float, float]
    params: VehicleParams
    mass: float = 1800.0
    wheel_radius: float = 0.35

    def __post_init__(self):
        if len(self.extent) != 3 or not all(e > 0 for e in self.extent):
            raise ValueError(f"VehicleSpec.extent={self.extent!r} must be three half sizes > 0 m")
        if not self.mass > 0 or not 0 < self.wheel_radius < self.extent[2] * 2:
            raise ValueError(f"VehicleSpec mass={self.mass!r} must be > 0 kg and wheel_radius={self.wheel_radius!r} "
                             f"in (0, car height) m")


class ActorBlueprint:
    """carla.ActorBlueprint: id, tags and attributes of something spawnable."""

    def __init__(self, blueprint_id: str, tags, attributes, vehicle: VehicleSpec | None = None):
        self.id = blueprint_id
        self.tags = list(tags)
        self._attributes = {a.id: a for a in attributes}
        self.vehicle_spec = vehicle

    def has_tag(self, tag: str) -> bool:
        return tag in self.tags

    def match_tags(self, wildcard_pattern: str) -> bool:
        return any(fnmatch.fnmatchcase(t, wildcard_pattern) for t in self.tags)

    def has_attribute(self, attr_id: str) -> bool:
        return attr_id in self._attributes

    def get_attribute(self, attr_id: str) -> ActorAttribute:
        try:
            return self._attributes[attr_id]
        except KeyError:
            raise IndexError(f"blueprint {self.id!r} has no attribute {attr_id!r}; "
                             f"attributes: {', '.join(self._attributes)}") from None

    def set_attribute(self, attr_id: str, value) -> None:
        attribute = self.get_attribute(attr_id)
        if not attribute.is_modifiable:
            raise IndexError(f"attribute {attr_id!r} of {self.id!r} is not modifiable")
        attribute._value = attribute._parse(value)

    def __iter__(self):
        return iter(list(self._attributes.values()))

    def __len__(self):
        return len(self._attributes)

    def __repr__(self):
        return f"ActorBlueprint(id={self.id},tags={self.tags})"


class BlueprintLibrary:
    """carla.BlueprintLibrary: ``filter``/``find`` hand out copies, so edits never leak back."""

    def __init__(self, blueprints):
        self._blueprints = list(blueprints)

    def find(self, id: str) -> ActorBlueprint:  # noqa: A002 (carla's parameter name)
        for bp in self._blueprints:
            if bp.id == id:
                return copy.deepcopy(bp)
        raise IndexError(f"no blueprint {id!r} in the embedded simulator; available: "
                         f"{', '.join(bp.id for bp in self._blueprints)}")

    def filter(self, wildcard_pattern: str) -> "BlueprintLibrary":
        """Blueprints whose id or one of whose tags matches the shell-style pattern (as carla)."""
        return BlueprintLibrary(copy.deepcopy(bp) for bp in self._blueprints
                                if fnmatch.fnmatchcase(bp.id, wildcard_pattern) or bp.match_tags(wildcard_pattern))

    def filter_by_attribute(self, name: str, value: str) -> "BlueprintLibrary":
        return BlueprintLibrary(copy.deepcopy(bp) for bp in self._blueprints
                                if bp.has_attribute(name) and bp.get_attribute(name) == value)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [copy.deepcopy(bp) for bp in self._blueprints[index]]
        return copy.deepcopy(self._blueprints[index])

    def __len__(self):
        return len(self._blueprints)

    def __iter__(self):
        return iter([copy.deepcopy(bp) for bp in self._blueprints])

    def __repr__(self):
        return f"BlueprintLibrary({[bp.id for bp in self._blueprints]})"


def _role_name(default: str) -> ActorAttribute:
    return ActorAttribute("role_name", _TYPE.String, default, is_modifiable=True)


_CAR_COLORS = ("255,255,255", "17,37,103", "0,0,0", "153,0,0", "204,204,204")


def _car(maker: str, model: str, extent, params: VehicleParams, generation: int, mass: float,
         wheel_radius: float) -> ActorBlueprint:
    return ActorBlueprint(
        f"vehicle.{maker}.{model}", (maker, model, "car"),
        [ActorAttribute("base_type", _TYPE.String, "car"),
         ActorAttribute("color", _TYPE.RGBColor, _CAR_COLORS[0], _CAR_COLORS, is_modifiable=True),
         ActorAttribute("generation", _TYPE.Int, generation),
         ActorAttribute("number_of_wheels", _TYPE.Int, 4),
         ActorAttribute("object_type", _TYPE.String, ""),
         _role_name("autopilot"),
         ActorAttribute("sticky_control", _TYPE.Bool, "true", is_modifiable=True)],
        VehicleSpec(tuple(extent), params, mass, wheel_radius))


def _sensor_blueprints() -> list[ActorBlueprint]:
    from .sensors import sensor_blueprints      # sensors.py builds on this module: import when needed
    return sensor_blueprints()


def default_blueprints() -> list[ActorBlueprint]:
    """The blueprints every embedded world offers (a fresh list: callers may mutate it)."""
    return [
        _car("tesla", "model3", (2.40, 1.08, 0.75), VehicleParams(wheelbase=2.875, rear_axle_offset=1.44), 2,
             mass=1845.0, wheel_radius=0.355),
        _car("lincoln", "mkz_2020", (2.45, 1.06, 0.76),
             VehicleParams(wheelbase=2.85, rear_axle_offset=1.42, max_accel=3.2), 2, mass=1750.0, wheel_radius=0.36),
        _car("audi", "a2", (1.86, 0.90, 0.78),
             VehicleParams(wheelbase=2.41, rear_axle_offset=1.2, max_accel=2.6, top_speed=48.0), 1,
             mass=1030.0, wheel_radius=0.31),
        *_sensor_blueprints(),
        ActorBlueprint(
            "sensor.other.lane_invasion", ("sensor", "other", "lane_invasion"),
            [_role_name("front")]),
    ]
