"""The carla API seam: every carla attribute the project uses exists on the real carla class AND
on the embedded simulator's object, with the same kind (method vs property) and argument names.

Two parts:

* ``CARLA_API``, the authoritative hand-written table (role -> real carla class, attribute names).
  A name missing on the real class fails too, so the table cannot list something a CARLA server
  would not have. To extend: add the name to the role's list (or a new role plus its object in
  the ``embedded`` fixture).
* A safety net that reads the client code (``CLIENT_PACKAGES``) with ``ast``: every attribute
  taken from something that looks like a carla object (by its variable name, e.g. ``world``,
  ``ctx.map``, ``cam_bp``, or by the getter that returned it, e.g. ``get_settings()``) must be in
  the table, and must not be an embedded-only extension a CARLA server lacks. Attributes on
  other receivers that only carla classes have (``a.get_physics_control()``) must exist on the
  embedded stand-in. Failures name file:line and the attribute.
"""
import ast
import inspect
import re
from pathlib import Path

import pytest

import carla
from carla_embedded import Client
from carla_embedded.actors import LaneInvasionEvent
from carla_embedded.errors import CarlaSurface
from carla_embedded.sensors import CollisionEvent

_ACTOR = ["id", "type_id", "attributes", "parent", "is_alive", "bounding_box", "get_world", "get_transform",
          "get_location", "get_velocity", "get_angular_velocity", "get_acceleration", "set_transform",
          "set_location", "set_simulate_physics", "destroy"]
_SENSOR = _ACTOR + ["listen", "stop", "is_listening"]

