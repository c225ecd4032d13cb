"""The sensors of the embedded world: cameras (RGB, depth, semantic and instance segmentation),
collision, obstacle, GNSS, IMU, lidar and radar, with CARLA 0.9.14's blueprint ids, attributes and
data types. ``sensor.camera.dvs``, ``.optical_flow`` and ``.normals`` are listed (scripts such as
manual_control.py look them up at start) but spawning them raises ``UnsupportedFeatureError``.

Every sensor sees the same scene the RGB renderer draws (``render.py``):

* the ground, its surface from the town raster (road, markings, sidewalks, terrain): for cameras the
  renderer's ground planes (the relief along the view on hills), for lidar, radar and the obstacle
  sensor the level plane at the road height under the sensor;
* the roadside scenery (:mod:`carla_embedded.scenery`): buildings, tree trunks and crowns, conifers,
  poles and lamp posts;
* every other actor of the world as a box (:func:`actor_boxes`): vehicles with their
  ``bounding_box``, yaw and the road's pitch, walkers as upright boxes, traffic lights as poles,
  anything else with a bounding box as a static box, each at the height its transform gives. Actors
  are found by their ``type_id`` (``vehicle.*``, ``walker.*``, ``traffic.traffic_light*``,
  ``traffic.*``, ``static.*``), so actors added later appear too.

Cameras paint this scene far to near by object distance, exactly as the RGB image is painted (so
labels and depth match the RGB pixels; objects are not z-tested against each other, and the ground
hides them only behind a crest, as in the RGB image); each face's depth is its exact per-pixel planar
depth, the ground's that of its band's plane. Lidar and radar cast rays against the same boxes and
their level ground plane (scenery standing on it).

Semantic tags are CARLA 0.9.14's (the Cityscapes-aligned table of ``carla.CityObjectLabel``: Roads 1,
Sidewalks 2, Buildings 3, Poles 6, TrafficLight 7, Vegetation 9, Terrain 10, Sky 11, Pedestrians 12,
Car 14, RoadLines 24; 0.9.13 and older used Road 7, Vehicles 10, ...). Depth is CARLA's planar depth
(along the camera axis) encoded in 24 bits of R, G, B with a 1000 m far plane.

Data classes: carla's ``Image`` comes from :class:`~carla_embedded.actors.Image`;
``carla.LidarDetection`` and ``carla.RadarDetection`` are the real carla classes (they can be built
from Python); ``CollisionEvent``, ``ObstacleDetectionEvent``, ``GnssMeasurement``, ``IMUMeasurement``,
``LidarMeasurement`` and ``RadarMeasurement`` cannot be built from Python, so they are small classes
here with the same attribute names.

Not modelled (accepted, recorded in ``sensor.unmodelled_attributes`` when set to a non-default value,
and logged): the RGB camera's exposure, lens, bloom, flare, motion blur, depth of field, white
balance and tone-mapping attributes (``UNMODELLED_CAMERA_ATTRIBUTES``); ``lens_*`` of the depth and
semantic cameras; the obstacle detector's ``debug_linetrace``. Modelled: image size, fov,
``sensor_tick``, ``gamma`` (RGB), every lidar/radar/GNSS/IMU/obstacle attribute listed below.
"""
from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

import carla

from .actors import Actor, Image, RgbCamera as _BaseCamera, Sensor, Vehicle
from .blueprints import ActorAttribute, ActorBlueprint
from .errors import UnsupportedFeatureError
from .render import ExtraBoxes, _cam_to_uv, _clip_near, _level_pixel_maps, _row_shift, focal_length, rotation_matrix
from .raster import Material
from .scenery import BOX_FACES, KIND_BUILDING, KIND_LAMP_HEAD, KIND_POLE, KIND_TRUNK

logger = logging.getLogger(__name__)

_TYPE = carla.ActorAttributeType
GRAVITY = 9.81                     # m/s^2, what a resting IMU reads on its z axis (as CARLA)
DEPTH_FAR_M = 1000.0               # CARLA's depth camera far plane
_NEAR = 0.15
_FIRST = operator.itemgetter(0)   # painter's sort key: the distance


# ------------------------------------------------------------------------------------------
# Semantic tags (CARLA 0.9.14) and the Cityscapes palette
# ------------------------------------------------------------------------------------------
def _label(name: str) -> int:
    return int(getattr(carla.CityObjectLabel, name))


TAG_NONE, TAG_ROADS, TAG_SIDEWALKS = _label("NONE"), _label("Roads"), _label("Sidewalks")
TAG_BUILDINGS = _label("Buildings")
TAG_POLES, TAG_TRAFFIC_LIGHT, TAG_TRAFFIC_SIGNS = _label("Poles"), _label("TrafficLight"), _label("TrafficSigns")
TAG_VEGETATION, TAG_TERRAIN, TAG_SKY = _label("Vegetation"), _label("Terrain"), _label("Sky")
TAG_PEDESTRIANS, TAG_CAR, TAG_TRUCK, TAG_BUS = _label("Pedestrians"), _label("Car"), _label("Truck"), _label("Bus")
TAG_MOTORCYCLE, TAG_BICYCLE, TAG_STATIC, TAG_ROADLINES = (_label("Motorcycle"), _label("Bicycle"), _label("Static"),
                                                          _label("RoadLines"))

#: RGB colour per tag, CARLA 0.9.14's ``CityScapesPalette.h`` (index = tag; larger tags wrap, as in CARLA).
CITYSCAPES_PALETTE = np.array([
    (0, 0, 0), (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32), (110, 190, 160),
    (170, 120, 50), (55, 90, 80), (45, 60, 150), (157, 234, 50), (81, 0, 81), (150, 100, 100), (230, 150, 140),
    (180, 165, 180)], dtype=np.uint8)

_MATERIAL_TAG = np.full(256, TAG_TERRAIN, np.uint8)
_MATERIAL_TAG[[Material.ROAD, Material.SHOULDER]] = TAG_ROADS
_MATERIAL_TAG[[Material.SIDEWALK, Material.CURB]] = TAG_SIDEWALKS
_MATERIAL_TAG[[Material.MARKING_WHITE, Material.MARKING_YELLOW]] = TAG_ROADLINES
_KIND_TAG = {KIND_BUILDING: TAG_BUILDINGS, KIND_TRUNK: TAG_VEGETATION, KIND_POLE: TAG_POLES,
             KIND_LAMP_HEAD: TAG_POLES}
_BASE_TYPE_TAG = {"car": TAG_CAR, "van": TAG_CAR, "truck": TAG_TRUCK, "bus": TAG_BUS,
                  "motorcycle": TAG_MOTORCYCLE, "bicycle": TAG_BICYCLE}


def labels_to_cityscapes(tags: np.ndarray) -> np.ndarray:
    """(H,W) uint8 tags -> (H,W,3) BGR Cityscapes colours (``ColorConverter.CityScapesPalette``)."""
    return CITYSCAPES_PALETTE[tags % len(CITYSCAPES_PALETTE)][..., ::-1]


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
    """Planar depth (m) -> BGRA uint8 with CARLA's encoding: (R + G*256 + B*65536) / (2^24 - 1) * 1000 m."""
    clipped = cv2.max(cv2.min(np.asarray(depth_m, np.float32), DEPTH_FAR_M), 0.0)
    n = cv2.multiply(clipped, (2 ** 24 - 1) / DEPTH_FAR_M, dtype=cv2.CV_32S)     # rounded to nearest
    n += np.int32(-(1 << 24))                          # bits 24..31 set: alpha 255 (two's complement)
    rgba = n.view(np.uint8).reshape(n.shape + (4,))    # little-endian bytes: R, G, B, A
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA)


def decode_depth(bgra: np.ndarray) -> np.ndarray:
    """BGRA depth image -> metres (float32), the inverse of :func:`encode_depth`."""
    b, g, r = (bgra[..., i].astype(np.float64) for i in range(3))
    return ((r + g * 256.0 + b * 65536.0) / (2 ** 24 - 1) * DEPTH_FAR_M).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Other actors as boxes
# ------------------------------------------------------------------------------------------
_UNIT = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                  [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=np.float64)
#: outward normals of BOX_FACES in the box's frame (x forward, y right, z up)
_LOCAL_NORMALS = np.array([[0, -1, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1]], dtype=np.float64)
#: default half sizes (m) and box centre height for actors whose bounding box is empty
_DEFAULT_EXTENT = {"walker": (0.25, 0.25, 0.9), "traffic_light": (0.15, 0.15, 2.6), "traffic": (0.1, 0.1, 1.2)}


@dataclass
class ActorBoxes:
    """Other actors as oriented boxes (a car: body and cabin, so one actor may own several):
    ``corners`` (N,8,3) world corners (standing where the actor's transform puts its ground), ``normals``
    (N,5,3), ``tags`` (N,), ``colour`` (N,3) BGR, ``dynamic`` (N,) vehicles and walkers,
    ``actors`` the owning actor of each box, ``ids`` (N,) their ids."""

    actors: list
    corners: np.ndarray
    normals: np.ndarray
    tags: np.ndarray
    colour: np.ndarray
    dynamic: np.ndarray
    ids: np.ndarray = None

    def __post_init__(self):
        if self.ids is None:
            self.ids = np.array([a.id for a in self.actors], np.int64)
        self._draw = None

    def draw_boxes(self) -> ExtraBoxes:
        """The boxes as the renderer draws them (built once: every RGB camera of the frame shares them)."""
        if self._draw is None:
            colour = np.repeat(self.colour[:, None, :], 5, axis=1)
            colour[:, 4] *= 0.8                                      # roofs a little darker than the sides
            self._draw = ExtraBoxes(self.corners, self.normals, colour)
        return self._draw

    def select(self, mask: np.ndarray) -> "ActorBoxes":
        idx = np.nonzero(mask)[0]
        return ActorBoxes([self.actors[i] for i in idx], self.corners[idx], self.normals[idx], self.tags[idx],
                          self.colour[idx], self.dynamic[idx], self.ids[idx])


