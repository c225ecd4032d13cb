"""Hills in the embedded cameras (issue 12): the ground follows the town's relief along the view, so on the
slopes of Town03-05 the road ahead rises and falls where the map puts it, labels and depth with it, and a
crest hides what lies behind it; level towns (Town01/02) render exactly as before.

Built on the real ``carla.Map`` of each town from its OpenDRIVE file; the places (a road climbing or falling
several metres within 60 m) are searched in the map's waypoints, not written down.
"""
import math
import os
from functools import lru_cache
from pathlib import Path

import carla
import cv2
import numpy as np
import pytest

from carla_embedded.raster import ElevationField, Material
from carla_embedded.render import Renderer, focal_length, project_points, rotation_matrix
from carla_embedded.sensors import TAG_ROADLINES, TAG_ROADS, ActorBoxes, render_labels

W, H, FOV = 800, 600, 90.0
NOON = carla.WeatherParameters.ClearNoon
NO_ACTORS = ActorBoxes([], np.zeros((0, 8, 3)), np.zeros((0, 5, 3)), np.zeros(0, np.uint8), np.zeros((0, 3)),
                       np.zeros(0, bool))


@lru_cache(maxsize=None)
def town_map(town: str) -> carla.Map:
    return carla.Map(town, (Path(os.environ["CARLA_MAPS_DIR"]) / f"{town}.xodr").read_text())


@lru_cache(maxsize=None)
def renderer(town: str, terrain: bool = True) -> Renderer:
    return Renderer(town_map(town), seed=0, terrain=terrain)


def _xyz(wp) -> np.ndarray:
    loc = wp.transform.location
    return np.array([loc.x, loc.y, loc.z])


# ----------------------------------------------------------------------------- the elevation field
@pytest.mark.parametrize("town", ["Town03", "Town04", "Town05"])
def test_elevation_field_follows_every_lane_over_and_under_bridges(town):
    """Walking any lane 100 m from its height, the field's profile stays on the road surface, on bridges and
    under them (Town04/05 cross roads over roads: there the field has two layers)."""
    field = ElevationField.from_map(town_map(town), use_cache=False)
    errors, two_level = [], 0
    for start in town_map(town).generate_waypoints(20.0):
        path = [start]
        while len(path) < 51 and path[-1].next(2.0):
            path.append(path[-1].next(2.0)[0])
        p = np.array([_xyz(w) for w in path])
        errors.append(np.abs(field.profile(p[:, 0], p[:, 1], p[0, 2]) - p[:, 2]))
        two_level += int(np.sum(np.abs(field.upper(p[:, 0], p[:, 1]) - field.height(p[:, 0], p[:, 1])) > 3.0))
    e = np.concatenate(errors)
    assert np.percentile(e, 99) < 0.15 and e.max() < 1.0, (np.percentile(e, 99), e.max())
    if town in ("Town04", "Town05"):
        assert two_level > 100, "no lane crosses a bridge: the test would not cover the second layer"


def test_elevation_field_is_cached_and_level_towns_are_flat(tmp_path):
    town03 = ElevationField.from_map(town_map("Town03"), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("Town03-elevation-*.npz"))) == 1
    again = ElevationField.from_map(town_map("Town03"), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.low, town03.low)
    np.testing.assert_array_equal(again.high, town03.high)
    assert not town03.flat and town03.low.max() - town03.low.min() > 5.0
    assert ElevationField.from_map(town_map("Town02"), use_cache=False).flat
    assert renderer("Town02").elevation is None


def test_level_town_images_and_labels_do_not_change():
    """Town02 is level: with the relief modelled its RGB, semantic and depth images are bit for bit those of
    the level-ground model (the renderer before hills), for level, pitched and rolled views."""
    with_terrain, level = renderer("Town02"), renderer("Town02", terrain=False)
    wps = town_map("Town02").generate_waypoints(25.0)[::7]
    for i, wp in enumerate(wps[:6]):
        loc, yaw = wp.transform.location, wp.transform.rotation.yaw
        cam = carla.Transform(carla.Location(loc.x, loc.y, loc.z + 2.0),
                              carla.Rotation(pitch=-8.0 * (i % 2), yaw=yaw, roll=5.0 * (i % 3 == 2)))
        np.testing.assert_array_equal(with_terrain.render(cam, 320, 240, FOV, NOON),
                                      level.render(cam, 320, 240, FOV, NOON))
        for a, b in zip(render_labels(with_terrain, NO_ACTORS, cam, 320, 240, FOV, True),
                        render_labels(level, NO_ACTORS, cam, 320, 240, FOV, True)):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- the road on a hill