#: role -> (real carla class, attribute names the project calls on it)
CARLA_API: dict[str, tuple[type, list[str]]] = {
    "Client": (carla.Client, ["set_timeout", "get_client_version", "get_server_version", "get_world",
                              "load_world", "load_world_if_different", "reload_world", "get_available_maps",
                              "generate_opendrive_world", "get_trafficmanager", "apply_batch",
                              "apply_batch_sync"]),
    "TrafficManager": (carla.TrafficManager, [
        "get_port", "set_synchronous_mode", "set_global_distance_to_leading_vehicle", "distance_to_leading_vehicle",
        "global_percentage_speed_difference", "vehicle_percentage_speed_difference", "set_desired_speed",
        "ignore_lights_percentage", "ignore_signs_percentage", "ignore_vehicles_percentage",
        "ignore_walkers_percentage", "collision_detection", "auto_lane_change", "set_random_device_seed",
        "set_hybrid_physics_mode", "set_hybrid_physics_radius", "set_respawn_dormant_vehicles",
        "set_boundaries_respawn_dormant_vehicles", "update_vehicle_lights", "keep_slow_lane_rule_percentage",
        "random_left_lanechange_percentage", "random_right_lanechange_percentage", "vehicle_lane_offset",
        "global_lane_offset", "set_osm_mode", "shut_down", "force_lane_change", "set_path", "set_route",
        "get_next_action", "get_all_actions"]),
    "TrafficLight": (carla.TrafficLight, _ACTOR + [
        "state", "get_state", "set_state", "get_elapsed_time", "get_green_time", "get_yellow_time", "get_red_time",
        "set_green_time", "set_yellow_time", "set_red_time", "freeze", "is_frozen", "reset_group",
        "get_group_traffic_lights", "get_pole_index", "get_opendrive_id", "get_stop_waypoints",
        "get_affected_lane_waypoints", "get_light_boxes", "trigger_volume"]),
    "Walker": (carla.Walker, _ACTOR + ["apply_control", "get_control", "set_target_velocity"]),
    "WalkerAIController": (carla.WalkerAIController, _ACTOR + ["start", "stop", "go_to_location",
                                                               "set_max_speed"]),
    "World": (carla.World, ["id", "get_map", "get_settings", "apply_settings", "tick", "wait_for_tick",
                            "get_snapshot", "on_tick", "remove_on_tick", "get_weather", "set_weather",
                            "get_blueprint_library", "spawn_actor", "try_spawn_actor", "get_actors",
                            "get_actor", "get_spectator", "freeze_all_traffic_lights",
                            "reset_all_traffic_lights", "get_traffic_lights_in_junction",
                            "get_random_location_from_navigation", "set_pedestrians_seed",
                            "set_pedestrians_cross_factor"]),
    "Map": (carla.Map, ["name", "get_spawn_points", "get_waypoint", "get_waypoint_xodr", "generate_waypoints",
                        "get_topology", "to_opendrive", "transform_to_geolocation"]),
    "Waypoint": (carla.Waypoint, ["id", "transform", "road_id", "section_id", "lane_id", "s", "is_junction",
                                  "junction_id", "lane_type", "lane_width", "lane_change", "left_lane_marking",
                                  "right_lane_marking", "next", "previous", "next_until_lane_end",
                                  "previous_until_lane_start", "get_left_lane", "get_right_lane", "get_junction"]),
    "LaneMarking": (carla.LaneMarking, ["type", "color", "width", "lane_change"]),
    "Vehicle": (carla.Vehicle, _ACTOR + ["apply_control", "get_control", "set_autopilot",
                                       "set_target_velocity", "get_physics_control", "apply_physics_control",
                                       "get_wheel_steer_angle", "get_speed_limit", "get_traffic_light",
                                       "get_traffic_light_state", "is_at_traffic_light", "set_light_state",
                                       "get_light_state"]),
    "VehicleControl": (carla.VehicleControl, ["throttle", "steer", "brake", "hand_brake", "reverse",
                                              "manual_gear_shift", "gear"]),
    "VehiclePhysicsControl": (carla.VehiclePhysicsControl, ["wheels", "mass", "max_rpm", "torque_curve",
                                                            "drag_coefficient", "steering_curve", "center_of_mass"]),
    "WheelPhysicsControl": (carla.WheelPhysicsControl, ["max_steer_angle", "position", "radius",
                                                        "max_brake_torque", "max_handbrake_torque"]),
    "Spectator": (carla.Actor, ["id", "type_id", "get_transform", "set_transform", "get_location"]),
    "CameraSensor": (carla.Sensor, _SENSOR),
    "LaneInvasionSensor": (carla.Sensor, _SENSOR),
    "Image": (carla.Image, ["frame", "frame_number", "timestamp", "transform", "width", "height", "fov",
                            "raw_data", "save_to_disk", "convert"]),
    "LaneInvasionEvent": (carla.LaneInvasionEvent, ["frame", "frame_number", "timestamp", "transform", "actor",
                                                    "crossed_lane_markings"]),
    "DepthCamera": (carla.Sensor, _SENSOR),
    "SemanticCamera": (carla.Sensor, _SENSOR),
    "CollisionSensor": (carla.Sensor, _SENSOR),
    "ObstacleSensor": (carla.Sensor, _SENSOR),
    "GnssSensor": (carla.Sensor, _SENSOR),
    "ImuSensor": (carla.Sensor, _SENSOR),
    "LidarSensor": (carla.Sensor, _SENSOR),
    "RadarSensor": (carla.Sensor, _SENSOR),
    "DepthImage": (carla.Image, ["frame", "frame_number", "timestamp", "transform", "width", "height", "fov",
                                 "raw_data", "save_to_disk", "convert"]),
    "SemanticImage": (carla.Image, ["frame", "frame_number", "timestamp", "transform", "width", "height", "fov",
                                    "raw_data", "save_to_disk", "convert"]),
    "CollisionEvent": (carla.CollisionEvent, ["frame", "frame_number", "timestamp", "transform", "actor",
                                              "other_actor", "normal_impulse"]),
    "ObstacleDetectionEvent": (carla.ObstacleDetectionEvent, ["frame", "frame_number", "timestamp", "transform",
                                                              "actor", "other_actor", "distance"]),
    "GnssMeasurement": (carla.GnssMeasurement, ["frame", "frame_number", "timestamp", "transform", "latitude",
                                                "longitude", "altitude"]),
    "IMUMeasurement": (carla.IMUMeasurement, ["frame", "frame_number", "timestamp", "transform", "accelerometer",
                                              "gyroscope", "compass"]),
    "LidarMeasurement": (carla.LidarMeasurement, ["frame", "frame_number", "timestamp", "transform", "channels",
                                                  "horizontal_angle", "raw_data", "get_point_count",
                                                  "save_to_disk"]),
    "LidarDetection": (carla.LidarDetection, ["point", "intensity"]),
    "RadarMeasurement": (carla.RadarMeasurement, ["frame", "frame_number", "timestamp", "transform", "raw_data",
                                                  "get_detection_count"]),
    "RadarDetection": (carla.RadarDetection, ["velocity", "azimuth", "altitude", "depth"]),
    "GeoLocation": (carla.GeoLocation, ["latitude", "longitude", "altitude"]),
    "BlueprintLibrary": (carla.BlueprintLibrary, ["filter", "find", "filter_by_attribute"]),
    "ActorBlueprint": (carla.ActorBlueprint, ["id", "tags", "has_attribute", "get_attribute", "set_attribute",
                                              "has_tag", "match_tags"]),
    "ActorAttribute": (carla.ActorAttribute, ["id", "type", "recommended_values", "is_modifiable", "as_bool",
                                              "as_int", "as_float", "as_str", "as_color"]),
    "ActorList": (carla.ActorList, ["filter", "find"]),
    "WorldSettings": (carla.WorldSettings, ["synchronous_mode", "fixed_delta_seconds", "no_rendering_mode",
                                            "substepping"]),
    "WorldSnapshot": (carla.WorldSnapshot, ["id", "frame", "timestamp", "elapsed_seconds", "delta_seconds",
                                            "platform_timestamp", "has_actor", "find"]),
    "Timestamp": (carla.Timestamp, ["frame", "elapsed_seconds", "delta_seconds", "platform_timestamp"]),
    "WeatherParameters": (carla.WeatherParameters, ["cloudiness", "precipitation", "precipitation_deposits",
                                                    "wind_intensity", "sun_azimuth_angle", "sun_altitude_angle",
                                                    "fog_density", "fog_distance", "wetness"]),
}


