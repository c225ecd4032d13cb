"""Towns of the embedded simulator: lookup order, download, errors, spawn points, the procedural town."""
import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import carla
from carla_embedded import Client, TownNotFoundError, UnknownTownError
from carla_embedded import towns
from carla_embedded.procedural import generate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "carla_maps"
ALL_TOWNS = ["Town01", "Town02", "Town03", "Town04", "Town05", "Embedded01"]
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/carla_maps not beside the checkout")


@pytest.fixture
def no_maps(monkeypatch, tmp_path):
    """Nothing local, download to an unreachable address (connection refused at once)."""
    monkeypatch.setenv("CARLA_MAPS_DIR", str(tmp_path / "maps"))
    monkeypatch.setenv("CARLA_ROOT", str(tmp_path / "carla"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CARLA_EMBEDDED_MAPS_URL", "http://127.0.0.1:9/OpenDrive")
    return tmp_path


@pytest.mark.parametrize("town", ALL_TOWNS)
def test_town_loads_with_spawn_points_on_driving_lanes(town):
    if town != "Embedded01" and towns.find_local(town) is None:
        pytest.skip(f"{town}.xodr not available offline")
    world = Client().load_world(town)
    carla_map = world.get_map()
    assert carla_map.name == f"Carla/Maps/{town}"
    points = carla_map.get_spawn_points()
    assert len(points) >= 20
    for t in points:
        wp = carla_map.get_waypoint(t.location, project_to_road=False, lane_type=carla.LaneType.Driving)
        assert wp is not None and not wp.is_junction, t
        centre, right = wp.transform.location, wp.transform.get_right_vector()
        lateral = (t.location.x - centre.x) * right.x + (t.location.y - centre.y) * right.y
        assert abs(lateral) < 0.3                                         # on the lane centre line
        assert 0.3 < t.location.z - wp.transform.location.z < 0.7
        heading = math.radians(t.rotation.yaw - wp.transform.rotation.yaw)
        assert math.cos(heading) > 0.99                                   # facing along the lane
    xyz = np.array([[t.location.x, t.location.y, t.location.z] for t in points])   # 3D: bridges
    gaps = np.linalg.norm(xyz[:, None] - xyz[None], axis=2) + np.eye(len(xyz)) * 1e9
    assert gaps.min() >= 8.0                                              # two cars always fit
    assert [str(t) for t in Client().load_world(town).get_map().get_spawn_points()] == [str(t) for t in points]


@pytest.mark.parametrize("name", ["Town02", "/Game/Carla/Maps/Town02", "Carla/Maps/Town02", "Town02_Opt", "town02"])
def test_town_names_as_carla_accepts_them(name):
    assert towns.canonical_town(name) == "Town02"


def test_unknown_town_lists_valid_towns():
    with pytest.raises(UnknownTownError) as err:
        Client().load_world("Town99")
    message = str(err.value)
    assert "'Town99'" in message and all(t in message for t in ALL_TOWNS)
    assert "\n" not in message


def test_missing_town_lists_every_place_searched(no_maps):
    with pytest.raises(TownNotFoundError) as err:
        Client().load_world("Town03")
    message = str(err.value)
    assert "\n" not in message
    for place in (no_maps / "maps" / "Town03.xodr", "$CARLA_ROOT/CarlaUE4/Content/Carla/Maps/OpenDrive",
                  no_maps / "cache" / "carla_embedded" / "maps" / "Town03.xodr", "http://127.0.0.1:9/OpenDrive"):
        assert str(place) in message
    assert "download" in message


def test_unset_variables_are_reported_as_unset(no_maps, monkeypatch):
    monkeypatch.delenv("CARLA_MAPS_DIR")
    monkeypatch.delenv("CARLA_ROOT")
    with pytest.raises(TownNotFoundError, match=r"\$CARLA_MAPS_DIR \(unset\)"):
        towns.find_town_file("Town01")


def test_carla_root_is_searched(no_maps):
    opendrive_dir = no_maps / "carla" / "CarlaUE4/Content/Carla/Maps/OpenDrive"
    opendrive_dir.mkdir(parents=True)
    (opendrive_dir / "Town01.xodr").write_text(generate("Embedded01"))
    assert towns.find_town_file("Town01") == opendrive_dir / "Town01.xodr"


@needs_shared
def test_download_is_verified_and_cached(no_maps, monkeypatch):
    mirror = no_maps / "mirror"
    mirror.mkdir()
    shutil.copy(SHARED / "Town02.xodr", mirror / "Town02.xodr")
    monkeypatch.setenv("CARLA_EMBEDDED_MAPS_URL", mirror.as_uri())
    path = towns.find_town_file("Town02")
    assert path == no_maps / "cache" / "carla_embedded" / "maps" / "Town02.xodr"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == towns.CARLA_TOWNS["Town02"]
    monkeypatch.setenv("CARLA_EMBEDDED_MAPS_URL", "http://127.0.0.1:9/")     # now served from the cache
    assert Client().load_world("Town02").get_map().get_spawn_points()


def test_corrupt_download_is_rejected_and_not_cached(no_maps, monkeypatch):
    mirror = no_maps / "mirror"
    mirror.mkdir()
    (mirror / "Town04.xodr").write_text(generate("Embedded01"))
    monkeypatch.setenv("CARLA_EMBEDDED_MAPS_URL", mirror.as_uri())
    with pytest.raises(TownNotFoundError, match="sha256 mismatch"):
        towns.find_town_file("Town04")
    assert not list((no_maps / "cache").rglob("*.xodr"))


def test_available_maps(no_maps, monkeypatch):
    assert Client().get_available_maps() == ["/Game/Carla/Maps/Embedded01"]
    if SHARED.is_dir():
        monkeypatch.setenv("CARLA_MAPS_DIR", str(SHARED))
        assert Client().get_available_maps() == [f"/Game/Carla/Maps/{t}" for t in ALL_TOWNS]


def test_default_world_needs_no_files(no_maps):
    world = Client().get_world()
    assert world.get_map().name == "Carla/Maps/Embedded01"
    assert world.get_map().get_spawn_points()


# -- the procedural town ------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded01():
    return carla.Map("Embedded01", generate("Embedded01"))


def test_procedural_town_is_a_closed_network(embedded01):
    """Every driving lane leads somewhere and is reached from somewhere: a car can drive forever."""
    lanes = [w for w in embedded01.generate_waypoints(5.0) if w.lane_type == carla.LaneType.Driving]
    assert len(lanes) > 300
    for wp in lanes:
        assert wp.next(6.0) and wp.previous(6.0), (wp.road_id, wp.lane_id, wp.s)
    topology = embedded01.get_topology()
    starts = {(a.road_id, a.lane_id) for a, _ in topology}
    ends = {(b.road_id, b.lane_id) for _, b in topology}
    assert starts == ends                       # no dead ends, no unreachable lanes


def test_procedural_junction_has_every_movement(embedded01):
    junction_lanes = {(w.road_id, w.lane_id) for w in embedded01.generate_waypoints(2.0) if w.is_junction}
    assert len(junction_lanes) == 12            # 4 arms x (straight, left, right)


def test_procedural_town_has_arcs_of_several_radii(embedded01):
    radii = set()
    for road_id in (1, 2, 3, 4):
        wp = embedded01.get_waypoint_xodr(road_id, -1, 0.5)
        while True:
            ahead = [w for w in wp.next(1.0) if w.road_id == road_id]
            if not ahead:
                break
            dyaw = (ahead[0].transform.rotation.yaw - wp.transform.rotation.yaw + 180) % 360 - 180
            if abs(dyaw) > 0.5:
                radii.add(round(math.degrees(1.0) / abs(dyaw)))
            wp = ahead[0]
    centre_radii = {r - 2 for r in radii}       # lane -1 centre is 1.75 m outside the reference arc
    assert {13, 18, 23, 33, 43, 58} <= centre_radii


def test_procedural_lanes_have_markings_and_sidewalks(embedded01):
    wp = embedded01.get_waypoint(carla.Location(x=40.0, y=1.75))
    assert (wp.road_id, wp.lane_id, wp.lane_type) == (1, -1, carla.LaneType.Driving)
    assert wp.lane_width == pytest.approx(3.5)
    assert wp.left_lane_marking.type == carla.LaneMarkingType.SolidSolid
    assert wp.left_lane_marking.color == carla.LaneMarkingColor.Yellow
    assert wp.right_lane_marking.type == carla.LaneMarkingType.Solid
    assert wp.right_lane_marking.color == carla.LaneMarkingColor.White
    assert wp.get_right_lane().lane_type == carla.LaneType.Sidewalk
    other = embedded01.get_waypoint(carla.Location(x=-40.0, y=-1.75))
    assert other.left_lane_marking.type == carla.LaneMarkingType.Broken


def test_any_xodr_on_the_search_path_loads_by_name(no_maps):
    maps = no_maps / "maps"
    maps.mkdir()
    (maps / "MyTown.xodr").write_text(generate("Embedded01"))
    (maps / "Town10HD.xodr").write_text(generate("Embedded01"))
    assert "/Game/Carla/Maps/MyTown" in Client().get_available_maps()
    for name in ("MyTown", "/Game/Carla/Maps/mytown", "Town10HD_Opt"):
        world = Client().load_world(name)
        assert world.get_map().get_spawn_points() and world.get_actors().filter("*traffic_light*")
    assert Client().load_world("mytown").get_map().name == "Carla/Maps/MyTown"


def test_a_carla_town_without_a_file_or_download_says_so(no_maps):
    with pytest.raises(TownNotFoundError, match="Town07.xodr not found.*no pinned download"):
        Client().load_world("Town07")
    with pytest.raises(UnknownTownError, match="Town99.xodr in \\$CARLA_MAPS_DIR"):
        Client().load_world("Town99")


def test_generate_opendrive_world_from_text():
    client = Client()
    world = client.generate_opendrive_world(generate("Embedded01"), carla.OpendriveGenerationParameters())
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    car = world.spawn_actor(world.get_blueprint_library().find("vehicle.audi.a2"),
                            world.get_map().get_spawn_points()[3])
    car.set_autopilot(True)
    start = car.get_location()
    for _ in range(100):
        world.tick()
    assert client.get_world() is world and car.get_location().distance(start) > 10.0


@needs_shared
def test_cars_on_hills_take_the_road_elevation():
    client = Client()
    world = client.load_world("Town03")
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    carla_map = world.get_map()
    def slope(t):
        return abs((carla_map.get_waypoint(t.location).transform.rotation.pitch + 180.0) % 360.0 - 180.0)
    hill = max(carla_map.get_spawn_points(), key=slope)
    assert slope(hill) > 2.0                                              # Town03's ramps
    car = world.spawn_actor(world.get_blueprint_library().find("vehicle.tesla.model3"), hill)
    car.set_autopilot(True)
    client.get_trafficmanager().ignore_lights_percentage(car, 100)
    heights, pitches = [], []
    for _ in range(200):
        world.tick()
        t = car.get_transform()
        road = carla_map.get_waypoint(t.location).transform
        heights.append(abs(t.location.z - road.location.z))
        pitches.append(abs(t.rotation.pitch))
    assert max(heights) < 0.3 and max(pitches) > 1.0
