"""Renderer of the embedded simulator: camera geometry, what a driver sees, weather, determinism.

Built on the real ``carla.Map`` of Town02 straight from its OpenDRIVE file, so these tests do not depend
on the embedded client. Rasters are cached in a per-session temporary directory.
"""
import math
import os
from pathlib import Path

import carla
import cv2
import numpy as np
import pytest

from carla_embedded.raster import Material, TownRaster
from carla_embedded.render import Lighting, Renderer, focal_length, project_points, rotation_matrix

W, H, FOV = 320, 240, 90.0


@pytest.fixture(scope="module")
def town02():
    path = Path(os.environ["CARLA_MAPS_DIR"]) / "Town02.xodr"
    return carla.Map("Town02", path.read_text())


@pytest.fixture(scope="module")
def raster(town02, tmp_path_factory):
    return TownRaster.from_map(town02, cache_dir=tmp_path_factory.mktemp("rasters"))


@pytest.fixture(scope="module")
def renderer(town02, raster):
    return Renderer(town02, seed=0, raster=raster)


@pytest.fixture(scope="module")
def lane_camera(town02):
    """Driver's view 2 m above the centre of a straight driving lane, looking along it."""
    for wp in town02.generate_waypoints(2.0):
        if wp.is_junction or wp.lane_type != carla.LaneType.Driving:
            continue
        ahead = wp.next(30.0)
        if ahead and abs(((ahead[0].transform.rotation.yaw - wp.transform.rotation.yaw) + 180) % 360 - 180) < 1 \
                and not ahead[0].is_junction:
            loc, yaw = wp.transform.location, wp.transform.rotation.yaw
            return carla.Transform(carla.Location(x=loc.x, y=loc.y, z=loc.z + 2.0), carla.Rotation(yaw=yaw))
    pytest.fail("Town02 has no straight lane")


def _bgr(img):
    return img[..., :3].astype(np.float64)


# ----------------------------------------------------------------------------- camera geometry
@pytest.mark.parametrize("pitch,yaw,roll", [(0, 0, 0), (10, 30, 20), (-35, 170, -5), (5, -90, 0)])
def test_rotation_matrix_matches_carla(pitch, yaw, roll):
    tf = carla.Transform(carla.Location(1, 2, 3), carla.Rotation(pitch=pitch, yaw=yaw, roll=roll))
    ours = rotation_matrix(pitch, yaw, roll)
    theirs = np.array(tf.get_matrix())[:3, :3]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_project_points_matches_pinhole_by_hand():
    cam = carla.Transform(carla.Location(x=10.0, y=5.0, z=2.0), carla.Rotation(yaw=90.0))
    f = 320 / (2 * math.tan(math.radians(90) / 2))  # = 160
    # Camera looks along +y; its right is -x, its up is +z.
    pts = np.array([[10.0, 25.0, 2.0],   # straight ahead, 20 m
                    [8.0, 25.0, 2.0],    # 2 m to the camera's right
                    [10.0, 15.0, 0.0]])  # 10 m ahead, 2 m lower
    uv, depth = project_points(pts, cam, 320, 240, 90.0)
    np.testing.assert_allclose(depth, [20.0, 20.0, 10.0])
    np.testing.assert_allclose(uv[0], [160.0, 120.0])
    np.testing.assert_allclose(uv[1], [160.0 + f * 2.0 / 20.0, 120.0])
    np.testing.assert_allclose(uv[2], [160.0, 120.0 + f * 2.0 / 10.0])
    assert focal_length(320, 90.0) == pytest.approx(f)