@pytest.fixture(scope="module")
def embedded():
    """role -> an embedded object playing it (one world with a car, a camera and a lane sensor)."""
    client = Client()
    world = client.load_world("Embedded01")
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    library = world.get_blueprint_library()
    car = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
    camera_bp = library.find("sensor.camera.rgb")
    camera_bp.set_attribute("image_size_x", "64")
    camera_bp.set_attribute("image_size_y", "48")
    camera = world.spawn_actor(camera_bp, carla.Transform(carla.Location(x=1.5, z=2.0)), attach_to=car)
    lane = world.spawn_actor(library.find("sensor.other.lane_invasion"), carla.Transform(), attach_to=car)
    images = []
    camera.listen(images.append)
    walker = world.spawn_actor(library.find("walker.pedestrian.0001"),
                               carla.Transform(world.get_random_location_from_navigation()))
    walker_ai = world.spawn_actor(library.find("controller.ai.walker"), carla.Transform(), attach_to=walker)
    ahead = world.get_map().get_waypoint(car.get_location()).next(10.0)[0].transform
    world.spawn_actor(library.find("vehicle.audi.a2"), carla.Transform(ahead.location + carla.Location(z=0.5),
                                                                       ahead.rotation))
    sensors, data = {}, {}
    for role, bp_id, extra in [
            ("DepthCamera", "sensor.camera.depth", {"image_size_x": "64", "image_size_y": "48"}),
            ("SemanticCamera", "sensor.camera.semantic_segmentation", {"image_size_x": "64", "image_size_y": "48"}),
            ("CollisionSensor", "sensor.other.collision", {}),
            ("ObstacleSensor", "sensor.other.obstacle", {"distance": "30"}),
            ("GnssSensor", "sensor.other.gnss", {}), ("ImuSensor", "sensor.other.imu", {}),
            ("LidarSensor", "sensor.lidar.ray_cast", {}), ("RadarSensor", "sensor.other.radar", {})]:
        bp = library.find(bp_id)
        for name, value in extra.items():
            bp.set_attribute(name, value)
        sensors[role] = world.spawn_actor(bp, carla.Transform(carla.Location(x=1.0, z=1.0)), attach_to=car)
        sensors[role].listen(lambda d, role=role: data.setdefault(role, []).append(d))
    world.tick()
    lidar, radar = data["LidarSensor"][-1], data["RadarSensor"][-1]
    waypoint = world.get_map().get_waypoint(car.get_location())
    objects = {
        "Client": client, "World": world, "Map": world.get_map(), "Waypoint": waypoint,
        "LaneMarking": waypoint.left_lane_marking, "Vehicle": car, "Spectator": world.get_spectator(),
        "CameraSensor": camera, "LaneInvasionSensor": lane, "Image": images[-1],
        "LaneInvasionEvent": LaneInvasionEvent(1, 0.05, car.get_transform(), car, [waypoint.left_lane_marking]),
        "BlueprintLibrary": library, "ActorBlueprint": camera_bp, "ActorAttribute": camera_bp.get_attribute("fov"),
        "ActorList": world.get_actors(), "WorldSettings": world.get_settings(), "WorldSnapshot": world.get_snapshot(),
        "Timestamp": world.get_snapshot().timestamp, "WeatherParameters": world.get_weather(),
        "VehicleControl": car.get_control(), "VehiclePhysicsControl": car.get_physics_control(),
        "WheelPhysicsControl": car.get_physics_control().wheels[0],
        "TrafficManager": client.get_trafficmanager(), "TrafficLight": world.get_actors().filter("*traffic_light*")[0],
        "Walker": walker, "WalkerAIController": walker_ai,
        **sensors, "DepthImage": data["DepthCamera"][-1], "SemanticImage": data["SemanticCamera"][-1],
        "CollisionEvent": CollisionEvent(1, 0.05, car.get_transform(), car, car, carla.Vector3D()),
        "ObstacleDetectionEvent": data["ObstacleSensor"][-1], "GnssMeasurement": data["GnssSensor"][-1],
        "IMUMeasurement": data["ImuSensor"][-1], "LidarMeasurement": lidar, "LidarDetection": lidar[0],
        "RadarMeasurement": radar, "RadarDetection": radar[0],
        "GeoLocation": world.get_map().transform_to_geolocation(car.get_location()),
    }
    yield objects
    camera.stop()


