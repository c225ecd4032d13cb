"""The carla API seam: every carla attribute the project uses exists on the real carla class AND
on the embedded simulator's object, with the same kind (method vs property) and argument names.

To extend: add the attribute name to the role's list in ``CARLA_API`` (or a new role plus a
builder in ``EMBEDDED``). A name missing on the real class fails too, so the table cannot list
something a CARLA server would not have.
"""
import inspect
import re

import pytest

import carla
from carla_embedded import Client
from carla_embedded.actors import LaneInvasionEvent

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
    "World": (carla.World, ["id", "get_map", "get_settings", "apply_settings", "tick", "wait_for_tick",
                            "get_snapshot", "on_tick", "remove_on_tick", "get_weather", "set_weather",
                            "get_blueprint_library", "spawn_actor", "try_spawn_actor", "get_actors",
                            "get_actor", "get_spectator"]),
    "Map": (carla.Map, ["name", "get_spawn_points", "get_waypoint", "get_waypoint_xodr", "generate_waypoints",
                        "get_topology", "to_opendrive", "transform_to_geolocation"]),
    "Waypoint": (carla.Waypoint, ["id", "transform", "road_id", "section_id", "lane_id", "s", "is_junction",
                                  "junction_id", "lane_type", "lane_width", "lane_change", "left_lane_marking",
                                  "right_lane_marking", "next", "previous", "next_until_lane_end",
                                  "previous_until_lane_start", "get_left_lane", "get_right_lane", "get_junction"]),
    "LaneMarking": (carla.LaneMarking, ["type", "color", "width", "lane_change"]),
    "Vehicle": (carla.Vehicle, _ACTOR + ["apply_control", "get_control", "set_autopilot",
                                       "set_target_velocity"]),
    "Spectator": (carla.Actor, ["id", "type_id", "get_transform", "set_transform", "get_location"]),
    "CameraSensor": (carla.Sensor, _SENSOR),
    "LaneInvasionSensor": (carla.Sensor, _SENSOR),
    "Image": (carla.Image, ["frame", "frame_number", "timestamp", "transform", "width", "height", "fov",
                            "raw_data", "save_to_disk", "convert"]),
    "LaneInvasionEvent": (carla.LaneInvasionEvent, ["frame", "frame_number", "timestamp", "transform", "actor",
                                                    "crossed_lane_markings"]),
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
    world.tick()
    waypoint = world.get_map().get_waypoint(car.get_location())
    objects = {
        "Client": client, "World": world, "Map": world.get_map(), "Waypoint": waypoint,
        "LaneMarking": waypoint.left_lane_marking, "Vehicle": car, "Spectator": world.get_spectator(),
        "CameraSensor": camera, "LaneInvasionSensor": lane, "Image": images[-1],
        "LaneInvasionEvent": LaneInvasionEvent(1, 0.05, car.get_transform(), car, [waypoint.left_lane_marking]),
        "BlueprintLibrary": library, "ActorBlueprint": camera_bp, "ActorAttribute": camera_bp.get_attribute("fov"),
        "ActorList": world.get_actors(), "WorldSettings": world.get_settings(), "WorldSnapshot": world.get_snapshot(),
        "Timestamp": world.get_snapshot().timestamp, "WeatherParameters": world.get_weather(),
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


CASES = [(role, name) for role, (_, names) in CARLA_API.items() for name in names]


@pytest.mark.parametrize("role, name", CASES, ids=[f"{r}.{n}" for r, n in CASES])
def test_attribute_exists_on_carla_and_embedded(embedded, role, name):
    carla_class, _ = CARLA_API[role]
    obj = embedded[role]
    real = inspect.getattr_static(carla_class, name, None)
    assert real is not None, f"carla.{carla_class.__name__} has no {name!r}: fix the contract table"
    try:
        ours = inspect.getattr_static(obj, name)          # no __getattr__ fallback: really implemented
    except AttributeError:
        pytest.fail(f"embedded {type(obj).__name__} lacks carla.{carla_class.__name__}.{name}")
    assert _is_method(real) == _is_method(ours), (
        f"{role}.{name}: carla has a {'method' if _is_method(real) else 'property'}, embedded does not")
    if not _is_method(real) or isinstance(obj, carla_class):
        return
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