def _local_corners(extent, centre, z0: float = 0.0) -> np.ndarray:
    """(8,3) box corners in the actor's frame, from ``z0`` above its ground up to ``z0 + 2 * extent.z``."""
    ex, ey, ez = extent
    return np.column_stack([_UNIT[:, 0] * ex + centre[0], _UNIT[:, 1] * ey + centre[1],
                            z0 + (_UNIT[:, 2] + 1.0) * ez])


_GLASS = (52, 46, 42)              # BGR of a car's cabin (windows)
_BODY_SHARE = 0.62                 # share of a car's height below the windows


def _parts(category: str, extent, centre, colour) -> list:
    """The boxes an actor is drawn with, as (ex, ey, ez, x, y, z0, colour) in its frame: a car is a
    body plus a narrower cabin, a default traffic light a pole plus its head; anything else one box."""
    ex, ey, ez = extent
    if category == "vehicle":
        body = _BODY_SHARE * ez
        return [(ex, ey, body, centre[0], centre[1], 0.0, colour),
                (0.55 * ex, 0.88 * ey, ez - body, centre[0] - 0.1 * ex, centre[1], 2.0 * body, _GLASS)]
    if category == "traffic_light" and tuple(extent) == _DEFAULT_EXTENT["traffic_light"]:
        return [(0.08, 0.08, ez, centre[0], centre[1], 0.0, colour),
                (0.2, 0.2, 0.45, centre[0], centre[1], 2.0 * ez - 0.9, (30, 30, 30))]
    return [(ex, ey, ez, centre[0], centre[1], 0.0, colour)]


def _category(type_id: str) -> str | None:
    if type_id.startswith("vehicle."):
        return "vehicle"
    if type_id.startswith("walker.") and not type_id.startswith("walker.controller"):
        return "walker"
    if type_id.startswith("traffic.traffic_light"):
        return "traffic_light"
    if type_id.startswith("traffic.") and type_id not in ("traffic.unknown",):
        return "traffic"
    if type_id.startswith("static."):
        return "static"
    return None                    # sensors, spectator, controllers: nothing to see


def _colour(attributes: dict, category: str) -> tuple:
    if category == "vehicle":
        try:
            r, g, b = (int(v) for v in str(attributes.get("color", "128,128,128")).split(","))
            return (b, g, r)
        except ValueError:
            return (128, 128, 128)
    return {"walker": (70, 80, 130), "traffic_light": (45, 45, 45), "traffic": (90, 95, 100)}.get(category,
                                                                                               (110, 110, 110))


def actor_boxes(world, exclude=()) -> ActorBoxes:
    """Every visible actor of ``world`` (except those in ``exclude``) as boxes, see :class:`ActorBoxes`.

    Built once per frame (and actor count) and shared by every sensor of that frame: all of them see
    the world as it was when the frame's sensors ran, as in CARLA. Actors moved between ticks are
    seen from the next tick on.
    """
    key = (world._frame, world._elapsed, len(world._actors))
    cached = world.__dict__.get("_sensor_actor_boxes")
    if cached is None or cached[0] != key:
        cached = [key, None, {}]                  # the boxes are built on first need (not if all are skipped)
        world.__dict__["_sensor_actor_boxes"] = cached
    selections = cached[2]
    skip = tuple(sorted({a.id for a in exclude if a is not None}))
    if skip in selections:                        # the cameras of one rig share their selection
        return selections[skip]
    boxes = cached[1]
    if boxes is None:
        layout = _layout(world)
        if skip and layout[6] <= set(skip):       # every moving actor skipped (a lone ego's own camera): the
            boxes = layout[2]                     # still actors' boxes are posed already, none to pose now
        else:
            boxes = cached[1] = _build_actor_boxes(world)
    if not skip or not len(boxes.actors):
        return boxes
    if skip not in selections:
        keep = boxes.ids != skip[0]                # a camera skips its parent: one or two ids, no np.isin
        for actor_id in skip[1:]:
            keep &= boxes.ids != actor_id
        selections[skip] = boxes.select(keep)
    return selections[skip]


@dataclass
class _BoxSpec:
    """What an actor is drawn with, fixed at spawn (type, bounding box, attributes): its parts as
    (ex, ey, ez, x, y, z0) rows in its frame, their colours, its tag and whether it moves by itself."""

    parts: np.ndarray
    colours: list
    tag: int
    moving: bool


def _box_spec(actor) -> _BoxSpec | None:
    category = _category(actor.type_id)
    if category is None:
        return None
    bbox = actor.bounding_box
    extent = (bbox.extent.x, bbox.extent.y, bbox.extent.z)
    centre = (bbox.location.x, bbox.location.y)
    if min(extent) <= 0.0:
        default = _DEFAULT_EXTENT.get(category)
        if default is None:
            return None
        extent, centre = default, (0.0, 0.0)
    attributes = actor.attributes
    if category == "vehicle":
        tag = _BASE_TYPE_TAG.get(str(attributes.get("base_type", "car")).lower(), TAG_CAR)
    else:
        tag = {"walker": TAG_PEDESTRIANS, "traffic_light": TAG_TRAFFIC_LIGHT, "traffic": TAG_TRAFFIC_SIGNS,
               "static": TAG_STATIC}[category]
    parts = _parts(category, extent, centre, _colour(attributes, category))
    size = np.array([q[:6] for q in parts], np.float64)
    size[:, 5] += _base_z(actor, extent)
    return _BoxSpec(size, [q[6] for q in parts], tag, category in ("vehicle", "walker"))


def _base_z(actor, extent) -> float:
    """Height of an actor's ground relative to its location: a walker's location is its centre (as in
    CARLA), every other actor's its base (a car's is the road surface the world keeps it on)."""
    if actor.type_id.startswith("walker."):
        return float(actor.bounding_box.location.z) - float(extent[2])
    return 0.0


def _ground_pose(actor) -> tuple:
    """(x, y, z, yaw deg, pitch deg) of an actor as ``get_transform()`` reports them (carla keeps float32),
    without building the transform for the cars, whose pose is plain numbers. Cars pitch with the road
    under them; everything else is drawn upright."""
    if isinstance(actor, Vehicle):
        s = actor._state
        return s.x, s.y, actor._z, s.yaw, actor._pitch
    t = actor._transform if actor._parent is None else actor.get_transform()
    return t.location.x, t.location.y, t.location.z, t.rotation.yaw, 0.0