def _carla_parameter_lists(function) -> list[list[str]]:
    """Parameter names of every overload in a Boost.Python docstring, without ``self``:
    'tick( (World)arg1 [, (float)seconds=0.0]) -> int' -> [['seconds']]."""
    lists = []
    for line in (function.__doc__ or "").splitlines():
        match = re.match(r"\s*\w+\((.*)\)\s*->", line)
        if match:
            lists.append([name for _, name in re.findall(r"\((\w+)\)(\w+)", match.group(1))][1:])
    return lists


def _is_method(attribute) -> bool:
    return callable(attribute) and not isinstance(attribute, (property, type))


def _own_attribute(obj, name: str):
    """The embedded implementation of ``name``: looked up statically (no ``__getattr__``
    fallback), skipping the real carla base classes an embedded class inherits for
    ``isinstance`` and the stand-ins that raise UnsupportedFeatureError. AttributeError if none."""
    if not isinstance(obj, type) and name in getattr(obj, "__dict__", {}):
        return obj.__dict__[name]
    classes = obj.__mro__ if isinstance(obj, type) else type(obj).__mro__
    embedded_class = issubclass(classes[0], CarlaSurface)      # a Python object, no C++ actor behind it
    for cls in classes:
        if embedded_class and cls.__module__.startswith(("carla.libcarla", "Boost")):
            continue
        if name in cls.__dict__:
            found = cls.__dict__[name]
            function = found.fget if isinstance(found, property) else found
            if getattr(function, "__unsupported__", False):
                break
            return found
    raise AttributeError(name)


