"""Blueprint library: the actor types the embedded simulator can spawn, with carla's API.

``ActorAttribute``/``ActorBlueprint``/``BlueprintLibrary`` mirror the carla classes of the same
name (carla's cannot be constructed from Python). Listed: CARLA 0.9.14's vehicle catalogue
(cars, trucks, vans, a bus, motorcycles and bicycles, with its ids, generations, base types and
bounding boxes; every one drives with the kinematic model, sized and limited per class), its
pedestrians ``walker.pedestrian.0001``-``0049``, ``controller.ai.walker`` and the sensors of ``sensors.py`` (cameras RGB/depth/semantic/instance
segmentation, collision, obstacle, GNSS, IMU, lidar, radar). Tags are the id's parts, as in CARLA, so ``filter('vehicle')`` matches
every vehicle. A script asking for anything else gets carla's error for a missing blueprint
(``IndexError`` from ``find``) or an empty ``filter`` result, like on a server without that asset.
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

    def __init__(self, blueprint_id: str, tags, attributes, vehicle: VehicleSpec | None = None,
                 walker_extent: tuple[float, float, float] | None = None):
        self.id = blueprint_id
        self.tags = list(tags)
        self._attributes = {a.id: a for a in attributes}
        self.vehicle_spec = vehicle
        self.walker_extent = walker_extent

    def __deepcopy__(self, memo):
        """A copy whose attributes can be set independently (the vehicle spec is frozen: shared)."""
        clone = ActorBlueprint.__new__(ActorBlueprint)
        clone.__dict__.update(self.__dict__)
        clone.tags = list(self.tags)
        clone._attributes = {key: copy.copy(a) for key, a in self._attributes.items()}
        return clone

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
        family = id.split(".", 1)[0] + "."
        same = [bp.id for bp in self._blueprints if bp.id.startswith(family)]
        raise IndexError(f"no blueprint {id!r} in the embedded simulator; available {family}*: "
                         f"{', '.join(same) if same else 'none'} "
                         f"(families: {', '.join(sorted({bp.id.split('.', 1)[0] for bp in self._blueprints}))})")

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


_CAR_COLORS = ("255,255,255", "17,37,103", "0,0,0", "153,0,0", "204,204,204", "61,82,125", "120,120,120")

#: CARLA 0.9.14 vehicle catalogue: id -> (base_type, generation, wheels, bounding-box half extents in m,
#: special_type). Extents as CARLA reports them (rounded to cm).
VEHICLE_CATALOGUE: dict[str, tuple[str, int, int, tuple[float, float, float], str]] = {
    "vehicle.tesla.model3": ("car", 2, 4, (2.40, 1.08, 0.75), "electric"),
    "vehicle.lincoln.mkz_2020": ("car", 2, 4, (2.45, 1.06, 0.76), ""),
    "vehicle.audi.a2": ("car", 1, 4, (1.86, 0.90, 0.78), ""),
    "vehicle.audi.etron": ("car", 1, 4, (2.43, 1.04, 0.82), "electric"),
    "vehicle.audi.tt": ("car", 1, 4, (2.09, 1.00, 0.69), ""),
    "vehicle.bmw.grandtourer": ("car", 1, 4, (2.31, 1.12, 0.83), ""),
    "vehicle.chevrolet.impala": ("car", 1, 4, (2.68, 1.01, 0.70), ""),
    "vehicle.citroen.c3": ("car", 1, 4, (1.99, 0.93, 0.82), ""),
    "vehicle.dodge.charger_2020": ("car", 2, 4, (2.50, 1.05, 0.77), ""),
    "vehicle.dodge.charger_police": ("car", 1, 4, (2.49, 1.02, 0.78), "emergency"),
    "vehicle.dodge.charger_police_2020": ("car", 2, 4, (2.62, 1.05, 0.82), "emergency"),
    "vehicle.ford.crown": ("car", 2, 4, (2.68, 0.90, 0.78), "taxi"),
    "vehicle.ford.mustang": ("car", 1, 4, (2.36, 0.95, 0.65), ""),
    "vehicle.jeep.wrangler_rubicon": ("car", 1, 4, (1.93, 0.95, 0.94), ""),
    "vehicle.lincoln.mkz_2017": ("car", 1, 4, (2.45, 1.06, 0.76), ""),
    "vehicle.mercedes.coupe": ("car", 1, 4, (2.51, 1.08, 0.83), ""),
    "vehicle.mercedes.coupe_2020": ("car", 2, 4, (2.34, 1.03, 0.73), ""),
    "vehicle.micro.microlino": ("car", 2, 4, (1.10, 0.74, 0.69), "electric"),
    "vehicle.mini.cooper_s": ("car", 1, 4, (1.90, 0.97, 0.77), ""),
    "vehicle.mini.cooper_s_2021": ("car", 2, 4, (2.29, 1.05, 0.89), ""),
    "vehicle.nissan.micra": ("car", 1, 4, (1.82, 0.90, 0.78), ""),
    "vehicle.nissan.patrol": ("car", 1, 4, (2.30, 0.96, 0.93), ""),
    "vehicle.nissan.patrol_2021": ("car", 2, 4, (2.78, 1.07, 1.02), ""),
    "vehicle.seat.leon": ("car", 1, 4, (2.10, 0.91, 0.74), ""),
    "vehicle.toyota.prius": ("car", 1, 4, (2.26, 1.00, 0.76), "electric"),
    "vehicle.carlamotors.carlacola": ("truck", 1, 4, (2.60, 1.31, 1.25), ""),
    "vehicle.carlamotors.firetruck": ("truck", 2, 4, (4.23, 1.42, 1.93), "emergency"),
    "vehicle.tesla.cybertruck": ("truck", 1, 4, (3.14, 1.19, 1.05), "electric"),
    "vehicle.ford.ambulance": ("van", 2, 4, (3.18, 1.19, 1.19), "emergency"),
    "vehicle.mercedes.sprinter": ("van", 2, 4, (2.96, 1.00, 1.28), ""),
    "vehicle.volkswagen.t2": ("van", 1, 4, (2.24, 1.03, 1.01), ""),
    "vehicle.volkswagen.t2_2021": ("van", 2, 4, (2.20, 0.89, 1.04), ""),
    "vehicle.mitsubishi.fusorosa": ("bus", 2, 4, (5.14, 1.97, 1.96), ""),
    "vehicle.harley-davidson.low_rider": ("motorcycle", 1, 2, (1.18, 0.38, 0.64), ""),
    "vehicle.kawasaki.ninja": ("motorcycle", 1, 2, (1.02, 0.40, 0.57), ""),
    "vehicle.vespa.zx125": ("motorcycle", 1, 2, (0.90, 0.43, 0.62), ""),
    "vehicle.yamaha.yzf": ("motorcycle", 1, 2, (1.10, 0.43, 0.63), ""),
    "vehicle.bh.crossbike": ("bicycle", 1, 2, (0.74, 0.43, 0.54), ""),
    "vehicle.diamondback.century": ("bicycle", 1, 2, (0.82, 0.19, 0.77), ""),
    "vehicle.gazelle.omafiets": ("bicycle", 1, 2, (0.92, 0.16, 0.55), ""),
}

#: Limits per base type (top speed m/s, full-throttle acceleration m/s^2, kg per m^3 of bounding box).
_CLASS_LIMITS = {"car": (50.0, 3.5, 180.0), "truck": (33.0, 2.0, 160.0), "van": (38.0, 2.5, 130.0),
                 "bus": (28.0, 1.5, 100.0), "motorcycle": (45.0, 4.5, 150.0), "bicycle": (9.0, 1.5, 60.0)}
#: The three cars the simulator has always had keep their hand-measured wheelbases and masses.
_MEASURED = {
    "vehicle.tesla.model3": (VehicleParams(wheelbase=2.875, rear_axle_offset=1.44), 1845.0, 0.355),
    "vehicle.lincoln.mkz_2020": (VehicleParams(wheelbase=2.85, rear_axle_offset=1.42, max_accel=3.2), 1750.0, 0.36),
    "vehicle.audi.a2": (VehicleParams(wheelbase=2.41, rear_axle_offset=1.2, max_accel=2.6, top_speed=48.0),
                        1030.0, 0.31),
}
#: Pedestrians 0001-0049 (CARLA 0.9.14): generation 1 up to 0014, 2 after; these are children.
_CHILDREN = {"0009", "0010", "0011", "0012", "0013", "0014", "0048", "0049"}
#: recommended ``speed`` values of a walker blueprint, m/s: still, walking, running (as CARLA's order).
WALKER_SPEEDS = ("0.0", "1.4", "3.0")
WALKER_EXTENT = (0.187, 0.187, 0.93)
CHILD_EXTENT = (0.125, 0.125, 0.62)


def _vehicle_spec(blueprint_id: str, base_type: str, extent) -> VehicleSpec:
    if blueprint_id in _MEASURED:
        params, mass, wheel_radius = _MEASURED[blueprint_id]
        return VehicleSpec(tuple(extent), params, mass, wheel_radius)
    top_speed, accel, density = _CLASS_LIMITS[base_type]
    wheelbase = 1.2 * extent[0]                  # CARLA's cars: wheelbase ~60 % of the length
    volume = 8.0 * extent[0] * extent[1] * extent[2]
    wheel_radius = min(0.55, max(0.3, 0.4 * extent[2]))
    return VehicleSpec(tuple(extent), VehicleParams(wheelbase=wheelbase, rear_axle_offset=wheelbase / 2.0,
                                                    max_accel=accel, top_speed=top_speed),
                       mass=round(density * volume, 0), wheel_radius=wheel_radius)


def _vehicle(blueprint_id: str) -> ActorBlueprint:
    base_type, generation, wheels, extent, special = VEHICLE_CATALOGUE[blueprint_id]
    attributes = [ActorAttribute("base_type", _TYPE.String, base_type),
                  ActorAttribute("color", _TYPE.RGBColor, _CAR_COLORS[0], _CAR_COLORS, is_modifiable=True),
                  ActorAttribute("generation", _TYPE.Int, generation),
                  ActorAttribute("has_dynamic_doors", _TYPE.Bool, "false"),
                  ActorAttribute("has_lights", _TYPE.Bool, "true" if generation == 2 else "false"),
                  ActorAttribute("number_of_wheels", _TYPE.Int, wheels),
                  ActorAttribute("object_type", _TYPE.String, ""),
                  _role_name("autopilot"),
                  ActorAttribute("special_type", _TYPE.String, special),
                  ActorAttribute("sticky_control", _TYPE.Bool, "true", is_modifiable=True),
                  ActorAttribute("terramechanics", _TYPE.Bool, "false", is_modifiable=True)]
    if wheels == 2:
        attributes.append(ActorAttribute("driver_id", _TYPE.Int, 0, ("0", "1", "2"), is_modifiable=True))
    return ActorBlueprint(blueprint_id, blueprint_id.split("."), attributes,
                          _vehicle_spec(blueprint_id, base_type, extent))


def _walker(number: int) -> ActorBlueprint:
    name = f"{number:04d}"
    child = name in _CHILDREN
    return ActorBlueprint(
        f"walker.pedestrian.{name}", ("walker", "pedestrian", name),
        [ActorAttribute("age", _TYPE.String, "child" if child else "adult"),
         ActorAttribute("gender", _TYPE.String, "female" if number % 2 else "male"),
         ActorAttribute("generation", _TYPE.Int, 1 if number <= 14 else 2),
         ActorAttribute("is_invincible", _TYPE.Bool, "true", is_modifiable=True),
         _role_name("pedestrian"),
         ActorAttribute("speed", _TYPE.Float, WALKER_SPEEDS[1], WALKER_SPEEDS, is_modifiable=True)],
        walker_extent=CHILD_EXTENT if child else WALKER_EXTENT)


def _sensor_blueprints() -> list[ActorBlueprint]:
    from .sensors import sensor_blueprints      # sensors.py builds on this module: import when needed
    return sensor_blueprints()


def default_blueprints() -> list[ActorBlueprint]:
    """The blueprints every embedded world offers (a fresh list: callers may mutate it)."""
    return [_vehicle(bp_id) for bp_id in VEHICLE_CATALOGUE] + [
        *_sensor_blueprints(),
        ActorBlueprint(
            "sensor.other.lane_invasion", ("sensor", "other", "lane_invasion"),
            [_role_name("front")]),
    ] + [_walker(n) for n in range(1, 50)] + [
        ActorBlueprint("controller.ai.walker", ("controller", "ai", "walker"), [_role_name("")]),
    ]