def _hill(town: str, climb: bool):
    """(start waypoint, points ahead) of the steepest straight 60 m of lane (off junctions for the first
    40 m) that climbs (``climb``) or falls at least 3 m; points every 0.5 m from 20 to 60 m ahead."""
    best = None
    for wp in town_map(town).generate_waypoints(5.0):
        if wp.is_junction:
            continue
        ahead = [wp.next(float(d)) for d in np.arange(5.0, 60.5, 5.0)]
        if not all(ahead) or any(a[0].is_junction for a in ahead[:8]):
            continue
        yaws = np.unwrap(np.radians([wp.transform.rotation.yaw] + [a[0].transform.rotation.yaw for a in ahead]))
        dz = ahead[-1][0].transform.location.z - wp.transform.location.z
        if np.abs(yaws - yaws[0]).max() < math.radians(3) and (dz if climb else -dz) >= 3.0:
            if best is None or abs(dz) > abs(best[1]):
                best = (wp, dz)
    assert best is not None, f"{town} has no lane {'climbing' if climb else 'falling'} 3 m within 60 m"
    wp = best[0]
    return wp, [wp.next(float(d))[0] for d in np.arange(20.0, 60.01, 0.5)]


def _camera(wp, height: float = 2.0) -> carla.Transform:
    loc = wp.transform.location
    return carla.Transform(carla.Location(loc.x, loc.y, loc.z + height), carla.Rotation(yaw=wp.transform.rotation.yaw))


def _paint(img: np.ndarray, material: int) -> np.ndarray:
    b, g, r = (img[..., i].astype(int) for i in range(3))
    if material == Material.MARKING_YELLOW:
        return (r > b + 40) & (g > b + 20)
    return np.minimum(np.minimum(b, g), r) > 140