CASES = [(role, name) for role, (_, names) in CARLA_API.items() for name in names]


@pytest.mark.parametrize("role, name", CASES, ids=[f"{r}.{n}" for r, n in CASES])
def test_attribute_exists_on_carla_and_embedded(embedded, role, name):
    carla_class, _ = CARLA_API[role]
    obj = embedded[role]
    real = inspect.getattr_static(carla_class, name, None)
    assert real is not None, f"carla.{carla_class.__name__} has no {name!r}: fix the contract table"
    try:
        ours = _own_attribute(obj, name)                  # really implemented
    except AttributeError:
        pytest.fail(f"embedded {type(obj).__name__} lacks carla.{carla_class.__name__}.{name}")
    assert _is_method(real) == _is_method(ours), (
        f"{role}.{name}: carla has a {'method' if _is_method(real) else 'property'}, embedded does not")
    if not _is_method(real) or not hasattr(ours, "__code__"):
        return                                    # carla's own (Boost.Python) implementation
    ours_params = [p for p in inspect.signature(getattr(obj, name)).parameters.values()
                   if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is inspect.Parameter.empty for p in ours_params)
    names = [p.name for p in ours_params]
    overloads = _carla_parameter_lists(real)
    assert any(len(o) >= required and names[:len(o)] == [n if not re.fullmatch(r"arg\d+", n) else names[i]
                                                          for i, n in enumerate(o)] and len(o) <= len(names)
               for o in overloads), f"{role}.{name}{tuple(names)} does not match carla's {overloads}"


def test_contract_covers_the_acceptance_scenario():
    used = {"Client": ["get_world", "load_world"], "World": ["get_settings", "apply_settings", "tick",
            "get_blueprint_library", "spawn_actor"], "Map": ["get_spawn_points"],
            "Vehicle": ["apply_control", "get_transform", "destroy"], "CameraSensor": ["listen", "stop"],
            "Image": ["frame", "raw_data", "width", "height"], "BlueprintLibrary": ["filter", "find"],
            "ActorBlueprint": ["set_attribute"], "WorldSettings": ["synchronous_mode", "fixed_delta_seconds"]}
    for role, names in used.items():
        assert set(names) <= set(CARLA_API[role][1]), role


def test_real_carla_types_are_used_where_carla_can_build_them(embedded):
    assert isinstance(embedded["Map"], carla.Map)
    assert isinstance(embedded["Waypoint"], carla.Waypoint)
    assert isinstance(embedded["WorldSettings"], carla.WorldSettings)
    assert isinstance(embedded["WeatherParameters"], carla.WeatherParameters)
    assert isinstance(embedded["Timestamp"], carla.Timestamp)
    assert isinstance(embedded["Vehicle"].get_transform(), carla.Transform)
    assert isinstance(embedded["Vehicle"].get_control(), carla.VehicleControl)
    assert isinstance(embedded["Vehicle"].bounding_box, carla.BoundingBox)
    assert isinstance(embedded["VehiclePhysicsControl"], carla.VehiclePhysicsControl)
    assert isinstance(embedded["WheelPhysicsControl"], carla.WheelPhysicsControl)


# -- the safety net: what the client code really calls ------------------------------------
ROOT = Path(__file__).resolve().parents[1]
#: packages written once against the carla API (the embedded simulator is not client code)
CLIENT_PACKAGES = ("carla_client", "control", "launch", "perception")