def _pose_boxes(size: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World corners (P,8,3) and face normals (P,5,3) of parts ``size`` (P,6: ex, ey, ez, x, y, z0 in the
    actor's frame) at ``pose`` (P,5: x, y, z, yaw rad, pitch rad; CARLA's rotation with zero roll), all at
    once."""
    lx = _UNIT[None, :, 0] * size[:, None, 0] + size[:, None, 3]          # (P,8) in the actor's frame
    ly = _UNIT[None, :, 1] * size[:, None, 1] + size[:, None, 4]
    lz = size[:, None, 5] + (_UNIT[None, :, 2] + 1.0) * size[:, None, 2]
    c, s = np.cos(pose[:, 3])[:, None], np.sin(pose[:, 3])[:, None]
    cp, sp = np.cos(pose[:, 4])[:, None], np.sin(pose[:, 4])[:, None]
    run, rise = cp * lx - sp * lz, sp * lx + cp * lz                     # pitched (nose up for pitch > 0)
    corners = np.stack([pose[:, None, 0] + c * run - s * ly, pose[:, None, 1] + s * run + c * ly,
                        pose[:, None, 2] + rise], axis=-1)
    n = _LOCAL_NORMALS[None]
    n_run, n_rise = cp * n[..., 0] - sp * n[..., 2], sp * n[..., 0] + cp * n[..., 2]
    normals = np.stack([c * n_run - s * n[..., 1], s * n_run + c * n[..., 1], n_rise], axis=-1)
    return corners, normals


def _build_actor_boxes(world) -> ActorBoxes:
    """Each actor's parts are worked out once (``_BoxSpec``, kept per actor id); the boxes of actors
    that do not move by themselves (Town03: ~100 traffic lights) are kept until an actor is added,
    removed or teleported (``World._actors_version``), and only the cars', walkers' and attached
    actors' are recomputed each frame, all at once."""
    _, moving, boxes, rows, size, owner_of_part, _ = _layout(world)
    if not moving:
        return boxes
    pose = np.array([_ground_pose(a) for a in moving], np.float32).astype(np.float64)[owner_of_part]
    pose[:, 3:] = np.radians(pose[:, 3:])
    corners, normals = boxes.corners.copy(), boxes.normals.copy()
    corners[rows], normals[rows] = _pose_boxes(size, pose)
    return ActorBoxes(boxes.actors, corners, normals, boxes.tags, boxes.colour, boxes.dynamic, boxes.ids)


def _layout(world) -> tuple:
    """(version, moving actors, boxes with the still ones posed, rows of the moving actors' parts, their sizes,
    index of each such part's actor among the moving ones, ids of the moving actors), rebuilt when the world's
    actors change."""
    version = (world._actors_version, len(world._actors))
    layout = world.__dict__.get("_sensor_box_layout")
    if layout is None or layout[0] != version:
        specs = world.__dict__.setdefault("_sensor_box_specs", {})
        if len(specs) > 2 * len(world._actors) + 64:                      # forget destroyed actors
            for actor_id in set(specs) - set(world._actors):
                del specs[actor_id]
        shown, moving = [], []
        for actor in list(world._actors.values()):
            spec = specs.get(actor._id, _NO_SPEC)
            if spec is _NO_SPEC:
                spec = specs[actor._id] = _box_spec(actor)
            if spec is None or not actor.is_alive:
                continue
            shown.append(actor)
            if spec.moving or actor._parent is not None:
                moving.append(actor)
        layout = ((version, moving) + _box_layout(shown, [specs[a._id] for a in shown], {a._id for a in moving})
                  + (frozenset(a._id for a in moving),))
        world.__dict__["_sensor_box_layout"] = layout
    return layout


_NO_SPEC = object()


def _box_layout(shown: list, specs: list, moving_ids: set):
    """(boxes with the still actors' corners filled in, rows of the moving actors' parts, their sizes,
    index of each such part's actor among the moving ones)."""
    owners, sizes, colours, tags, dynamic, is_moving = [], [], [], [], [], []
    for actor, spec in zip(shown, specs):
        owners += [actor] * len(spec.parts)
        sizes.append(spec.parts)
        colours += spec.colours
        tags += [spec.tag] * len(spec.parts)
        dynamic += [spec.moving] * len(spec.parts)
        is_moving += [actor._id in moving_ids] * len(spec.parts)
    if not owners:
        empty = ActorBoxes([], np.zeros((0, 8, 3)), np.zeros((0, 5, 3)), np.zeros(0, np.uint8), np.zeros((0, 3)),
                           np.zeros(0, bool))
        return empty, np.zeros(0, np.int64), np.zeros((0, 6)), np.zeros(0, np.int64)
    size = np.concatenate(sizes)
    is_moving = np.array(is_moving, bool)
    corners, normals = np.zeros((len(owners), 8, 3)), np.zeros((len(owners), 5, 3))
    still = np.nonzero(~is_moving)[0]
    if len(still):
        pose = np.array([_ground_pose(owners[i]) for i in still], np.float32).astype(np.float64)
        pose[:, 3:] = np.radians(pose[:, 3:])
        corners[still], normals[still] = _pose_boxes(size[still], pose)
    rows = np.nonzero(is_moving)[0]
    moving_index = {}
    for i in rows:
        moving_index.setdefault(owners[i]._id, len(moving_index))
    owner_of_part = np.array([moving_index[owners[i]._id] for i in rows], np.int64)
    boxes = ActorBoxes(owners, corners, normals, np.array(tags, np.uint8), np.array(colours, np.float64),
                       np.array(dynamic, bool))
    return boxes, rows, size[rows], owner_of_part


def _sees_parent(sensor) -> bool:
    """A camera well outside its parent's box (a chase camera) sees it; a mounted one does not
    (a box would hide the view where the real car's bonnet is lower)."""
    parent = sensor.parent
    if parent is None or _category(parent.type_id) is None:
        return False
    rel = sensor._transform.location
    e = parent.bounding_box.extent
    return abs(rel.x) > e.x + 1.0 or abs(rel.y) > e.y + 1.0


def _road_z(world, location: carla.Location) -> float:
    wp = world.get_map().get_waypoint(location, project_to_road=True)
    return float(wp.transform.location.z) if wp is not None else 0.0


# ------------------------------------------------------------------------------------------
# Labels and depth: the same scene as the RGB image
# ------------------------------------------------------------------------------------------
def render_labels(renderer, boxes: ActorBoxes, camera_transform: carla.Transform, width: int, height: int,
                  fov: float, need_depth: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Semantic tags (H,W) uint8 and, if ``need_depth``, planar depth (H,W) float32 metres and instance
    ids (H,W) uint16 (the actor id for actors, fixed ids from 30000 up for scenery, 0 for ground/sky).

    Same geometry as ``Renderer.render``: the ground planes' homographies, scenery and actor boxes within
    the draw distance, painted far to near and cut behind crests (so occlusion matches the RGB image);
    faces get their exact planar depth, the ground its plane's. Roll is applied as an image rotation about
    the principal point (exact for both).
    """
    loc, rot = camera_transform.location, camera_transform.rotation
    origin = np.array([loc.x, loc.y, loc.z], dtype=np.float64)
    f = focal_length(width, fov)
    roll = float(rot.roll)
    if abs(roll) < 1e-3:
        return _labels_unrolled(renderer, boxes, origin, rot.pitch, rot.yaw, width, height, f, need_depth)
    c, s = abs(math.cos(math.radians(roll))), abs(math.sin(math.radians(roll)))
    wp = int(math.ceil(width * c + height * s)) + 2
    hp = int(math.ceil(width * s + height * c)) + 2
    tags, depth, instance = _labels_unrolled(renderer, boxes, origin, rot.pitch, rot.yaw, wp, hp, f, need_depth)
    m = cv2.getRotationMatrix2D((wp / 2.0, hp / 2.0), roll, 1.0)
    m[:, 2] += (width / 2.0 - wp / 2.0, height / 2.0 - hp / 2.0)
    tags = cv2.warpAffine(tags, m, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    if depth is not None:
        depth = cv2.warpAffine(depth, m, (width, height), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        instance = cv2.warpAffine(instance, m, (width, height), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_REPLICATE)
    return tags, depth, instance


def _labels_unrolled(renderer, boxes, origin, pitch, yaw, width, height, f, need_depth):
    view = renderer.view(origin, pitch, yaw, width, height, f)       # shared with the RGB camera of the rig
    v_ground, cx, cy = view.v_ground, view.cx, view.cy
    tags = np.empty((height, width), np.uint8)
    tags[:v_ground] = TAG_SKY
    if v_ground < height:
        kr = _level_pixel_maps(renderer.raster)[0]                # the full-resolution raster's pixels
        tag_raster = _tag_raster(renderer)
        for r0, r1, world_h in view.bands:                        # one homography per ground plane
            cv2.warpPerspective(tag_raster, kr @ world_h @ _row_shift(r0), (width, r1 - r0),
                                dst=tags[r0:r1], flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=TAG_TERRAIN)
    faces = _faces(renderer, view, boxes, need_depth)
    if not need_depth:
        fill = cv2.fillConvexPoly
        for _, poly, tag, _, rows in faces:
            if rows is None:
                fill(tags, poly, tag, cv2.LINE_8, 3)
            elif rows > 0:
                fill(tags[:rows], poly, tag, cv2.LINE_8, 3)
        return tags, None, None
    # Depth: paint face ids (0 = ground/sky), then look up each pixel's face tag and plane at once.
    ids = np.zeros((height, width), np.int32)
    planes = np.zeros((len(faces) + 1, 6), np.float32)
    face_tags = np.zeros(len(faces) + 1, np.uint8)
    for i, (_, poly, tag, plane, rows) in enumerate(faces, start=1):
        if rows is None:
            cv2.fillConvexPoly(ids, poly, i, cv2.LINE_8, 3)
        elif rows > 0:
            cv2.fillConvexPoly(ids[:rows], poly, i, cv2.LINE_8, 3)
        planes[i], face_tags[i] = plane, tag
    ground_depth = np.minimum(view.planar, DEPTH_FAR_M).astype(np.float32)
    ground_depth[:v_ground] = DEPTH_FAR_M
    depth = np.empty((height, width), np.float32)
    depth[:] = ground_depth[:, None]
    instance = np.zeros((height, width), np.uint16)
    covered = ids > 0                                                        # pixels of some face
    if covered.any():
        pid = ids[covered]
        p = np.take(planes, pid, axis=0)                                     # each pixel's face plane
        u_grid, v_grid = _pixel_grids(width, height, cx, cy, f)
        inv = p[:, 0] + p[:, 1] * u_grid[covered] - p[:, 2] * v_grid[covered]   # 1/depth
        np.maximum(inv, np.float32(1.0 / DEPTH_FAR_M), out=inv)
        # Edge pixels may lie just outside their face: keep them within the face's own depth range.
        depth[covered] = np.clip(np.float32(1.0) / inv, p[:, 3], p[:, 4])
        tags[covered] = np.take(face_tags, pid)
        instance[covered] = p[:, 5]
    return tags, depth, instance


def _pixel_grids(width: int, height: int, cx: float, cy: float, f: float):
    """(u - cx)/f and (v - cy)/f for every pixel (centres at integers, as cv2), float32, cached."""
    key = (width, height, cx, cy, f)
    if _GRIDS.get("key") != key:
        u = ((np.arange(width, dtype=np.float32) - cx) / f)[None, :]
        v = ((np.arange(height, dtype=np.float32) - cy) / f)[:, None]
        _GRIDS.update(key=key, grids=(np.broadcast_to(u, (height, width)).copy(),
                                      np.broadcast_to(v, (height, width)).copy()))
    return _GRIDS["grids"]


_GRIDS: dict = {}
_STATIC_IDS, _CROWN_IDS, _CONE_IDS = 30000, 45000, 55000     # instance ids of scenery boxes, crowns, cones
_KIND_TAG_LUT = np.zeros(256, np.uint8)
for _kind, _tag in _KIND_TAG.items():
    _KIND_TAG_LUT[_kind] = _tag


def _scenery_tags(renderer):
    """Per scenery box: its tag and the painter's distance bias (trunks behind their crowns); cached."""
    cached = renderer.__dict__.get("_sensor_box_tags")
    if cached is None:
        kind = renderer.scenery.box_kind
        cached = (_KIND_TAG_LUT[kind.astype(np.uint8)], np.where(kind == KIND_TRUNK, 0.5, 0.0))
        renderer.__dict__["_sensor_box_tags"] = cached
    return cached


def _tag_raster(renderer) -> np.ndarray:
    """The town raster's materials as semantic tags (built once per renderer)."""
    cached = renderer.__dict__.get("_sensor_tag_raster")
    if cached is None:
        cached = cv2.LUT(renderer.raster.material, _MATERIAL_TAG)
        renderer.__dict__["_sensor_tag_raster"] = cached
    return cached


_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))], axis=1)