def test_lane_line_is_drawn_where_the_camera_projects_it(renderer, raster, lane_camera, town02):
    """The painted centre line, seen by the camera, lands where project_points puts it."""
    wp = town02.get_waypoint(lane_camera.location)
    left_edge = wp.transform.location - wp.transform.get_right_vector() * (wp.lane_width / 2)
    # walk along the line to a dash that is painted (yellow in the raster), 6..20 m ahead
    fwd = wp.transform.get_forward_vector()
    for d in np.arange(6.0, 20.0, 0.25):
        p = left_edge + fwd * float(d)
        if raster.material_at(p.x, p.y)[()] == Material.MARKING_YELLOW:
            break
    else:
        pytest.fail("no painted centre-line dash ahead of the camera")
    uv, depth = project_points([[p.x, p.y, wp.transform.location.z]], lane_camera, W, H, FOV)
    u, v = np.round(uv[0]).astype(int)
    img = renderer.render(lane_camera, W, H, FOV, carla.WeatherParameters.ClearNoon)
    patch = _bgr(img)[v - 1:v + 2, u - 2:u + 3].reshape(-1, 3)
    b, g, r = patch.max(axis=0)
    assert r > b + 40 and g > b + 20, f"no yellow paint at the projected pixel ({u},{v}): {patch.mean(0)}"


# ----------------------------------------------------------------------------- image content
def test_output_is_new_bgra_uint8(renderer, lane_camera):
    a = renderer.render(lane_camera, W, H, FOV, carla.WeatherParameters.ClearNoon)
    b = renderer.render(lane_camera, W, H, FOV, carla.WeatherParameters.ClearNoon)
    assert a.shape == (H, W, 4) and a.dtype == np.uint8
    assert np.all(a[..., 3] == 255)
    assert a.std() > 10, "image is blank"
    assert not np.shares_memory(a, b)
    np.testing.assert_array_equal(a, b)  # deterministic