#: how client code names carla objects: receiver (its last identifier, or the getter that
#: returned it) -> role in CARLA_API. Matched against the whole name, leading "_" stripped.
RECEIVER_ROLES = [
    (r"client", "Client"),
    (r"tm|traffic_manager|get_trafficmanager\(.*\)", "TrafficManager"),
    (r"traffic_light|tl", "TrafficLight"),
    (r"walker|pedestrian", "Walker"),
    (r"walker_(controller|ai)|ai_controller", "WalkerAIController"),
    (r"world|get_world\(\)", "World"),
    (r"(w|carla_|town_)?map|get_map\(\)", "Map"),
    (r"(ego_)?(vehicle|car|ego)|hero", "Vehicle"),
    (r"(rgb_)?(camera|cam)", "CameraSensor"),
    (r"lane_(invasion_)?sensor|sensor", "LaneInvasionSensor"),
    (r"image", "Image"),
    (r"event", "LaneInvasionEvent"),
    (r"bl|library|blueprint_library|get_blueprint_library\(\)", "BlueprintLibrary"),
    (r"bp|\w+_bp|blueprint", "ActorBlueprint"),
    (r"settings|get_settings\(\)", "WorldSettings"),
    (r"snapshot|get_snapshot\(\)", "WorldSnapshot"),
    (r"wp\d*|\w+_wp|(\w+_)?waypoint", "Waypoint"),
    (r"weather|get_weather\(\)", "WeatherParameters"),
    (r"spectator|get_spectator\(\)", "Spectator"),
    (r"control|get_control\(\)", "VehicleControl"),
    (r"physics|get_physics_control\(\)", "VehiclePhysicsControl"),
    (r"wheels\[\]|wheel", "WheelPhysicsControl"),
]
#: roles played by objects the embedded simulator re-implements (the rest are real carla objects)
_REIMPLEMENTED = ("Client", "World", "Vehicle", "Spectator", "CameraSensor", "LaneInvasionSensor", "Image",
                  "DepthCamera", "SemanticCamera", "CollisionSensor", "ObstacleSensor", "GnssSensor", "ImuSensor",
                  "LidarSensor", "RadarSensor", "DepthImage", "SemanticImage", "CollisionEvent",
                  "ObstacleDetectionEvent", "GnssMeasurement", "IMUMeasurement", "LidarMeasurement",
                  "RadarMeasurement",
                  "LaneInvasionEvent", "BlueprintLibrary", "ActorBlueprint", "ActorAttribute", "ActorList",
                  "WorldSnapshot", "TrafficManager", "TrafficLight", "Walker", "WalkerAIController")
_NOT_CARLA = re.compile(r"_?(log|logger|logging|args|parser|np|cv2|os|sys|path|Path|pygame)")