def _append_flat(faces: list, dist, polys, z, ids, need_depth: bool, rows) -> None:
    """Vegetation drawn as flat shapes at one depth ``z`` each (crowns, conifers); ``rows``: see ``_faces``."""
    rows = [None] * len(z) if rows is None else rows
    if not need_depth:
        faces.extend(zip(dist.tolist(), polys, [TAG_VEGETATION] * len(z), [None] * len(z), rows))
        return
    planes = np.column_stack([1.0 / z, np.zeros_like(z), np.zeros_like(z), z, z, ids])
    faces.extend(zip(dist.tolist(), polys, [TAG_VEGETATION] * len(z), planes, rows))


def _box_faces(faces: list, p, box_tags, bias, inst, view, need_depth: bool) -> None:
    """Append the faces of projected boxes ``p`` (see ``render.ProjectedBoxes``); with ``need_depth`` each
    face's plane: (a, b, c, depth min, depth max, instance id) with 1/depth = a + b (u - cx)/f - c (v - cy)/f."""
    sel = p.sel
    if not len(sel):
        return
    dist = (p.d if bias is None else p.d + bias[sel]).tolist()
    tag_list = box_tags[sel].tolist()
    js, fis = p.flat
    jc, fc = p.clipped
    planes = clipped_planes = None
    if need_depth:                              # planes of the faces painted only, all at once
        rows, fidx = np.concatenate([js, jc]), np.concatenate([fis, fc])
        fcam = p.ccam[rows[:, None], BOX_FACES[fidx]]                       # (m,4,3)
        n = np.cross(fcam[:, 1] - fcam[:, 0], fcam[:, 2] - fcam[:, 0])
        k = np.einsum("mk,mk->m", n, fcam[:, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            plane = np.nan_to_num(n / k[:, None])
        z_range = np.maximum(np.stack([fcam[..., 0].min(axis=1), fcam[..., 0].max(axis=1)], axis=-1), _NEAR)
        ids = inst[sel][rows].astype(np.float64)[:, None]
        planes = np.concatenate([plane, z_range, ids], axis=-1)             # (m,6)
        planes, clipped_planes = planes[:len(js)], planes[len(js):]
    rows = view.visible_rows(p.ccam[:, :, 0].min(axis=1))
    rows = [None] * len(sel) if rows is None else rows
    js_list = js.tolist()
    for i, (j, poly) in enumerate(zip(js_list, p.polys[js, fis])):
        faces.append((dist[j], poly, tag_list[j], None if planes is None else planes[i], rows[j]))
    for i, (j, fi) in enumerate(zip(jc.tolist(), fc.tolist())):
        poly = _clip_near(p.ccam[j, BOX_FACES[fi]], _NEAR)
        if len(poly) >= 3:
            pts = np.round(np.clip(_cam_to_uv(poly, view.f, view.cx, view.cy), -1e5, 1e5) * 8).astype(np.int32)
            plane = None if clipped_planes is None else clipped_planes[i]
            faces.append((dist[j], pts, tag_list[j], plane, rows[j]))


def _faces(renderer, view, boxes, need_depth: bool = True) -> list:
    """Every visible face far to near: (distance, int32 polygon in 1/8 px, tag, plane or None, rows or None)
    with the plane (a, b, c, zmin, zmax, instance) only ``need_depth``: 1/depth = a + b (u - cx)/f - c (v - cy)/f
    within [zmin, zmax]; ``rows``: only the top rows the face may paint (the ground hides the rest behind
    a crest, ``View.visible_rows``). Culling, projection, order and clipping are the RGB renderer's (one
    ``view`` for both)."""
    sc = renderer.scenery
    f, cx, cy = view.f, view.cx, view.cy
    faces: list = []
    if len(sc.box_kind):
        tags_, bias = _scenery_tags(renderer)
        p = view.boxes(sc.box_corners, sc.box_centre, sc.box_face_centre, sc.box_normals, sc.box_radius,
                       static=True)
        _box_faces(faces, p, tags_, bias, _STATIC_IDS + np.arange(len(sc.box_kind)), view, need_depth)
    if len(boxes.corners):
        drawn = boxes.draw_boxes()                       # the RGB camera's ExtraBoxes of these boxes
        p = view.boxes(drawn.corners, drawn.centre, drawn.face_centre, drawn.normals, drawn.radius)
        _box_faces(faces, p, boxes.tags, None, boxes.ids % 65536, view, need_depth)
    if len(sc.sphere_radius):                                    # tree crowns: discs facing the camera
        p = view.crowns(sc.sphere_centre, sc.sphere_radius)
        sel = p.sel
        if len(sel):
            rad = sc.sphere_radius[sel]
            uv = _cam_to_uv(p.cam, f, cx, cy)
            pr = f * rad / p.cam[:, 0]
            discs = np.round((uv[:, None, :] + pr[:, None, None] * _CIRCLE) * 8)
            discs = np.ascontiguousarray(np.clip(discs, -8e5, 8e5), np.int32)
            z = np.maximum(p.cam[:, 0] - 0.5 * rad, _NEAR)
            _append_flat(faces, p.d, discs, z, _CROWN_IDS + sel, need_depth,
                         view.visible_rows(p.cam[:, 0] - rad))
    if len(sc.cone_radius):                                      # conifers: triangles
        p = view.cones(sc.cone_base, sc.cone_radius, sc.cone_height)
        sel = p.sel
        if len(sel):
            side = np.zeros((len(sel), 3))
            side[:, 1] = sc.cone_radius[sel]                     # camera coordinates: (depth, right, up)
            tri = np.stack([p.apex, p.cam - side, p.cam + side], axis=1)
            pts = np.ascontiguousarray(np.round(np.clip(_cam_to_uv(tri, f, cx, cy), -1e5, 1e5) * 8), np.int32)
            z = np.maximum(p.cam[:, 0], _NEAR)
            _append_flat(faces, p.d, pts, z, _CONE_IDS + sel, need_depth,
                         view.visible_rows(p.cam[:, 0] - sc.cone_radius[sel]))
    faces.sort(key=_FIRST, reverse=True)         # far to near; stable, as reverse keeps ties in order
    return faces


# ------------------------------------------------------------------------------------------
# Blueprints
# ------------------------------------------------------------------------------------------
def _a(name, type_, value, recommended=()) -> ActorAttribute:
    return ActorAttribute(name, type_, value, recommended, is_modifiable=True)


_F, _I, _B, _S = _TYPE.Float, _TYPE.Int, _TYPE.Bool, _TYPE.String
#: attributes of every camera (CARLA 0.9.14 defaults)
_CAMERA_COMMON = (("image_size_x", _I, 800), ("image_size_y", _I, 600), ("fov", _F, 90.0),
                  ("sensor_tick", _F, 0.0), ("lens_circle_falloff", _F, 5.0), ("lens_circle_multiplier", _F, 0.0),
                  ("lens_k", _F, -1.0), ("lens_kcube", _F, 0.0), ("lens_x_size", _F, 0.08),
                  ("lens_y_size", _F, 0.08))
#: the RGB camera's post-processing attributes (CARLA 0.9.14 defaults); only ``gamma`` is modelled
_RGB_EXTRA = (("gamma", _F, 2.2), ("bloom_intensity", _F, 0.675), ("fstop", _F, 1.4), ("iso", _F, 100.0),
              ("lens_flare_intensity", _F, 0.1), ("shutter_speed", _F, 200.0), ("black_clip", _F, 0.0),
              ("blade_count", _I, 5), ("blur_amount", _F, 1.0), ("blur_radius", _F, 0.0),
              ("calibration_constant", _F, 16.0), ("chromatic_aberration_intensity", _F, 0.0),
              ("chromatic_aberration_offset", _F, 0.0), ("enable_postprocess_effects", _B, "true"),
              ("exposure_compensation", _F, 0.0), ("exposure_max_bright", _F, 12.0),
              ("exposure_min_bright", _F, 10.0), ("exposure_mode", _S, "histogram"),
              ("exposure_speed_down", _F, 1.0), ("exposure_speed_up", _F, 3.0), ("focal_distance", _F, 1000.0),
              ("min_fstop", _F, 1.2), ("motion_blur_intensity", _F, 0.45), ("motion_blur_max_distortion", _F, 0.35),
              ("motion_blur_min_object_screen_size", _F, 0.1), ("shoulder", _F, 0.26), ("slope", _F, 0.88),
              ("temp", _F, 6500.0), ("tint", _F, 0.0), ("toe", _F, 0.55), ("white_clip", _F, 0.04))
#: camera attributes accepted but not modelled by the renderer
UNMODELLED_CAMERA_ATTRIBUTES = tuple(n for n, _, _ in _CAMERA_COMMON[4:] + _RGB_EXTRA if n != "gamma")
_LIDAR = (("channels", _I, 32), ("range", _F, 10.0), ("points_per_second", _I, 56000),
          ("rotation_frequency", _F, 10.0), ("upper_fov", _F, 10.0), ("lower_fov", _F, -30.0),
          ("horizontal_fov", _F, 360.0), ("atmosphere_attenuation_rate", _F, 0.004),
          ("dropoff_general_rate", _F, 0.45), ("dropoff_intensity_limit", _F, 0.8),
          ("dropoff_zero_intensity", _F, 0.4), ("noise_stddev", _F, 0.0), ("noise_seed", _I, 0),
          ("sensor_tick", _F, 0.0))
_RADAR = (("horizontal_fov", _F, 30.0), ("vertical_fov", _F, 30.0), ("range", _F, 100.0),
          ("points_per_second", _I, 1500), ("noise_seed", _I, 0), ("sensor_tick", _F, 0.0))
_GNSS = tuple((f"noise_{k}_{s}", _F, 0.0) for k in ("alt", "lat", "lon") for s in ("bias", "stddev")) + (
    ("noise_seed", _I, 0), ("sensor_tick", _F, 0.0))
_IMU = tuple((f"noise_accel_stddev_{a}", _F, 0.0) for a in "xyz") + tuple(
    (f"noise_gyro_{k}_{a}", _F, 0.0) for k in ("bias", "stddev") for a in "xyz") + (
    ("noise_seed", _I, 0), ("sensor_tick", _F, 0.0))
_DVS = (("positive_threshold", _F, 0.3), ("negative_threshold", _F, 0.3), ("sigma_positive_threshold", _F, 0.0),
        ("sigma_negative_threshold", _F, 0.0), ("refractory_period_ns", _I, 0), ("use_log", _B, "true"),
        ("log_eps", _F, 0.001))
_OBSTACLE = (("distance", _F, 5.0), ("hit_radius", _F, 0.5), ("only_dynamics", _B, "false"),
             ("debug_linetrace", _B, "false"), ("sensor_tick", _F, 0.0))


def _blueprint(bp_id: str, specs, role: str = "front") -> ActorBlueprint:
    tags = bp_id.split(".")
    attrs = [_a(n, t, v) for n, t, v in specs] + [_a("role_name", _S, role)]
    return ActorBlueprint(bp_id, tags, sorted(attrs, key=lambda a: a.id))


def sensor_blueprints() -> list[ActorBlueprint]:
    """Blueprints of every sensor this module implements, with CARLA 0.9.14's attributes and defaults."""
    return [_blueprint("sensor.camera.rgb", _CAMERA_COMMON + _RGB_EXTRA),
            _blueprint("sensor.camera.depth", _CAMERA_COMMON),
            _blueprint("sensor.camera.semantic_segmentation", _CAMERA_COMMON),
            _blueprint("sensor.camera.instance_segmentation", _CAMERA_COMMON),
            # Listed so scripts that look all camera blueprints up at start (manual_control.py) run;
            # spawning them raises UnsupportedFeatureError naming the blueprint.
            _blueprint("sensor.camera.dvs", _CAMERA_COMMON + _RGB_EXTRA + _DVS),
            _blueprint("sensor.camera.optical_flow", _CAMERA_COMMON),
            _blueprint("sensor.camera.normals", _CAMERA_COMMON),
            _blueprint("sensor.other.collision", ()),
            _blueprint("sensor.other.obstacle", _OBSTACLE),
            _blueprint("sensor.other.gnss", _GNSS),
            _blueprint("sensor.other.imu", _IMU),
            _blueprint("sensor.lidar.ray_cast", _LIDAR),
            _blueprint("sensor.other.radar", _RADAR)]


_DEFAULTS = {n: str(_a(n, t, v)) for n, t, v in _CAMERA_COMMON + _RGB_EXTRA}


# ------------------------------------------------------------------------------------------
# Cameras
# ------------------------------------------------------------------------------------------
class _Camera(_BaseCamera):
    """Shared camera behaviour: attribute checks, ``sensor_tick``, no output in no-rendering mode."""

    def __init__(self, world, actor_id, type_id, transform, attributes, parent):
        super().__init__(world, actor_id, type_id, transform, attributes, parent)
        self.unmodelled_attributes = {n: v for n, v in attributes.items()
                                      if n in UNMODELLED_CAMERA_ATTRIBUTES and v != _DEFAULTS.get(n)}
        if self.unmodelled_attributes:
            logger.info("%s: attributes accepted but not modelled by the embedded renderer: %s",
                        type_id, self.unmodelled_attributes)
        world._renderer()                    # build the town raster now, not during the first tick

    def _boxes(self) -> ActorBoxes:
        exclude = () if _sees_parent(self) else (self._parent,)
        return actor_boxes(self._world, exclude)

    def _on_tick(self, frame, timestamp):
        if self._callback is None or timestamp.elapsed_seconds + 1e-9 < self._next_time:
            return
        if self._world._settings.no_rendering_mode:          # carla renders nothing in this mode
            return
        self._next_time = timestamp.elapsed_seconds + self._sensor_tick
        transform = self.get_transform()
        self._callback(self._capture(frame, timestamp.elapsed_seconds, transform))

    def _labels(self, transform, need_depth: bool):
        """Tags (and depth, instance ids) of this frame, shared by every camera at the same pose and size."""
        key = (self._world._frame, _pose(transform), self.width, self.height, self.fov)
        cache = getattr(self._world, "_label_cache", None)
        if cache is not None and cache[0] == key and (cache[2] is not None or not need_depth):
            return cache[1], cache[2], cache[3]
        # One pass for the semantic and depth cameras of a rig: paint depth too if a depth camera listens.
        need_depth = need_depth or any(a.is_listening() for a in _depth_cameras(self._world))
        tags, depth, instance = render_labels(self._world._renderer(), self._boxes(), transform, self.width,
                                              self.height, self.fov, need_depth)
        self._world._label_cache = (key, tags, depth, instance)
        return tags, depth, instance


def _depth_cameras(world) -> list:
    """The world's depth and instance cameras (they need the depth pass), looked up again only when actors
    are added or removed (``World._actors_version``), not among every actor each frame."""
    key = (world._actors_version, len(world._actors))
    cached = world.__dict__.get("_sensor_depth_cameras")
    if cached is None or cached[0] != key:
        cached = (key, [a for a in list(world._actors.values()) if isinstance(a, (DepthCamera, InstanceCamera))])
        world.__dict__["_sensor_depth_cameras"] = cached
    return cached[1]


def _pose(t: carla.Transform) -> tuple:
    return tuple(round(v, 6) for v in (t.location.x, t.location.y, t.location.z, t.rotation.pitch,
                                       t.rotation.yaw, t.rotation.roll))


class RgbCamera(_Camera):
    """sensor.camera.rgb: the renderer's image with the other actors drawn in; ``gamma`` applied as
    ``out = 255 (in/255)^(2.2/gamma)`` (2.2 = CARLA's default, the renderer's native output)."""

    def __init__(self, *args):
        super().__init__(*args)
        gamma = float(self._attributes.get("gamma", 2.2))
        if not gamma > 0:
            raise ValueError(f"camera gamma={gamma} must be > 0")
        self._gamma_lut = (None if abs(gamma - 2.2) < 1e-6 else
                           np.clip(255.0 * (np.arange(256) / 255.0) ** (2.2 / gamma) + 0.5, 0, 255).astype(np.uint8))

    def _capture(self, frame, elapsed, transform):
        pixels = self._world._renderer().render(transform, self.width, self.height, self.fov, self._world._weather,
                                                boxes=self._boxes().draw_boxes())
        if self._gamma_lut is not None:
            cv2.LUT(pixels, self._gamma_lut, dst=pixels)              # alpha 255 stays 255
        return Image(frame, elapsed, transform, self.fov, pixels)


class DepthImage(Image):
    """carla.Image of a depth camera: ``convert(Depth | LogarithmicDepth)`` as CARLA's ColorConverter."""

    def convert(self, color_converter) -> None:
        if color_converter == carla.ColorConverter.Raw:
            return
        if color_converter not in (carla.ColorConverter.Depth, carla.ColorConverter.LogarithmicDepth):
            raise UnsupportedFeatureError(f"Image.convert({color_converter}) on a depth image "
                                          f"(Raw, Depth and LogarithmicDepth only)")
        normalized = decode_depth(self._pixels).astype(np.float64) / DEPTH_FAR_M
        if color_converter == carla.ColorConverter.Depth:
            grey = normalized * 255.0
        else:
            with np.errstate(divide="ignore"):
                grey = np.clip(1.0 + np.log(normalized) / 5.70378, 0.005, 1.0) * 255.0
        self._pixels[..., :3] = np.round(grey).astype(np.uint8)[..., None]

    def save_to_disk(self, path: str, color_converter=carla.ColorConverter.Raw) -> str:
        return _save_converted(self, path, color_converter)


class SemanticImage(Image):
    """carla.Image of a semantic camera: the tag in the red channel; ``convert(CityScapesPalette)``."""

    def convert(self, color_converter) -> None:
        if color_converter == carla.ColorConverter.Raw:
            return
        if color_converter != carla.ColorConverter.CityScapesPalette:
            raise UnsupportedFeatureError(f"Image.convert({color_converter}) on a semantic image "
                                          f"(Raw and CityScapesPalette only)")
        self._pixels[..., :3] = labels_to_cityscapes(self._pixels[..., 2])

    def save_to_disk(self, path: str, color_converter=carla.ColorConverter.Raw) -> str:
        return _save_converted(self, path, color_converter)


def _save_converted(image: Image, path: str, color_converter) -> str:
    """Save a converted copy (the image itself keeps its raw data)."""
    copy = type(image)(image.frame, image.timestamp, image.transform, image.fov, image._pixels.copy())
    copy.convert(color_converter)
    return Image.save_to_disk(copy, path)


class DepthCamera(_Camera):
    """sensor.camera.depth: planar depth of the RGB scene, CARLA's 24-bit encoding, 1000 m far plane."""

    def _capture(self, frame, elapsed, transform):
        _, depth, _ = self._labels(transform, need_depth=True)
        return DepthImage(frame, elapsed, transform, self.fov, encode_depth(depth))


class SemanticCamera(_Camera):
    """sensor.camera.semantic_segmentation: CARLA 0.9.14 tags in the red channel (G = B = 0, A = 255)."""

    def _capture(self, frame, elapsed, transform):
        tags, _, _ = self._labels(transform, need_depth=False)
        zero, full = _constant_planes(tags.shape)
        return SemanticImage(frame, elapsed, transform, self.fov, cv2.merge((zero, zero, tags, full)))


class InstanceCamera(_Camera):
    """sensor.camera.instance_segmentation: the tag in red, the object's id in green (low byte) and
    blue (high byte): actor ids for actors, fixed ids from 30000 up for scenery, 0 for ground and sky."""

    def _capture(self, frame, elapsed, transform):
        tags, _, instance = self._labels(transform, need_depth=True)
        _, full = _constant_planes(tags.shape)
        pixels = cv2.merge(((instance >> 8).astype(np.uint8), (instance & 255).astype(np.uint8), tags, full))
        return SemanticImage(frame, elapsed, transform, self.fov, pixels)


def _constant_planes(shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(zeros, 255s) uint8 planes of ``shape`` (read-only, cached): cv2.merge packs a label image from them
    three times faster than numpy's strided channel writes (800x600: 0.16 vs 0.51 ms)."""
    if _PLANES.get("shape") != shape:
        zero, full = np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8)
        zero.flags.writeable = full.flags.writeable = False
        _PLANES.update(shape=shape, planes=(zero, full))
    return _PLANES["planes"]


_PLANES: dict = {}


# ------------------------------------------------------------------------------------------
# Event and measurement data (carla's classes cannot be built from Python)
# ------------------------------------------------------------------------------------------
class _SensorData:
    """carla.SensorData: frame, timestamp (s) and the sensor's world transform."""

    def __init__(self, frame: int, timestamp: float, transform: carla.Transform):
        self.frame = frame
        self.timestamp = timestamp
        self.transform = transform

    @property
    def frame_number(self) -> int:
        return self.frame


class CollisionEvent(_SensorData):
    """carla.CollisionEvent: ``actor`` (the sensor's parent), ``other_actor``, ``normal_impulse`` (N s)."""

    def __init__(self, frame, timestamp, transform, actor, other_actor, normal_impulse: carla.Vector3D):
        super().__init__(frame, timestamp, transform)
        self.actor = actor
        self.other_actor = other_actor
        self.normal_impulse = normal_impulse

    def __repr__(self):
        return f"CollisionEvent(frame={self.frame}, other_actor={self.other_actor!r})"


class ObstacleDetectionEvent(_SensorData):
    """carla.ObstacleDetectionEvent: ``actor`` (the sensor's parent), ``other_actor``, ``distance`` (m)."""

    def __init__(self, frame, timestamp, transform, actor, other_actor, distance: float):
        super().__init__(frame, timestamp, transform)
        self.actor = actor
        self.other_actor = other_actor
        self.distance = distance

    def __repr__(self):
        return (f"ObstacleDetectionEvent(frame={self.frame}, other_actor={self.other_actor!r}, "
                f"distance={self.distance:.2f})")


class GnssMeasurement(_SensorData):
    """carla.GnssMeasurement: ``latitude``/``longitude`` (deg) and ``altitude`` (m)."""

    def __init__(self, frame, timestamp, transform, latitude: float, longitude: float, altitude: float):
        super().__init__(frame, timestamp, transform)
        self.latitude, self.longitude, self.altitude = latitude, longitude, altitude

    def __repr__(self):
        return (f"GnssMeasurement(frame={self.frame}, lat={self.latitude:.6f}, lon={self.longitude:.6f}, "
                f"alt={self.altitude:.2f})")


class IMUMeasurement(_SensorData):
    """carla.IMUMeasurement: ``accelerometer`` (m/s^2, gravity included), ``gyroscope`` (rad/s) as
    carla.Vector3D in the sensor's frame, and ``compass`` (rad, 0 = north = -y, clockwise)."""

    def __init__(self, frame, timestamp, transform, accelerometer, gyroscope, compass: float):
        super().__init__(frame, timestamp, transform)
        self.accelerometer, self.gyroscope, self.compass = accelerometer, gyroscope, compass

    def __repr__(self):
        return f"IMUMeasurement(frame={self.frame}, compass={self.compass:.3f})"


class LidarMeasurement(_SensorData):
    """carla.LidarMeasurement: ``raw_data`` = float32 (x, y, z, intensity) per point in the sensor's
    frame (x forward, y right, z up, m), ``channels``, ``horizontal_angle`` (rad), points by channel;
    iterating yields real ``carla.LidarDetection`` objects."""

    def __init__(self, frame, timestamp, transform, points: np.ndarray, counts: list[int], horizontal_angle: float):
        super().__init__(frame, timestamp, transform)
        self._points = np.ascontiguousarray(points, np.float32).reshape(-1, 4)
        self._counts = list(counts)
        self.channels = len(counts)
        self.horizontal_angle = horizontal_angle

    @property
    def raw_data(self) -> memoryview:
        return memoryview(self._points).cast("B")

    def get_point_count(self, channel: int) -> int:
        return self._counts[channel]

    def __len__(self):
        return len(self._points)

    def __getitem__(self, index: int) -> carla.LidarDetection:
        x, y, z, i = (float(v) for v in self._points[index])
        d = carla.LidarDetection()
        d.point, d.intensity = carla.Location(x, y, z), i
        return d

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def save_to_disk(self, path: str) -> str:
        """ASCII PLY with x y z I per point (as CARLA's lidar ``save_to_disk``)."""
        target = Path(path % self.frame if "%" in path else path)
        if not target.suffix:
            target = target.with_suffix(".ply")
        target.parent.mkdir(parents=True, exist_ok=True)
        header = ("ply\nformat ascii 1.0\nelement vertex %d\nproperty float32 x\nproperty float32 y\n"
                  "property float32 z\nproperty float32 I\nend_header\n" % len(self._points))
        with open(target, "w", encoding="ascii") as fh:
            fh.write(header)
            np.savetxt(fh, self._points, fmt="%.4f")
        return str(target)


class RadarMeasurement(_SensorData):
    """carla.RadarMeasurement: ``raw_data`` = float32 (velocity m/s, azimuth rad, altitude rad, depth m)
    per detection; iterating yields real ``carla.RadarDetection`` objects."""

    def __init__(self, frame, timestamp, transform, detections: np.ndarray):
        super().__init__(frame, timestamp, transform)
        self._detections = np.ascontiguousarray(detections, np.float32).reshape(-1, 4)

    @property
    def raw_data(self) -> memoryview:
        return memoryview(self._detections).cast("B")

    def get_detection_count(self) -> int:
        return len(self._detections)

    def __len__(self):
        return len(self._detections)

    def __getitem__(self, index: int) -> carla.RadarDetection:
        d = carla.RadarDetection()
        d.velocity, d.azimuth, d.altitude, d.depth = (float(v) for v in self._detections[index])
        return d

    def __iter__(self):
        return (self[i] for i in range(len(self)))


# ------------------------------------------------------------------------------------------
# Geometry shared by collision, obstacle, lidar and radar
# ------------------------------------------------------------------------------------------
class StaticObject(Actor):
    """A piece of scenery (building, pole, tree) reported as ``other_actor`` of a collision or an
    obstacle, like CARLA's ``static.*`` actors; not listed by ``world.get_actors()``."""

    _IDS = 1_000_000                     # ids above any spawned actor's


def _static_actor(world, index: int) -> StaticObject:
    cache = world.__dict__.setdefault("_static_objects", {})
    if index not in cache:
        sc = world._renderer().scenery
        kind = int(sc.box_kind[index])
        name = {KIND_BUILDING: "static.building", KIND_TRUNK: "static.vegetation"}.get(kind, "static.pole")
        c = sc.box_centre[index]
        cache[index] = StaticObject(world, StaticObject._IDS + index, name,
                                    carla.Transform(carla.Location(float(c[0]), float(c[1]), 0.0)))
    return cache[index]


def _box_frames(corners: np.ndarray):
    """Box corners (N,8,3) in the _UNIT / scenery order -> origin c0 (N,3), unit axes (N,3,3), lengths (N,3)."""
    c0 = corners[:, 0]
    edges = np.stack([corners[:, 1] - c0, corners[:, 3] - c0, corners[:, 4] - c0], axis=1)
    lengths = np.linalg.norm(edges, axis=2)
    return c0, edges / np.maximum(lengths, 1e-9)[..., None], lengths


def _ray_boxes(origin: np.ndarray, dirs: np.ndarray, corners: np.ndarray, max_t: float):
    """Nearest hit of rays (origin (3,), unit dirs (N,3)) with boxes: (t (N,) inf if none, box index (N,))."""
    n = len(dirs)
    best_t, best_i = np.full(n, np.inf), np.full(n, -1)
    if not len(corners) or not n:
        return best_t, best_i
    c0, axes, lengths = _box_frames(corners)
    for s in range(0, len(corners), 64):
        a, L = axes[s:s + 64], lengths[s:s + 64]                       # (m,3,3), (m,3)
        o = np.einsum("mkj,mj->mk", a, origin[None] - c0[s:s + 64])    # (m,3)
        d = np.einsum("mkj,nj->nmk", a, dirs)                          # (n,m,3)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (0.0 - o[None]) / d
            t2 = (L[None] - o[None]) / d
        t1 = np.nan_to_num(t1, nan=-np.inf)
        t2 = np.nan_to_num(t2, nan=np.inf)
        tmin = np.minimum(t1, t2).max(axis=2)
        tmax = np.maximum(t1, t2).min(axis=2)
        hit = (tmax >= np.maximum(tmin, 0.0)) & (tmin > 0.0) & (tmin < max_t)
        t = np.where(hit, tmin, np.inf)
        j = t.argmin(axis=1)
        tj = t[np.arange(n), j]
        better = tj < best_t
        best_t[better], best_i[better] = tj[better], j[better] + s
    return best_t, best_i


def _near(centres: np.ndarray, radius: np.ndarray, centre: np.ndarray, reach: float, cone) -> np.ndarray:
    """Indices of boxes (bounding spheres) within ``reach`` of ``centre`` and, if given, inside ``cone``."""
    rel = centres - centre
    dist = np.linalg.norm(rel, axis=1)
    keep = dist < reach + radius
    if cone is not None:
        axis, half = cone
        angle = np.arccos(np.clip(rel @ axis / np.maximum(dist, 1e-9), -1.0, 1.0))
        slack = np.arcsin(np.clip(radius / np.maximum(dist, 1e-9), 0.0, 1.0))
        keep &= (angle <= half + slack) | (dist <= radius)
    return np.nonzero(keep)[0]


def _scene_boxes(world, sensor, centre: np.ndarray, reach: float, only_dynamics=False, cone=None,
                 ground_z: float | None = None):
    """Actor and scenery boxes near ``centre`` in world z: (corners (N,8,3), velocity (N,3), owners). Actors
    stand where their transforms put them; scenery on the level ground at ``ground_z`` (default: the road
    height under ``centre``), the ground these sensors see.

    ``cone`` = (unit axis (3,), half angle rad): keep only boxes that may lie within it (ray sensors).
    """
    boxes = actor_boxes(world, exclude=(sensor._parent, sensor))
    keep = np.ones(len(boxes.actors), bool) if not only_dynamics else boxes.dynamic.copy()
    if len(boxes.actors):
        mask = np.zeros(len(boxes.actors), bool)
        mask[_near(boxes.corners.mean(axis=1), np.linalg.norm(boxes.corners[:, 0] - boxes.corners[:, 6], axis=1)
                   / 2, centre, reach, cone)] = True
        keep &= mask
    boxes = boxes.select(keep)
    corners = [boxes.corners]
    owners = list(boxes.actors)
    velocities = [np.array([_vec(a.get_velocity()) for a in owners], np.float64).reshape(-1, 3)]
    if not only_dynamics:
        sc = world._renderer().scenery
        if ground_z is None:
            ground_z = _road_z(world, carla.Location(*(float(v) for v in centre)))
        lift = np.array([0.0, 0.0, ground_z])
        near = _near(sc.box_centre + lift, sc.box_radius, centre, reach, cone)
        corners.append(sc.box_corners[near] + lift)
        owners += [("static", int(i)) for i in near]
        velocities.append(np.zeros((len(near), 3)))
    return np.concatenate(corners).reshape(-1, 8, 3), np.concatenate(velocities), owners


def _owner_actor(world, owner):
    return _static_actor(world, owner[1]) if isinstance(owner, tuple) else owner


def _vec(v) -> tuple:
    return (v.x, v.y, v.z)


def _footprint(corners: np.ndarray) -> np.ndarray:
    return corners[:4, :2]


def _overlap_depth(a: np.ndarray, b: np.ndarray):
    """Separating-axis test of two convex 2D polygons: None, or (penetration m, unit normal from a to b)."""
    best, normal = np.inf, None
    for poly in (a, b):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            norm = np.linalg.norm(axis)
            if norm < 1e-9:
                continue
            axis /= norm
            pa, pb = a @ axis, b @ axis
            overlap = min(pa.max(), pb.max()) - max(pa.min(), pb.min())
            if overlap <= 0:
                return None
            if overlap < best:
                best = overlap
                normal = axis if (b.mean(axis=0) - a.mean(axis=0)) @ axis >= 0 else -axis
    return best, normal


# ------------------------------------------------------------------------------------------
# Event and measurement sensors
# ------------------------------------------------------------------------------------------
class _TickedSensor(Sensor):
    """A sensor that measures every ``sensor_tick`` seconds while listened to."""

    needs_parent = False
    needs_scene = True               # False: no scene geometry needed (GNSS, IMU)

    def __init__(self, world, actor_id, type_id, transform, attributes, parent):
        if self.needs_parent and parent is None:
            raise ValueError(f"{type_id} must be spawned with attach_to=<actor>")
        super().__init__(world, actor_id, type_id, transform, attributes, parent)
        if self.needs_scene:
            world._renderer()        # build the town's scenery now, not during the first tick
        self._sensor_tick = float(attributes.get("sensor_tick", 0.0))
        if self._sensor_tick < 0:
            raise ValueError(f"sensor_tick={self._sensor_tick} must be >= 0 seconds")
        self._next_time = 0.0
        self._rng = np.random.default_rng(int(attributes.get("noise_seed", 0)))

    def _float(self, name: str) -> float:
        return float(self._attributes[name])

    def _on_tick(self, frame, timestamp):
        if self._parent is not None and not self._parent.is_alive:
            return
        if self._callback is None or timestamp.elapsed_seconds + 1e-9 < self._next_time:
            return
        self._next_time = timestamp.elapsed_seconds + self._sensor_tick
        data = self._measure(frame, timestamp.elapsed_seconds, self.get_transform(), timestamp.delta_seconds)
        if data is not None:
            self._callback(data)


class CollisionSensor(_TickedSensor):
    """sensor.other.collision: an event per tick for each thing the parent's footprint overlaps.

    What counts: the parent's bounding box (as a ground footprint) overlapping another actor's box
    (vehicles, walkers, traffic lights, static props) or a scenery box (buildings, tree trunks, poles,
    lamp posts). Driving onto sidewalks or terrain is no collision (CARLA's neither). An event is sent
    when a contact begins and on every following tick while the two still close in on each other.
    ``normal_impulse`` = parent mass x closing speed along the contact normal (N s), pointing from
    the other object into the parent. The kinematic car is not stopped by the contact.
    """

    needs_parent = True

    def __init__(self, *args):
        super().__init__(*args)
        self._contacts: set = set()

    def _measure(self, frame, elapsed, transform, dt):
        parent = self._parent
        mine = _own_box(parent)
        if mine is None:
            return None
        centre = mine.mean(axis=0)
        reach = float(np.linalg.norm(mine[0, :2] - mine[6, :2])) / 2 + 1.0
        corners, velocities, owners = _scene_boxes(self._world, self, centre, reach,
                                                   ground_z=float(mine[:, 2].min()))
        impact = getattr(parent, "_impact_velocity", None)      # the world stopped it on contact this tick
        v_self = np.array(_vec(impact if impact is not None else parent.get_velocity()))
        if impact is not None:
            parent._impact_velocity = None
        mass = None                                               # asked only on contact (0.2 ms a tick)
        contacts, events = set(), []
        for box, vel, owner in zip(corners, velocities, owners):
            if np.linalg.norm(box.mean(axis=0)[:2] - centre[:2]) > reach + np.linalg.norm(box[0, :2] - box[6, :2]):
                continue
            hit = _overlap_depth(_footprint(mine), _footprint(box))
            if hit is None:
                continue
            key = owner if isinstance(owner, tuple) else owner.id
            if key in contacts:                                       # another box of the same actor
                continue
            contacts.add(key)
            normal = np.array([hit[1][0], hit[1][1], 0.0])            # from the parent towards the other
            closing = float((v_self - vel) @ normal)
            if key in self._contacts and closing <= 1e-3:
                continue
            mass = _mass(parent) if mass is None else mass
            impulse = -normal * mass * max(closing, 0.0)
            events.append(CollisionEvent(frame, elapsed, transform, parent, _owner_actor(self._world, owner),
                                         carla.Vector3D(*(float(v) for v in impulse))))
        self._contacts = contacts
        for event in events[:-1]:
            self._callback(event)
        return events[-1] if events else None


def _own_box(actor):
    """The actor's box corners (8,3) in world coordinates, or None if it has no extent."""
    if actor is None:
        return None
    bbox = actor.bounding_box
    if min(bbox.extent.x, bbox.extent.y) <= 0:
        return None
    t = actor.get_transform()
    yaw = math.radians(t.rotation.yaw)
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    extent = (bbox.extent.x, bbox.extent.y, bbox.extent.z)
    local = _local_corners(extent, (bbox.location.x, bbox.location.y, 0.0), _base_z(actor, extent))
    return local @ rot.T + np.array([t.location.x, t.location.y, t.location.z])


def _mass(actor) -> float:
    try:
        return float(actor.get_physics_control().mass)
    except Exception:                     # walkers, or actors without physics control
        return 80.0 if actor.type_id.startswith("walker.") else 1500.0


class ObstacleSensor(_TickedSensor):
    """sensor.other.obstacle: the nearest thing in a corridor ahead of the sensor.

    Like CARLA's capsule sweep of radius ``hit_radius`` along the sensor's forward axis up to
    ``distance`` m: the corridor is |lateral| <= hit_radius on the ground plane, and the object's box
    must reach within ``hit_radius`` of the sensor's height. ``distance`` reported = distance from the
    sensor to the nearest point of the object's footprint in the corridor, minus ``hit_radius`` (where
    the sweep's sphere touches it). ``only_dynamics``: only vehicles and walkers. ``debug_linetrace``
    is accepted and ignored (no debug drawing here). One event per tick while something is there.
    """

    needs_parent = True

    def _measure(self, frame, elapsed, transform, dt):
        reach, radius = self._float("distance"), self._float("hit_radius")
        only_dynamics = self._attributes.get("only_dynamics", "false") == "true"
        loc = transform.location
        origin = np.array([loc.x, loc.y, loc.z])
        corners, _, owners = _scene_boxes(self._world, self, origin, reach + radius, only_dynamics)
        yaw = math.radians(transform.rotation.yaw)
        fwd, right = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
        best, best_owner = np.inf, None
        for box, owner in zip(corners, owners):
            if box[:, 2].max() < loc.z - radius or box[:, 2].min() > loc.z + radius:
                continue
            rel = _footprint(box) - origin[:2]
            local = np.column_stack([rel @ fwd, rel @ right])
            x = _min_x_in_strip(local, radius)
            if x is not None and -radius <= x <= reach + radius and x < best:
                best, best_owner = x, owner
        if best_owner is None:
            return None
        return ObstacleDetectionEvent(frame, elapsed, transform, self._parent,
                                      _owner_actor(self._world, best_owner), float(max(best - radius, 0.0)))


def _min_x_in_strip(poly: np.ndarray, half_width: float):
    """Smallest x of a convex polygon clipped to |y| <= half_width (None if it misses the strip)."""
    pts = poly
    for sign in (1.0, -1.0):                                     # clip against y <= w, then -y <= w
        out = []
        for i in range(len(pts)):
            a, b = pts[i], pts[(i + 1) % len(pts)]
            ina, inb = sign * a[1] <= half_width, sign * b[1] <= half_width
            if ina:
                out.append(a)
            if ina != inb:
                t = (half_width - sign * a[1]) / (sign * (b[1] - a[1]))
                out.append(a + (b - a) * t)
        if not out:
            return None
        pts = np.array(out)
    return float(pts[:, 0].min())


class GnssSensor(_TickedSensor):
    """sensor.other.gnss: ``map.transform_to_geolocation`` of the sensor, plus CARLA's noise model
    (latitude/longitude noise in degrees, altitude in m: bias + N(0, stddev), seeded by ``noise_seed``)."""

    needs_scene = False

    def _measure(self, frame, elapsed, transform, dt):
        geo = self._world.get_map().transform_to_geolocation(transform.location)
        noise = [self._float(f"noise_{k}_bias") + self._rng.normal(0.0, self._float(f"noise_{k}_stddev"))
                 if self._float(f"noise_{k}_stddev") > 0 else self._float(f"noise_{k}_bias")
                 for k in ("lat", "lon", "alt")]
        return GnssMeasurement(frame, elapsed, transform, geo.latitude + noise[0], geo.longitude + noise[1],
                               geo.altitude + noise[2])


class ImuSensor(_TickedSensor):
    """sensor.other.imu: accelerometer (parent's acceleration + gravity, m/s^2), gyroscope (parent's
    angular velocity, rad/s), both in the sensor's frame (x forward, y right, z up), and compass
    (rad from north = -y, clockwise: yaw 0 -> pi/2). Noise: N(0, stddev) per axis, gyro bias added."""

    needs_scene = False

    def _measure(self, frame, elapsed, transform, dt):
        r = transform.rotation
        rot = rotation_matrix(r.pitch, r.yaw, r.roll)            # columns: forward, right, up in world
        acc = np.array(_vec(self.get_acceleration())) + np.array([0.0, 0.0, GRAVITY])
        gyro = np.radians(np.array(_vec(self.get_angular_velocity())))
        acc, gyro = rot.T @ acc, rot.T @ gyro
        for i, axis in enumerate("xyz"):
            sd = self._float(f"noise_accel_stddev_{axis}")
            acc[i] += self._rng.normal(0.0, sd) if sd > 0 else 0.0
            sd = self._float(f"noise_gyro_stddev_{axis}")
            gyro[i] += self._float(f"noise_gyro_bias_{axis}") + (self._rng.normal(0.0, sd) if sd > 0 else 0.0)
        compass = math.radians((r.yaw + 90.0) % 360.0)
        return IMUMeasurement(frame, elapsed, transform, carla.Vector3D(*map(float, acc)),
                              carla.Vector3D(*map(float, gyro)), compass)


def _rays(rot: np.ndarray, azimuth_deg: np.ndarray, elevation_deg: np.ndarray) -> np.ndarray:
    """Unit world directions of rays at (azimuth right of forward, elevation up), sensor rotation ``rot``."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    local = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)
    return local @ rot.T


def _cast(world, sensor, transform, dirs: np.ndarray, max_range: float):
    """Nearest hit along each ray: ground plane at the road height under the sensor, actor boxes and
    scenery boxes. Returns (t (N,), owner index or -1 for ground/none, owners, velocities)."""
    loc = transform.location
    origin = np.array([loc.x, loc.y, loc.z])
    ground = _road_z(world, loc)
    mean = dirs.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    cone = None
    if norm > 0.2:                                  # rays within one cone: skip the boxes outside it
        axis = mean / norm
        cone = (axis, float(np.arccos(np.clip(dirs @ axis, -1.0, 1.0)).max()))
    corners, velocities, owners = _scene_boxes(world, sensor, origin, max_range, cone=cone, ground_z=ground)
    t, idx = _ray_boxes(origin, dirs, corners, max_range)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dirs[:, 2] < -1e-9, (ground - origin[2]) / dirs[:, 2], np.inf)
    ground_first = (t_ground > 0) & (t_ground < t) & (t_ground <= max_range)
    t = np.where(ground_first, t_ground, t)
    idx = np.where(ground_first, -1, idx)
    return np.where(t <= max_range, t, np.inf), idx, owners, velocities


class LidarSensor(_TickedSensor):
    """sensor.lidar.ray_cast: CARLA's rotating lidar over the same scene (ground plane, actor and
    scenery boxes). Each tick it sweeps ``rotation_frequency * dt`` turns (within ``horizontal_fov``)
    with ``points_per_second * dt`` rays over ``channels`` rows from ``upper_fov`` to ``lower_fov``.
    Intensity = exp(-atmosphere_attenuation_rate * d); points are dropped at random with
    ``dropoff_general_rate``, and those below ``dropoff_intensity_limit`` with a probability growing
    linearly to ``dropoff_zero_intensity`` at zero intensity; ``noise_stddev`` moves points along their
    ray. The parent is not seen (as CARLA's lidar ignores its owner)."""

    def __init__(self, *args):
        super().__init__(*args)
        self._channels = int(self._attributes["channels"])
        pps = int(self._attributes["points_per_second"])
        if not 1 <= self._channels <= 256 or self._float("range") <= 0 or pps < 0:
            raise ValueError(f"lidar channels={self._channels}, range={self._float('range')}, points_per_second={pps}: "
                             f"channels must be 1..256, range > 0 m, points_per_second >= 0")
        self._angle = 0.0

    def _measure(self, frame, elapsed, transform, dt):
        dt = max(dt, 1e-6) if self._sensor_tick <= 0 else max(self._sensor_tick, dt)
        channels, hfov = self._channels, self._float("horizontal_fov")
        per_channel = int(int(self._attributes["points_per_second"]) * dt / channels)
        sweep = min(360.0 * self._float("rotation_frequency") * dt, hfov)
        if per_channel < 1:
            return LidarMeasurement(frame, elapsed, transform, np.zeros((0, 4)), [0] * channels,
                                    math.radians(self._angle))
        az = (self._angle + np.arange(per_channel) * (sweep / per_channel))
        az_wrapped = (az + 180.0) % 360.0 - 180.0
        if hfov < 360.0:
            az = az[np.abs(az_wrapped) <= hfov / 2.0]
        self._angle = (self._angle + sweep) % 360.0
        upper, lower = self._float("upper_fov"), self._float("lower_fov")
        elevations = np.linspace(upper, lower, channels) if channels > 1 else np.array([upper])
        el_grid, az_grid = np.meshgrid(elevations, az, indexing="ij")          # channel-major order
        r = transform.rotation
        rot = rotation_matrix(r.pitch, r.yaw, r.roll)
        dirs = _rays(rot, az_grid.ravel(), el_grid.ravel())
        t, _, _, _ = _cast(self._world, self, transform, dirs, self._float("range"))
        hit = np.isfinite(t)
        noise = self._float("noise_stddev")
        if noise > 0:
            t = t + self._rng.normal(0.0, noise, t.shape)
        intensity = np.exp(-self._float("atmosphere_attenuation_rate") * t)
        keep = hit & (self._rng.random(t.shape) >= self._float("dropoff_general_rate"))
        limit, zero = self._float("dropoff_intensity_limit"), self._float("dropoff_zero_intensity")
        if limit > 0:
            p_drop = np.where(intensity < limit, zero * (1.0 - intensity / limit), 0.0)
            keep &= self._rng.random(t.shape) >= p_drop
        local = np.stack([np.cos(np.radians(el_grid.ravel())) * np.cos(np.radians(az_grid.ravel())),
                          np.cos(np.radians(el_grid.ravel())) * np.sin(np.radians(az_grid.ravel())),
                          np.sin(np.radians(el_grid.ravel()))], axis=1) * np.where(keep, t, 0.0)[:, None]
        points = np.column_stack([local, intensity])[keep]
        counts = keep.reshape(channels, -1).sum(axis=1).astype(int).tolist()
        return LidarMeasurement(frame, elapsed, transform, points, counts, math.radians(self._angle))


class RadarSensor(_TickedSensor):
    """sensor.other.radar: ``points_per_second * dt`` random rays within ``horizontal_fov`` x
    ``vertical_fov`` over the same scene; each hit is a detection with its depth (m), azimuth and
    altitude (rad, in the sensor's frame) and velocity = (target velocity - sensor velocity) along the
    ray (m/s, negative when closing in), as CARLA's radar. The parent is not seen."""

    def _measure(self, frame, elapsed, transform, dt):
        n = int(int(self._attributes["points_per_second"]) * max(dt, self._sensor_tick))
        hf, vf = self._float("horizontal_fov"), self._float("vertical_fov")
        az = self._rng.uniform(-hf / 2.0, hf / 2.0, n)
        el = self._rng.uniform(-vf / 2.0, vf / 2.0, n)
        r = transform.rotation
        rot = rotation_matrix(r.pitch, r.yaw, r.roll)
        dirs = _rays(rot, az, el)
        t, idx, _, velocities = _cast(self._world, self, transform, dirs, self._float("range"))
        hit = np.isfinite(t)
        v_target = np.zeros((n, 3))
        boxes_hit = hit & (idx >= 0)
        v_target[boxes_hit] = velocities[idx[boxes_hit]]
        v_self = np.array(_vec(self.get_velocity()))
        velocity = np.einsum("nk,nk->n", v_target - v_self, dirs)
        detections = np.column_stack([velocity, np.radians(az), np.radians(el), t])[hit]
        return RadarMeasurement(frame, elapsed, transform, detections)


#: blueprint id -> sensor class, for ``World.spawn_actor``
SENSOR_CLASSES = {
    "sensor.camera.rgb": RgbCamera,
    "sensor.camera.depth": DepthCamera,
    "sensor.camera.semantic_segmentation": SemanticCamera,
    "sensor.camera.instance_segmentation": InstanceCamera,
    "sensor.other.collision": CollisionSensor,
    "sensor.other.obstacle": ObstacleSensor,
    "sensor.other.gnss": GnssSensor,
    "sensor.other.imu": ImuSensor,
    "sensor.lidar.ray_cast": LidarSensor,
    "sensor.other.radar": RadarSensor,
}