def test_driver_sees_road_below_and_sky_above(renderer, lane_camera, raster):
    img = _bgr(renderer.render(lane_camera, W, H, FOV, carla.WeatherParameters.ClearNoon))
    bottom = img[-20:, W // 2 - 20:W // 2 + 20].reshape(-1, 3).mean(0)
    top = img[:15, :].reshape(-1, 3).mean(0)
    b, g, r = bottom
    assert max(b, g, r) - min(b, g, r) < 25 and 40 < g < 140, f"bottom centre is not asphalt grey: {bottom}"
    assert top[0] > top[2] + 30, f"top rows are not blue sky: {top}"


@pytest.mark.parametrize("roll", [0.0, 15.0])
def test_horizon_row_follows_pitch_and_roll(renderer, lane_camera, roll):
    """Pitching the camera up moves the horizon down; roll tilts it (left side lower for roll > 0)."""
    loc, yaw = lane_camera.location, lane_camera.rotation.yaw
    cam = carla.Transform(carla.Location(x=loc.x, y=loc.y, z=60.0), carla.Rotation(pitch=10.0, yaw=yaw, roll=roll))
    img = _bgr(renderer.render(cam, W, H, FOV, carla.WeatherParameters.ClearNoon))
    f = focal_length(W, FOV)
    expected_centre = H / 2 + f * math.tan(math.radians(10.0))  # horizon of a camera pitched 10 deg up
    blue = img[..., 0] - img[..., 2]  # sky is much bluer than the ground
    for u in (W // 4, W // 2, 3 * W // 4):
        col = blue[:, u]
        sky_rows = np.nonzero(col > 25)[0]
        horizon = sky_rows.max() if len(sky_rows) else 0
        expected = expected_centre - math.tan(math.radians(roll)) * (u - W / 2)
        assert abs(horizon - expected) < 12, (u, horizon, expected)


# ----------------------------------------------------------------------------- weather and seeds
PRESETS = ["ClearNoon", "CloudySunset", "WetNoon", "HardRainNoon", "ClearNight"]


def test_weather_presets_look_different(renderer, lane_camera):
    imgs = {p: _bgr(renderer.render(lane_camera, W, H, FOV, getattr(carla.WeatherParameters, p))) for p in PRESETS}
    means = {p: img.mean(axis=(0, 1)) for p, img in imgs.items()}
    road = {p: img[2 * H // 3:, W // 4:3 * W // 4].mean(axis=(0, 1)) for p, img in imgs.items()}
    for i, a in enumerate(PRESETS):
        for b in PRESETS[i + 1:]:
            # WetNoon differs from ClearNoon on the road only (wet asphalt, puddles), as in CARLA
            differ = max(np.abs(means[a] - means[b]).max(), np.abs(road[a] - road[b]).max())
            assert differ > 8, f"{a} and {b} look alike: {means[a]} vs {means[b]}"
    assert means["ClearNight"].mean() < 0.5 * means["ClearNoon"].mean()
    assert means["HardRainNoon"].mean() < means["ClearNoon"].mean()
    sunset = means["CloudySunset"]
    assert sunset[2] > sunset[0], "sunset light should be warm (more red than blue)"


def test_wet_road_is_darker_than_dry_road(renderer, lane_camera):
    dry = carla.WeatherParameters(sun_altitude_angle=45.0)
    wet = carla.WeatherParameters(sun_altitude_angle=45.0, wetness=100.0)
    a = _bgr(renderer.render(lane_camera, W, H, FOV, dry))[-40:, W // 2 - 30:W // 2 + 30].mean()
    b = _bgr(renderer.render(lane_camera, W, H, FOV, wet))[-40:, W // 2 - 30:W // 2 + 30].mean()
    assert b < a - 10


def test_fog_hides_the_distance(renderer, lane_camera):
    clear = carla.WeatherParameters(sun_altitude_angle=45.0, fog_density=0.0)
    foggy = carla.WeatherParameters(sun_altitude_angle=45.0, fog_density=90.0, fog_distance=0.0)
    band = slice(H // 2 - 30, H // 2 + 10)  # objects and road 20..100 m ahead
    a = _bgr(renderer.render(lane_camera, W, H, FOV, clear))[band].std()
    b = _bgr(renderer.render(lane_camera, W, H, FOV, foggy))[band].std()
    assert b < 0.6 * a


def test_seed_changes_scenery_not_road(town02, raster, lane_camera):
    a = Renderer(town02, seed=1, raster=raster)
    b = Renderer(town02, seed=2, raster=raster)
    assert a.scenery.num_objects > 50
    ia = a.render(lane_camera, W, H, FOV, carla.WeatherParameters.ClearNoon)
    ib = b.render(lane_camera, W, H, FOV, carla.WeatherParameters.ClearNoon)
    assert np.mean(np.any(ia != ib, axis=2)) > 0.02
    np.testing.assert_array_equal(ia[-30:, W // 2 - 20:W // 2 + 20], ib[-30:, W // 2 - 20:W // 2 + 20])


def test_scenery_stays_off_the_road(renderer, raster):
    sc = renderer.scenery
    pts = np.concatenate([sc.box_centre[:, :2], sc.sphere_centre[:, :2], sc.cone_base[:, :2]])
    mats = raster.material_at(pts[:, 0], pts[:, 1])
    paved = np.isin(mats, [Material.ROAD, Material.MARKING_WHITE, Material.MARKING_YELLOW])
    assert not paved.any(), f"{paved.sum()} objects stand on the road"


# ----------------------------------------------------------------------------- raster
def test_raster_paints_lanes_sidewalks_and_markings(raster, town02):
    counts = np.bincount(raster.material.ravel(), minlength=len(Material))
    for m in (Material.GROUND, Material.ROAD, Material.SIDEWALK, Material.CURB, Material.MARKING_YELLOW):
        assert counts[m] > 1000, f"{m.name} missing from the Town02 raster"
    # every driving waypoint, junctions included, lies on asphalt or paint
    wps = town02.generate_waypoints(5.0)
    mats = raster.material_at([w.transform.location.x for w in wps], [w.transform.location.y for w in wps])
    assert np.isin(mats, [Material.ROAD, Material.MARKING_WHITE, Material.MARKING_YELLOW]).mean() > 0.99
    u, v = raster.world_to_pixel(12.5, -3.0)
    x, y = raster.pixel_to_world(u, v)
    assert (x, y) == pytest.approx((12.5, -3.0))


def test_raster_cache_roundtrip(town02, tmp_path):
    a = TownRaster.from_map(town02, resolution=0.5, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    b = TownRaster.from_map(town02, resolution=0.5, cache_dir=tmp_path)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.material, b.material)
    assert a.bounds == pytest.approx(b.bounds)


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=0, height=240, fov_deg=90.0), "image size"),
    (dict(width=320, height=240, fov_deg=180.0), "fov"),
    (dict(width=320.5, height=240, fov_deg=90.0), "image size"),
])
def test_bad_render_arguments_raise_one_line(renderer, lane_camera, kwargs, match):
    with pytest.raises(ValueError, match=match):
        renderer.render(lane_camera, weather=carla.WeatherParameters.ClearNoon, **kwargs)


def test_bad_raster_resolution(town02):
    with pytest.raises(ValueError, match="resolution"):
        TownRaster.from_map(town02, resolution=0.0)


def test_lighting_night_is_dark_and_lamps_on():
    night = Lighting.from_weather(carla.WeatherParameters.ClearNight)
    noon = Lighting.from_weather(carla.WeatherParameters.ClearNoon)
    assert night.lamps_on and not noon.lamps_on
    assert np.trace(night.colour_matrix) < 0.4 * np.trace(noon.colour_matrix)


def test_image_does_not_depend_on_the_previous_frames(town02, raster, lane_camera):
    """The sky of the last frame is reused where the view's heading and pitch barely change: a camera that
    turns and tilts by small steps gets exactly the image drawn from scratch (after an unrelated view)."""
    steady, fresh = Renderer(town02, seed=0, raster=raster), Renderer(town02, seed=0, raster=raster)
    loc, rot = lane_camera.location, lane_camera.rotation
    # yaw +0.01 deg moves a few of the sky's columns, pitch +0.02 deg a few of its rows; the others redo it all
    steps = [(0.0, 0.0), (0.0, 0.01), (0.0, 0.3), (0.02, 0.3), (1.5, 0.3), (1.5, 7.0), (-2.0, -40.0)]
    for pitch, dyaw in steps:
        pose = carla.Transform(loc, carla.Rotation(pitch=rot.pitch + pitch, yaw=rot.yaw + dyaw))
        a = steady.render(pose, W, H, FOV, carla.WeatherParameters.CloudyNoon)
        fresh.render(carla.Transform(loc, carla.Rotation(pitch=-10.0, yaw=rot.yaw + 120.0)), W, H, FOV,
                     carla.WeatherParameters.CloudyNoon)
        b = fresh.render(pose, W, H, FOV, carla.WeatherParameters.CloudyNoon)
        np.testing.assert_array_equal(a, b, err_msg=f"pitch {pitch}, yaw +{dyaw}")


def test_sky_reuse_is_exact_on_a_noisy_panorama(renderer):
    """The reused sky (only the rows/columns whose source changed redrawn) is pixel for pixel the warp of the
    panorama, also where neighbouring panorama pixels differ (a real sky is too smooth to show a slip)."""
    from types import SimpleNamespace

    from carla_embedded.render import _PANO_AZ_PAD, _PANO_DEG_PER_PX

    look = SimpleNamespace(pano=np.random.default_rng(0).integers(0, 256, (600, 3800, 4), dtype=np.uint8))
    f = focal_length(W, FOV)
    for pitch, yaw in [(0.0, 30.0), (0.0, 30.01), (0.02, 30.01), (0.05, 30.03), (0.05, 30.03), (3.0, 90.0)]:
        dst = np.zeros((H // 2, W, 4), np.uint8)
        renderer._draw_sky(dst, pitch, yaw, W, W / 2, H / 2, f, look)
        k = math.degrees(1.0 / f) / _PANO_DEG_PER_PX
        m = np.array([[k, 0.0, (yaw % 360.0 + _PANO_AZ_PAD) / _PANO_DEG_PER_PX - k * W / 2],
                      [0.0, k, (90.0 - pitch) / _PANO_DEG_PER_PX - k * H / 2]])
        warp = cv2.warpAffine(look.pano, m, (W, H // 2), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
        np.testing.assert_array_equal(dst, warp, err_msg=f"pitch {pitch}, yaw {yaw}")