def _receiver(node: ast.expr) -> str:
    """'ctx.world' -> 'world', 'w.get_map()' -> 'get_map()', 'wheels[0]' -> 'wheels[]'."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _receiver(node.func) + "()"
    if isinstance(node, ast.Subscript):
        return _receiver(node.value) + "[]"
    return ""


def _role_of(receiver: str) -> str | None:
    name = receiver.lstrip("_")
    return next((role for pattern, role in RECEIVER_ROLES if re.fullmatch(pattern, name)), None)


def _attribute_uses(source: str, filename: str):
    """(where, receiver, attribute) for every public ``x.attr`` in ``source``; ``carla.X`` apart."""
    uses, module_uses = [], []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Attribute) or node.attr.startswith("_"):
            continue
        where = f"{filename}:{node.lineno}"
        if isinstance(node.value, ast.Name) and node.value.id == "carla":
            module_uses.append((where, node.attr))
        else:
            uses.append((where, _receiver(node.value), node.attr))
    return uses, module_uses


def _client_attribute_uses():
    uses, module_uses = [], []
    for package in CLIENT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found = _attribute_uses(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
            uses += found[0]
            module_uses += found[1]
    return uses, module_uses


CLIENT_USES, CARLA_MODULE_USES = _client_attribute_uses()


def _has(obj, name: str) -> bool:
    try:
        _own_attribute(obj, name)                   # really implemented, not a fallback or stand-in
        return True
    except AttributeError:
        return False


def _table_violations(uses, embedded) -> list[str]:
    """Recognised carla objects: attributes missing from CARLA_API, and embedded-only extensions."""
    problems = set()
    for where, receiver, name in uses:
        role = _role_of(receiver)
        if role is None:
            continue
        carla_class, names = CARLA_API[role]
        if _has(carla_class, name):
            if name not in names:
                problems.add(f"{where}: {receiver}.{name} is not in the contract: add {name!r} to CARLA_API[{role!r}]")
        elif role in _REIMPLEMENTED and _has(embedded[role], name):
            problems.add(f"{where}: {receiver}.{name} exists only on the embedded {role}, not on "
                         f"carla.{carla_class.__name__}: it would fail on a CARLA server")
    return sorted(problems)


def _stand_in_violations(uses, embedded) -> list[str]:
    """Unrecognised receivers: an attribute only carla's re-implemented classes have must exist on
    at least one embedded object standing in for such a class."""
    owners: dict[str, list[str]] = {}
    for role in _REIMPLEMENTED:
        for name in dir(CARLA_API[role][0]):
            if not name.startswith("_"):
                owners.setdefault(name, []).append(role)
    return sorted({f"{where}: {receiver}.{name} (carla {'/'.join(owners[name])}) is not implemented by the "
                   f"embedded simulator" for where, receiver, name in uses
                   if _role_of(receiver) is None and name in owners and not _NOT_CARLA.fullmatch(receiver)
                   and not any(_has(embedded[role], name) for role in owners[name])})


def test_the_scan_sees_the_client_code():
    """Guards the safety net itself: the scan reads the packages and recognises their carla objects."""
    assert len(CLIENT_USES) > 200
    roles = {_role_of(receiver) for _, receiver, _ in CLIENT_USES}
    assert {"Client", "World", "Map", "Vehicle", "Image", "WorldSettings"} <= roles
    assert _role_of("_vehicle") == "Vehicle" and _role_of("get_map()") == "Map"
    assert _role_of("minimap") is None and _role_of("cam_bp") == "ActorBlueprint"


def test_the_safety_net_catches_drift(embedded):
    """Code the checks must reject, each naming file:line and the attribute."""
    source = ("world.get_lightmanager()\n"             # carla World method missing from the table
              "world.delta_seconds()\n"                # embedded-only: no such method on a CARLA server
              "hud.ego.get_telemetry_data()\n"         # recognised Vehicle, not in the table
              "a.open_door(0)\n"                       # unrecognised receiver, carla-only, not implemented
              "image.shape, log.debug('x'), a.destroy()\n")      # not carla / implemented: fine
    uses, _ = _attribute_uses(source, "drift.py")
    table = _table_violations(uses, embedded)
    assert len(table) == 3
    assert "drift.py:1: world.get_lightmanager" in table[0] and "CARLA_API['World']" in table[0]
    assert "drift.py:2: world.delta_seconds exists only on the embedded World" in table[1]
    assert "drift.py:3: ego.get_telemetry_data" in table[2]
    assert _stand_in_violations(uses, embedded) == [
        "drift.py:4: a.open_door (carla Vehicle) is not implemented by the embedded simulator"]


def test_client_code_calls_only_what_the_table_lists(embedded):
    """Every carla attribute taken from a recognised carla object is in CARLA_API (so the table
    test checks it on both simulators), and none is an embedded-only extension."""
    problems = _table_violations(CLIENT_USES, embedded)
    assert not problems, "client code and the carla contract disagree:\n" + "\n".join(problems)


def test_carla_only_attributes_on_other_receivers_exist_on_the_embedded_stand_in(embedded):
    problems = _stand_in_violations(CLIENT_USES, embedded)
    assert not problems, "\n".join(problems)


def test_client_code_uses_only_names_the_carla_module_has():
    unknown = sorted({f"{where}: carla.{name}" for where, name in CARLA_MODULE_USES if not hasattr(carla, name)})
    assert not unknown, "not in the carla module:\n" + "\n".join(unknown)