def _drawn_lines(town: str, terrain: bool, cam: carla.Transform) -> dict:
    """Per marking material: where the camera's RGB image shows that paint on a lane-line pixel (the
    semantic camera's RoadLines, grown by a pixel for anti-aliased edges; so bright sky never counts)."""
    r = renderer(town, terrain)
    rgb = r.render(cam, W, H, FOV, NOON)[..., :3]
    tags = render_labels(r, NO_ACTORS, cam, W, H, FOV, False)[0]
    lines = cv2.dilate((tags == TAG_ROADLINES).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return {m: _paint(rgb, m) & lines for m in (Material.MARKING_WHITE, Material.MARKING_YELLOW)}


def _near(mask: np.ndarray, u: int, v: int) -> bool:
    return bool(mask[max(v - 1, 0):v + 2, max(u - 2, 0):u + 3].any())


@pytest.mark.parametrize("town,climb", [("Town03", True), ("Town04", True), ("Town05", True), ("Town05", False)])
def test_lane_lines_on_a_hill_are_drawn_where_the_map_puts_them(town, climb):
    """On the steepest road of each town (climbing or falling 3.5-7.6 m within 60 m), the painted lane lines
    20-60 m ahead land within 2 px of where project_points puts the map's 3-D line; the level-ground
    rendering drew them at the camera's road height, 10+ px lower (higher) in the image."""
    start, ahead = _hill(town, climb)
    cam = _camera(start)
    hilly, level = _drawn_lines(town, True, cam), _drawn_lines(town, False, cam)
    raster = renderer(town).raster
    checked, on_line, on_level, shift = 0, 0, 0, []
    nearest_row = H
    for wp in ahead:
        right, half = wp.transform.get_right_vector(), wp.lane_width / 2
        uv_centre, _ = project_points([_xyz(wp)], cam, W, H, FOV)
        if uv_centre[0, 1] >= nearest_row:            # hidden behind nearer road (a crest): not seen
            break
        nearest_row = uv_centre[0, 1]
        for side in (-1.0, 1.0):
            p = _xyz(wp) + np.array([right.x, right.y, 0.0]) * side * half
            material = int(raster.material_at(p[0], p[1])[()])
            if material not in (Material.MARKING_WHITE, Material.MARKING_YELLOW):
                continue
            (u, v), = np.round(project_points([p], cam, W, H, FOV)[0]).astype(int)
            at_road_height = [p[0], p[1], start.transform.location.z]      # where the level ground put it
            (uf, vf), = np.round(project_points([at_road_height], cam, W, H, FOV)[0]).astype(int)
            if not (2 <= u < W - 2 and 1 <= v < H - 1 and 2 <= uf < W - 2 and 1 <= vf < H - 1):
                continue
            checked += 1
            on_line += _near(hilly[material], u, v)
            on_level += _near(level[material], uf, vf)
            shift.append(vf - v)
    assert checked >= 40, f"only {checked} painted points ahead"
    assert on_line >= 0.9 * checked, f"paint at the projected pixel for {on_line}/{checked} points"
    assert on_level >= 0.8 * checked, f"level rendering: paint at the level projection for {on_level}/{checked}"
    assert (np.median(shift) >= 10.0) if climb else (np.median(shift) <= -10.0), np.median(shift)


def test_labels_and_depth_of_a_hill_match_the_map():
    """The semantic and depth cameras see the same climbing road: road tags at the projected lane centre
    10-60 m ahead, and there the depth image puts its pixels on the road surface of the map (back-projected
    with the depth, each lies within 0.25 m of the road's height there), several metres up the hill."""
    start, _ = _hill("Town03", climb=True)
    cam = _camera(start)
    tags, depth, _ = render_labels(renderer("Town03"), NO_ACTORS, cam, W, H, FOV, True)
    rgb = renderer("Town03").render(cam, W, H, FOV, NOON)[..., :3]
    centre = np.array([_xyz(start.next(float(d))[0]) for d in np.arange(10.0, 60.01, 2.0)])
    u, v = np.round(project_points(centre, cam, W, H, FOV)[0]).astype(int).T
    assert np.isin(tags[v, u], [TAG_ROADS, TAG_ROADLINES]).all()
    f = focal_length(W, FOV)
    rot = rotation_matrix(0.0, cam.rotation.yaw, 0.0)
    rays = np.stack([np.ones(len(u)), (u - W / 2) / f, -(v - H / 2) / f], axis=1) @ rot.T
    seen = np.array([cam.location.x, cam.location.y, cam.location.z]) + rays * depth[v, u][:, None]
    road_z = np.array([town_map("Town03").get_waypoint(carla.Location(*map(float, p))).transform.location.z
                       for p in seen])
    assert np.abs(seen[:, 2] - road_z).max() < 0.25, np.abs(seen[:, 2] - road_z).max()
    assert seen[:, 2].max() - start.transform.location.z > 4.0
    # every lane-line tag lies on paint in the RGB image (within a pixel), and most paint is tagged
    lines = tags == TAG_ROADLINES
    paint = _paint(rgb, Material.MARKING_YELLOW) | _paint(rgb, Material.MARKING_WHITE)
    near_paint = cv2.dilate(paint.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert lines[H // 2:].sum() > 500
    assert (lines & near_paint).sum() >= 0.9 * lines.sum()


# ----------------------------------------------------------------------------- a crest hides what is behind it
def _crest_scene(world):
    """(camera transform on the Town03 plateau 25 m before the top of a ~10 deg descent, 1 m up, looking down
    it; the spawn transform of a car 60 m down the slope)."""
    m = world.get_map()
    for wp in m.generate_waypoints(2.0):
        back, ahead = wp.previous(25.0), wp.next(60.0)
        if not back or not ahead:
            continue
        drop = wp.transform.location.z - ahead[0].transform.location.z
        level_before = abs(back[0].transform.location.z - wp.transform.location.z) < 0.2
        straight = abs((ahead[0].transform.rotation.yaw - wp.transform.rotation.yaw + 180) % 360 - 180) < 3
        if drop > 7.0 and level_before and straight:
            loc = back[0].transform.location
            cam = carla.Transform(carla.Location(loc.x, loc.y, loc.z + 1.0),
                                  carla.Rotation(yaw=wp.transform.rotation.yaw))
            t = ahead[0].transform
            return cam, carla.Transform(carla.Location(t.location.x, t.location.y, t.location.z + 0.5), t.rotation)
    pytest.fail("Town03 has no crest: a level stretch before a 7 m drop within 60 m")


def test_a_car_behind_a_crest_is_hidden_by_it():
    """A car 60 m down a slope, seen from the plateau before its crest, is hidden by the crest in the RGB
    image and in the labels; raise the camera 10 m and it shows up (so the crest hid it, not the distance)."""
    from carla_embedded.bench import sync_world

    _, world = sync_world("Town03", 0)
    cam_tf, car_tf = _crest_scene(world)
    bl = world.get_blueprint_library()
    images = {}
    cameras = []
    for kind in ("rgb", "instance_segmentation"):
        bp = bl.find(f"sensor.camera.{kind}")
        bp.set_attribute("image_size_x", str(W))
        bp.set_attribute("image_size_y", str(H))
        cameras.append(world.spawn_actor(bp, cam_tf))
        cameras[-1].listen(lambda img, k=kind: images.__setitem__(k, np.frombuffer(bytes(img.raw_data), np.uint8)
                                                                     .reshape(H, W, 4).copy()))
    try:
        world.tick()
        without_car = images["rgb"]
        car = world.spawn_actor(bl.find("vehicle.audi.a2"), car_tf)
        world.tick()
        car_z = car.get_transform().location.z
        assert car_z == pytest.approx(car_tf.location.z - 0.5, abs=0.05), "the car stands on the road"

        def seen():
            inst = images["instance_segmentation"]
            return int(np.sum(inst[..., 0].astype(int) * 256 + inst[..., 1] == car.id % 65536))

        assert seen() == 0
        np.testing.assert_array_equal(images["rgb"], without_car)
        raised = carla.Transform(carla.Location(cam_tf.location.x, cam_tf.location.y, cam_tf.location.z + 10.0),
                                 cam_tf.rotation)
        for c in cameras:
            c.set_transform(raised)
        world.tick()
        assert seen() > 50
    finally:
        for c in cameras:
            c.destroy()
