"""Camera renderer of the embedded simulator: a plausible driving view in a few milliseconds on one core.

How a frame is made (all steps are whole-array cv2/numpy operations, no per-pixel Python):

1. Ground: a few planes, each drawn in a band of image rows as one homography of the top-down
   :class:`~carla_embedded.raster.TownRaster` (``cv2.warpPerspective``). In a level town (Town01/02)
   that is one plane at the road height under the camera. On hills the ground along the view is a
   continuous piecewise-linear profile fitted (least squares) to the town's
   :class:`~carla_embedded.raster.ElevationField` along the camera's heading, starting at the road under
   the camera; each segment's plane holds the camera's (horizontal) right vector, so image rows stay
   iso-depth lines, and each row shows the first segment its ray meets (crests hide what lies behind
   them; the sky fills the rows above the highest ground). Three pre-filtered levels of the raster
   (0.1/0.3/0.9 m per pixel) serve near, middle and far rows to limit aliasing.
2. Sky: a per-weather panorama (gradient, sun glow, clouds, distant hills) mapped with one affine warp
   (kept per image size: a camera that keeps its heading and pitch redraws only the rows/columns whose
   panorama pixel changed). The frame is BGRA from the start, as the image is delivered.
3. Fog, aerial haze and night darkness: the ground's distance depends only on the image row, so they
   are per-row blends done in a few horizontal bands.
4. Roadside objects (:mod:`carla_embedded.scenery`) within ``draw_distance``, standing on the drawn
   ground under them, and other actors at their own z: boxes, spheres and cones projected at once with
   :func:`project_points`, drawn far to near with per-face sun shading and fog; behind a crest each is
   cut at the rows where the ground is nearer than it.
5. Rain streaks, then camera roll as a final rotation about the principal point (roll is a rotation
   about the optical axis, so this is exact).

The geometry of steps 1 and 4 (ground profile, per-row ground distances, the bands' homographies, the
projected and culled boxes, crowns and cones) is a :class:`View`, kept per camera pose, size and fov:
the semantic, depth and instance cameras of a rig (``sensors.render_labels``) paint their labels (and
the ground's depth) from the same one.

Approximation (documented for users): the relief is modelled along the camera's heading only. The
ground across the view has no cross slope (at a given distance it is as high left and right as in the
middle), the profile has knots every 8-100 m (nearer ones closer) and is level beyond 400 m, and a road
passing over another is followed only where the profile starts on it. Lane geometry, markings, the
camera's pitch and the rise and fall of the road ahead are exact within a few pixels; scenery stands on
the drawn ground, so beside the road on a side slope it may stand higher or lower than the town's
terrain there; actors stand at their real height (cars pitched with the road), so a car on a side road
that climbs across the view may float above or sink into the drawn ground.

Weather follows ``carla.WeatherParameters``: sun altitude/azimuth (night below 0), cloudiness,
precipitation, precipitation_deposits (puddles), wetness, fog_density and fog_distance.
"""
from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass
from typing import Optional

import carla
import cv2
import numpy as np

from .raster import ElevationField, Material, TownRaster, smooth_noise
from .scenery import BOX_FACES, KIND_TRUNK, Scenery, generate_scenery

logger = logging.getLogger(__name__)

_PANO_DEG_PER_PX = 0.2
_PANO_AZ_PAD = 200.0  # degrees of azimuth repeated on each side so any view fits without wrapping
_PANO_EL_MIN = -30.0  # lowest elevation row of the panorama (below the horizon: haze)
_GROUND_MAX_DIST = 1500.0
_NEAR = 0.15  # near clipping plane, metres
_PAVED = (Material.ROAD, Material.SHOULDER, Material.SIDEWALK, Material.CURB, Material.MARKING_WHITE,
          Material.MARKING_YELLOW)
_ASPHALT = (Material.ROAD, Material.SHOULDER, Material.MARKING_WHITE, Material.MARKING_YELLOW)
_FACE_CONTRAST = np.array([1.06, 0.94, 1.03, 0.97, 1.09])  # per box face, see BOX_FACES
_LEVELS = (1, 3, 9)  # raster downsampling factors: near, middle, far ground


@dataclass(frozen=True)
class _PanoFields:
    """The light-independent arrays of the sky panorama (see :func:`_pano_fields`)."""
    el: np.ndarray               # (n_el,) elevation of each row, degrees
    t: np.ndarray                # (n_el,) zenith blend weight
    cos_el_cos_az: np.ndarray    # (n_el, n_az) direction cosines, for the angle to the sun
    cos_el_sin_az: np.ndarray
    sin_el: np.ndarray           # (n_el, 1)
    noise: np.ndarray            # (n_el, n_az) float32 cloud noise
    above: np.ndarray            # (n_el, 1) bool: row above -1 deg (clouds drawn)
    shade: np.ndarray            # (n_el, n_az, 1) float32 cloud shading
    stars: Optional[np.ndarray]  # (n_el, n_az) bool at night, else None
    hill: np.ndarray             # (n_el, n_az) bool: under the distant ridge line


_PANO_CACHE: dict = {}


def _pano_fields(night: bool) -> _PanoFields:
    """Angles, cloud noise, stars and ridge of the sky panorama, computed once per process (per night/day).

    The random fields come from one generator in a fixed order (clouds, then stars at night only,
    then the ridge), exactly as the panorama always drew them, so the sky is unchanged.
    """
    if night not in _PANO_CACHE:
        dpp = _PANO_DEG_PER_PX
        n_el = int((90.0 - _PANO_EL_MIN) / dpp)
        n_az = int((360.0 + 2 * _PANO_AZ_PAD) / dpp)
        el = 90.0 - (np.arange(n_el) + 0.5) * dpp  # degrees
        az = -_PANO_AZ_PAD + (np.arange(n_az) + 0.5) * dpp
        t = np.clip(el / 90.0, 0, 1) ** 0.45
        rng = np.random.default_rng(4242)
        elr, azr = np.radians(el)[:, None], np.radians(az)[None, :]
        cloud_cell = 60.0 / dpp
        noise = 0.6 * smooth_noise(n_el, n_az, cloud_cell / 2, rng) + 0.4 * smooth_noise(n_el, n_az, cloud_cell / 6, rng)
        noise = noise.astype(np.float32)
        stars = ((rng.random((n_el, n_az)) > 0.9985) & (el[:, None] > 5)) if night else None
        ridge = 0.6 + 3.2 * smooth_noise(1, n_az, 25.0 / dpp, rng)[0] ** 1.5 + 0.5 * smooth_noise(1, n_az, 3.0 / dpp, rng)[0]
        _PANO_CACHE[night] = _PanoFields(
            el=el, t=t, cos_el_cos_az=np.cos(elr) * np.cos(azr), cos_el_sin_az=np.cos(elr) * np.sin(azr),
            sin_el=np.sin(elr), noise=noise, above=el[:, None] > -1, shade=(0.8 + 0.35 * noise)[..., None],
            stars=stars, hill=el[:, None] < ridge[None, :])
    return _PANO_CACHE[night]
_FIRST = operator.itemgetter(0)  # painter's sort key: the distance
_OPAQUE = (0.0, 0.0, 0.0, 255.0)  # cv2.bitwise_or with this sets a BGRA image's alpha to 255
_LEVEL_TOLERANCE = 1e-3  # m: a view whose fitted ground stays this close to the camera's road height is level


def _hat_basis(t: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """(len(t), len(knots)) weights of the piecewise-linear interpolation between ``knots`` at ``t``."""
    return np.column_stack([np.interp(t, knots, np.eye(len(knots))[k]) for k in range(len(knots))])


#: Ground profile along a view: heights at these horizontal distances (m), linear between them, level
#: beyond the last; fitted by least squares to the elevation field sampled at ``_PROFILE_T``.
_PROFILE_KNOTS = np.array([0.0, 8.0, 18.0, 30.0, 45.0, 65.0, 90.0, 120.0, 160.0, 220.0, 300.0, 400.0])
_PROFILE_T = np.concatenate([np.arange(1.0, 100.0, 1.0), np.arange(100.0, 200.0, 2.0), np.arange(200.0, 401.0, 4.0)])
_PROFILE_B = _hat_basis(_PROFILE_T, _PROFILE_KNOTS)
_PROFILE_B0 = _PROFILE_B[:, 0]                        # the first knot is the road height under the camera
_PROFILE_FIT = np.linalg.pinv(_PROFILE_B[:, 1:])      # least squares for the other knots


# --------------------------------------------------------------------------- camera geometry
def rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """CARLA rotation (degrees) as a 3x3 matrix whose columns are the forward, right and up vectors."""
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cr, sr = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    forward = (cp * cy, cp * sy, sp)
    right = (cy * sp * sr - sy * cr, sy * sp * sr + cy * cr, -cp * sr)
    up = (-cy * sp * cr - sy * sr, -sy * sp * cr + cy * sr, cp * cr)
    return np.array([forward, right, up], dtype=np.float64).T


def focal_length(width: int, fov_deg: float) -> float:
    """CARLA's pinhole focal length in pixels: f = W / (2 tan(fov / 2))."""
    return width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def _to_camera(points: np.ndarray, origin: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """World points (..., 3) to camera coordinates (depth along forward, right, up)."""
    return (points - origin) @ rot


def _cam_to_uv(cam: np.ndarray, f: float, cx: float, cy: float) -> np.ndarray:
    depth = np.maximum(cam[..., 0], 1e-6)
    uv = np.empty(cam.shape[:-1] + (2,))            # filled in place: np.stack costs more than the maths here
    uv[..., 0] = cx + f * cam[..., 1] / depth
    uv[..., 1] = cy - f * cam[..., 2] / depth
    return uv


def project_points(points_world, camera_transform: carla.Transform, width: int, height: int,
                   fov: float) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection with CARLA's conventions; the renderer draws objects with the same maths.

    Returns ``uv`` (N,2) pixel coordinates (u right, v down, principal point (W/2, H/2)) and ``depth``
    (N,) along the camera's forward axis; points with depth <= 0 are behind the camera and their uv is
    meaningless.
    """
    pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    loc, r = camera_transform.location, camera_transform.rotation
    cam = _to_camera(pts, np.array([loc.x, loc.y, loc.z]), rotation_matrix(r.pitch, r.yaw, r.roll))
    return _cam_to_uv(cam, focal_length(width, fov), width / 2.0, height / 2.0), cam[:, 0]


# --------------------------------------------------------------------------- weather
def _smoothstep(a: float, b: float, x: float) -> float:
    t = min(1.0, max(0.0, (x - a) / (b - a)))
    return t * t * (3 - 2 * t)


def _mix(a, b, t):
    return np.asarray(a, np.float64) * (1 - t) + np.asarray(b, np.float64) * t


@dataclass(frozen=True)
class Lighting:
    """Scalar description of a weather's look, derived from ``carla.WeatherParameters``.

    Colours are BGR floats in 0..255. ``gain`` scales lit albedo; ``colour_matrix`` (3x3) applies gain,
    tint and the desaturation of overcast skies to BGR albedo. Fog: weight 1 - exp(-fog_k * (d -
    fog_start)). ``dark_k`` darkens with distance at night (only near things are lit by the car).
    """

    day: float
    overcast: float
    rain: float
    wet: float
    puddles: float
    ambient: float
    diffuse: float
    sun_dir: tuple
    colour_matrix: np.ndarray
    zenith: tuple
    horizon: tuple
    fog_colour: tuple
    fog_k: float
    fog_start: float
    dark_k: float
    lamps_on: bool

    @classmethod
    def from_weather(cls, weather: carla.WeatherParameters) -> "Lighting":
        alt = float(weather.sun_altitude_angle)
        az = math.radians(float(weather.sun_azimuth_angle))
        day = _smoothstep(-8.0, 12.0, alt)
        sunset = day * (1.0 - _smoothstep(8.0, 35.0, alt))
        clouds = float(np.clip(weather.cloudiness / 100.0, 0, 1))
        rain = float(np.clip(weather.precipitation / 100.0, 0, 1))
        overcast = max(clouds, rain)
        wet = float(np.clip(max(weather.wetness, weather.precipitation_deposits, 0.9 * weather.precipitation)
                            / 100.0, 0, 1))
        puddles = float(np.clip(weather.precipitation_deposits / 100.0, 0, 1))
        ambient = float(_mix(0.16, 0.55 + 0.3 * overcast, day))
        diffuse = day * 0.65 * (1.0 - 0.85 * overcast)
        el = math.radians(max(alt, -90.0))
        sun_dir = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
        gain = (ambient + diffuse * max(0.0, sun_dir[2])) * (1.0 - 0.3 * overcast)
        tint = _mix((1.0, 1.0, 1.0), (0.72, 0.88, 1.15), sunset * (1.0 - 0.6 * overcast))
        tint = _mix((1.25, 1.0, 0.82), tint, day)  # moonlit blue at night
        sat = 1.0 - 0.4 * overcast
        desat = sat * np.eye(3) + (1 - sat) * np.full((3, 3), 1 / 3)
        matrix = gain * np.diag(tint) @ desat

        zen = _mix((45, 20, 8), (215, 135, 55), day)
        hor = _mix((70, 45, 30), (235, 212, 185), day)
        zen = _mix(zen, (150, 105, 95), sunset)
        hor = _mix(hor, (120, 175, 245), sunset)
        grey = np.array([1.0, 1.0, 1.0]) * float(_mix(40, 178, day))
        zen = _mix(zen, grey * 0.85, 0.85 * overcast)
        hor = _mix(hor, grey, 0.85 * overcast)
        dim = 1.0 - 0.35 * rain
        zen, hor = zen * dim, hor * dim
        fog_colour = _mix(hor, grey * dim, 0.3)
        fog_k = 0.0004 + float(weather.fog_density) / 100.0 * 0.035 + 0.006 * rain
        return cls(day=day, overcast=overcast, rain=rain, wet=wet, puddles=puddles, ambient=ambient,
                   diffuse=diffuse, sun_dir=sun_dir, colour_matrix=matrix, zenith=tuple(zen), horizon=tuple(hor),
                   fog_colour=tuple(fog_colour), fog_k=fog_k, fog_start=max(0.0, float(weather.fog_distance)),
                   dark_k=float(_mix(0.045, 0.0, day)), lamps_on=day < 0.35)

    @property
    def flat_shade(self) -> float:
        """Shading of horizontal ground, already folded into ``colour_matrix``."""
        return max(self.ambient + self.diffuse * max(0.0, self.sun_dir[2]), 1e-3)

    def row_blend(self, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta) so that colour' = alpha * colour + beta * fog_colour at distance ``dist``."""
        fog = 1.0 - np.exp(-self.fog_k * np.maximum(dist - self.fog_start, 0.0))
        fog = np.maximum(fog, 1.0 - np.exp(-dist / 4000.0))  # aerial perspective even without fog
        light = np.exp(-self.dark_k * dist)
        if self.dark_k > 0:  # headlights: the road just ahead is lit at night
            light = light * (1.0 + 0.8 * np.exp(-dist / 10.0))
        return (1.0 - fog) * light, fog


@dataclass
class _Look:
    """Everything derived from one weather: lit raster levels, sky panorama, rain overlay."""

    key: tuple
    lighting: Lighting
    levels: list  # (image, factor) per _LEVELS
    border: tuple
    pano: np.ndarray  # BGRA
    glow: np.ndarray
    scenery: Optional[Scenery] = None  # the domain-randomised objects, when randomisation is on


@dataclass
class ExtraBoxes:
    """Boxes drawn with the scenery (other actors), same layout as :class:`~carla_embedded.scenery.Scenery`'s.

    ``corners`` (N,8,3) in world coordinates, ``normals`` (N,5,3) and ``colour`` (N,5,3) BGR
    albedo per face of :data:`~carla_embedded.scenery.BOX_FACES`; ``centre``/``face_centre``/``radius`` derived.
    """

    corners: np.ndarray
    normals: np.ndarray
    colour: np.ndarray

    def __post_init__(self):
        self.centre = self.corners.mean(axis=1) if len(self.corners) else np.zeros((0, 3))
        self.face_centre = self.corners[:, BOX_FACES].mean(axis=2) if len(self.corners) else np.zeros((0, 5, 3))
        self.radius = (np.linalg.norm(self.corners[:, 0] - self.corners[:, 6], axis=1) / 2
                       if len(self.corners) else np.zeros(0))


@dataclass
class ProjectedBoxes:
    """Boxes of one set (scenery or actors) seen by one view: the selected boxes ``sel`` (within the draw
    distance and the horizontal field of view), their corners in camera coordinates ``ccam`` (n,8,3), face
    polygons ``polys`` (n,5,4,2) int32 in 1/8 px, distances ``d`` (n,), and the faces to paint: ``flat``
    (rows, faces) facing the camera, wholly in front of the near plane and on the image; ``clipped`` (rows,
    faces) facing it and crossing the near plane (their polygon is clipped by whoever paints them)."""

    sel: np.ndarray
    ccam: np.ndarray
    polys: np.ndarray
    d: np.ndarray
    flat: tuple
    clipped: tuple


@dataclass
class ProjectedPoints:
    """Crowns or conifers seen by one view: selected ``sel``, camera coordinates ``cam`` (n,3) of their
    centre (crowns) or base (cones), ``apex`` (n,3) of cones, distances ``d`` (n,)."""

    sel: np.ndarray
    cam: np.ndarray
    d: np.ndarray
    apex: Optional[np.ndarray] = None


_ROW_SCALE: dict = {}


def _row_scale(yv: np.ndarray) -> np.ndarray:
    """sqrt(1 + yv^2) per row (distance over planar depth at the image centre column), kept per row set."""
    key = (len(yv), float(yv[0]), float(yv[-1]))
    scale = _ROW_SCALE.get(key)
    if scale is None:
        if len(_ROW_SCALE) > 16:
            _ROW_SCALE.clear()
        scale = _ROW_SCALE[key] = np.sqrt(1.0 + yv * yv)
    return scale


class View:
    """One unrolled camera's geometry in one frame, shared by the RGB image and the labels/depth of the same
    pose, size and fov (``Renderer.view``): rotation, the ground's per-row distances and homography, and the
    projected boxes, crowns and cones (cached per array of them), so a rig's cameras do this work once."""

    def __init__(self, origin: np.ndarray, pitch: float, yaw: float, width: int, height: int, f: float,
                 zg: float, draw_distance: float, elevation: Optional[ElevationField] = None):
        self.origin, self.pitch, self.yaw = origin, float(pitch), float(yaw)
        self.width, self.height, self.f = int(width), int(height), float(f)
        self.rot = rot = rotation_matrix(pitch, yaw, 0.0)
        fwd, right, up = rot[:, 0], rot[:, 1], rot[:, 2]
        self.cx, self.cy = cx, cy = width / 2.0, height / 2.0
        self.zg = zg
        self.ground = np.array([0.0, 0.0, zg])
        self.cam_h = cam_h = max(origin[2] - zg, 0.05)
        self.half_w = width / (2 * f)
        self.draw_distance = draw_distance
        rows = np.arange(height, dtype=np.float64)
        yv = -(rows - cy) / f
        # ray(u, v) = A @ (u, v, 1), scaled so that its component along fwd is 1 (s along it = planar depth)
        a = np.column_stack([right / f, -up / f, fwd - right * (cx / f) + up * (cy / f)])
        self.profile = self._fit_profile(elevation)
        if self.profile is None:
            # Level ground (roll is zero here, so rows are iso-distance lines).
            dir_z = fwd[2] + yv * up[2]
            with np.errstate(divide="ignore"):
                self.planar = np.where(dir_z < -1e-9, cam_h / -np.minimum(dir_z, -1e-9), np.inf)   # depth along fwd
            self.dist = self.planar * _row_scale(yv)
            ground_rows = np.nonzero(self.dist < _GROUND_MAX_DIST)[0]
            self.v_ground = int(ground_rows[0]) if len(ground_rows) else height
            # ground hit (homogeneous) = G @ ray
            g = np.array([[cam_h, 0.0, -origin[0]], [0.0, cam_h, -origin[1]], [0.0, 0.0, -1.0]])
            self.bands = [(self.v_ground, height, g @ a)] if self.v_ground < height else []
        else:
            self._profile_geometry(yv, a)
        self._nearest_ground = None
        self._cache: dict = {}

    def _fit_profile(self, elevation: Optional[ElevationField]) -> Optional[np.ndarray]:
        """Heights of the ground at ``_PROFILE_KNOTS`` along the view (None: level at ``zg`` within 1 mm):
        the continuous piecewise-linear least-squares fit to the elevation field sampled along the view's
        horizontal direction, starting at the road height under the camera."""
        if elevation is None:
            return None
        yaw = math.radians(self.yaw)
        hx, hy = math.cos(yaw), math.sin(yaw)
        z = elevation.profile(self.origin[0] + _PROFILE_T * hx, self.origin[1] + _PROFILE_T * hy, self.zg)
        knots = np.empty(len(_PROFILE_KNOTS))
        knots[0] = self.zg
        knots[1:] = _PROFILE_FIT @ (z - _PROFILE_B0 * self.zg)
        return knots if np.abs(knots - self.zg).max() > _LEVEL_TOLERANCE else None

    def _profile_geometry(self, yv: np.ndarray, a: np.ndarray) -> None:
        """Per-row ground of a piecewise-planar profile: each segment between two knots is a plane that
        holds the camera's right vector (horizontal, as roll is zero), so rows stay iso-depth lines. A row's
        ray (in the vertical plane of the view) meets first the segment ending at the first knot that rises
        above it: as seen from the camera, knot j subtends the slope e_j = (z_j - z_cam) / t_j, and a ray of
        slope m has passed under the ground by t_j iff max(e_1..e_j) >= m. So crests hide what lies behind
        them, exactly, with one sorted search. Behind the camera the ground is level at ``zg``, beyond the
        last knot level at the last knot's height. Rows are then grouped into bands of one segment, each
        drawn with that segment's plane homography (``bands``)."""
        fwd, up = self.rot[:, 0], self.rot[:, 2]
        yaw = math.radians(self.yaw)
        h = np.array([math.cos(yaw), math.sin(yaw)])
        ox, oy = self.origin[0], self.origin[1]
        oz = self.zg + self.cam_h
        tk, zk = _PROFILE_KNOTS, self.profile
        slope = np.diff(zk) / np.diff(tk)
        # segments z = c0 + g t: 0 behind the camera (level at zg), 1..K-1 between knots, K beyond (level)
        g = np.concatenate([[0.0], slope, [0.0]])
        c0 = np.concatenate([[zk[0]], zk[:-1] - slope * tk[:-1], [zk[-1]]])
        far = len(g) - 1
        ray_t = float(fwd[:2] @ h) + yv * float(up[:2] @ h)         # per row: horizontal run along the view
        ray_z = fwd[2] + yv * up[2]                                  # and rise, per unit planar depth
        rise = (zk[1:] - oz) / tk[1:]
        reach = np.maximum.accumulate(rise)                          # highest knot slope so far
        self._crest = bool(np.any(rise < reach))                     # a knot hidden: the ground hides things
        with np.errstate(divide="ignore", invalid="ignore"):
            seg = np.searchsorted(reach, ray_z / ray_t) + 1          # first knot above the ray ends the segment
            seg = np.where(ray_t > 1e-9, seg, 0)                     # looking back (down): level ground at zg
            s = (c0[seg] - oz) / (ray_z - g[seg] * ray_t)
            # no hit: up into the sky, or over every knot and not down onto the far level ground
            hit = (s > 0) & ((seg != far) | (s * ray_t >= tk[-1] - 1e-6))
        self.planar = np.where(hit, s, np.inf)
        self.dist = self.planar * _row_scale(yv)
        ground_rows = np.nonzero(self.dist < _GROUND_MAX_DIST)[0]
        height = len(yv)
        self.v_ground = v_ground = int(ground_rows[0]) if len(ground_rows) else height
        self.bands = []
        if v_ground < height:
            seg = np.where(hit[v_ground:], seg[v_ground:], far)       # rays grazing the far level ground
            change = np.nonzero(seg[1:] != seg[:-1])[0] + 1
            starts = np.concatenate([[0], change])
            k = seg[starts]
            # plane of segment k: normal n = (-g h, 1), n . P = c0 - g h . O_xy. The ray R = a (u, v, 1) from
            # O meets it at (homogeneous xy, w) = (O_xy, 1) (n . R) + (R_xy, 0) (c0 - oz): per band a 3x3
            # matrix of (u, v, 1), O' (n^T a) + (c0 - oz) [a_xy; 0].
            n_a = a[2][None, :] - g[k][:, None] * (h @ a[:2])[None, :]                # (b,3): n^T a
            a_xy = np.vstack([a[:2], np.zeros((1, 3))])
            homs = (np.array([ox, oy, 1.0])[None, :, None] * n_a[:, None, :] +
                    (c0[k] - oz)[:, None, None] * a_xy[None])
            edges = (starts + v_ground).tolist() + [height]
            self.bands = [(r0, r1, hm) for r0, r1, hm in zip(edges[:-1], edges[1:], homs)]

    def visible_rows(self, depth) -> Optional[list]:
        """For objects whose nearest point lies at planar ``depth`` (array): how many image rows from the top
        each may paint, as the ground hides what lies behind it (below a crest the ground is nearer than
        the object); None when it hides nothing (level ground, or no crest: every knot of the profile is
        seen above the ones before it, so every point of it is). The margin (10 % + 0.5 m) keeps objects
        that stand on the ground whole."""
        if self.profile is None or not self._crest:
            return None
        if self._nearest_ground is None:      # ground depth at or above each row, far to near: non-increasing
            self._nearest_ground = -np.minimum.accumulate(self.planar[self.v_ground:])
        d = 0.9 * np.asarray(depth, np.float64) - 0.5
        return (self.v_ground + np.searchsorted(self._nearest_ground, -d, side="right")).tolist()

    def ground_height(self, x, y) -> np.ndarray:
        """Height of the drawn ground under world xy (the profile at their distance along the view)."""
        if self.profile is None:
            return np.full(np.shape(x), self.zg)
        yaw = math.radians(self.yaw)
        t = (np.asarray(x) - self.origin[0]) * math.cos(yaw) + (np.asarray(y) - self.origin[1]) * math.sin(yaw)
        return np.interp(t, _PROFILE_KNOTS, self.profile, left=self.zg)

    def _cached(self, kind: str, array: np.ndarray, build):
        """``build()`` once per (kind, array object); the array is held so its id stays its own."""
        entry = self._cache.get((kind, id(array)))
        if entry is None or entry[0] is not array:
            if len(self._cache) > 16:          # a still camera over many frames: forget old actor arrays
                self._cache.clear()
            entry = self._cache[(kind, id(array))] = (array, build())
        return entry[1]

    def boxes(self, corners, centre, face_centre, normals, radius, static: bool = False) -> ProjectedBoxes:
        """Boxes seen by this view, see :class:`ProjectedBoxes`. ``static``: scenery, whose arrays never change
        (only the boxes near the camera are looked at, ``_nearby``) and whose z is relative to the ground
        (each box stands on the drawn ground under its centre, :meth:`lift`); otherwise world z (actors)."""
        return self._cached("boxes", corners, lambda: self._project_boxes(corners, centre, face_centre, normals,
                                                                            radius, static))

    def lift(self, points: np.ndarray) -> np.ndarray:
        """What to add to objects (n,3) whose z is relative to the ground: (n,3) with the drawn ground's
        height under each, or the (3,) constant of level ground."""
        if self.profile is None:
            return self.ground
        out = np.zeros((len(points), 3))
        out[:, 2] = self.ground_height(points[:, 0], points[:, 1])
        return out

    def _project_boxes(self, corners_all, centre_all, face_centre_all, normals_all, radius_all,
                       static: bool) -> ProjectedBoxes:
        origin, rot, f, cx, cy = self.origin, self.rot, self.f, self.cx, self.cy
        near = _nearby(centre_all, radius_all, origin, self.draw_distance) if static else None
        centre, radius = (centre_all, radius_all) if near is None else (centre_all[near], radius_all[near])
        lift = self.lift(centre) if static else None
        rel = centre - origin if lift is None else centre + lift - origin
        cam = rel @ rot
        d = np.sqrt(rel[:, 0] * rel[:, 0] + rel[:, 1] * rel[:, 1] + rel[:, 2] * rel[:, 2])   # = norm(rel, axis=1)
        sel = np.nonzero((d < self.draw_distance + radius) & (cam[:, 0] > -radius) &
                         (np.abs(cam[:, 1]) < cam[:, 0] * self.half_w + radius + 1))[0]
        d = d[sel]
        if lift is not None and lift.ndim == 2:
            lift = lift[sel][:, None, :]
        if near is not None:
            sel = near[sel]
        none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        if not len(sel):
            return ProjectedBoxes(sel, np.zeros((0, 8, 3)), np.zeros((0, 5, 4, 2), np.int32), np.zeros(0), none, none)
        corners, face_centre = corners_all[sel], face_centre_all[sel]
        if lift is not None:
            corners, face_centre = corners + lift, face_centre + lift
        ccam = _to_camera(corners, origin, rot)                                     # (n,8,3)
        uv = np.clip(_cam_to_uv(ccam, f, cx, cy), -1e5, 1e5)
        polys = np.ascontiguousarray(np.round(uv[:, BOX_FACES] * 8), dtype=np.int32)  # (n,5,4,2)
        visible = np.einsum("nfk,nfk->nf", normals_all[sel], origin - face_centre) > 0
        behind = (ccam[:, :, 0] <= _NEAR)[:, BOX_FACES]                             # corners before the near plane
        clipped = behind[:, :, 0] | behind[:, :, 1] | behind[:, :, 2] | behind[:, :, 3]
        # Faces wholly off the image (2 px margin for anti-aliased edges) paint nothing: skip them.
        # (n,5,2) per face over its 4 corners; numpy's min over that middle axis is ~5x slower than this
        lo = np.minimum(np.minimum(polys[:, :, 0], polys[:, :, 1]), np.minimum(polys[:, :, 2], polys[:, :, 3]))
        hi = np.maximum(np.maximum(polys[:, :, 0], polys[:, :, 1]), np.maximum(polys[:, :, 2], polys[:, :, 3]))
        margin = 16
        on_image = ((hi[..., 0] >= -margin) & (lo[..., 0] <= self.width * 8 + margin) &
                    (hi[..., 1] >= -margin) & (lo[..., 1] <= self.height * 8 + margin))
        return ProjectedBoxes(sel, ccam, polys, d, np.nonzero(visible & ~clipped & on_image),
                              np.nonzero(visible & clipped))

    def crowns(self, centre_all, radius_all) -> ProjectedPoints:
        """Tree crowns (spheres, centre z relative to the ground) in front of the camera and in view."""
        def build():
            near = _nearby(centre_all, radius_all, self.origin, self.draw_distance)
            radius = radius_all[near]
            c = centre_all[near]
            c = c + self.lift(c)
            cam = _to_camera(c, self.origin, self.rot)
            d = np.linalg.norm(c - self.origin, axis=1)
            sel = np.nonzero((d < self.draw_distance) & (cam[:, 0] > radius + _NEAR) &
                             (np.abs(cam[:, 1]) < cam[:, 0] * self.half_w + radius))[0]
            return ProjectedPoints(near[sel], cam[sel], d[sel])
        return self._cached("crowns", centre_all, build)

    def cones(self, base_all, radius_all, height_all) -> ProjectedPoints:
        """Conifers (cones, base z relative to the ground) in front of the camera and in view."""
        def build():
            near = _nearby(base_all, radius_all + height_all, self.origin, self.draw_distance)
            radius = radius_all[near]
            b = base_all[near]
            b = b + self.lift(b)
            apex = b.copy()
            apex[:, 2] += height_all[near]
            cam_b, cam_a = _to_camera(b, self.origin, self.rot), _to_camera(apex, self.origin, self.rot)
            d = np.linalg.norm((b + apex) / 2 - self.origin, axis=1)
            sel = np.nonzero((d < self.draw_distance) & (cam_b[:, 0] > radius + _NEAR) & (cam_a[:, 0] > _NEAR) &
                             (np.abs(cam_b[:, 1]) < cam_b[:, 0] * self.half_w + radius))[0]
            return ProjectedPoints(near[sel], cam_b[sel], d[sel], cam_a[sel])
        return self._cached("cones", base_all, build)


_NEARBY_SLACK = 20.0       # m the camera may move before the scenery near it is looked up again
_NEARBY: dict = {}


def _nearby(centre: np.ndarray, reach_extra: np.ndarray, origin: np.ndarray, reach: float) -> np.ndarray:
    """Indices (ascending) of the static items (scenery) that may lie within ``reach + reach_extra`` of
    ``origin``: all those within that plus ``_NEARBY_SLACK`` (+1 m for rounding) in the plane of a point
    the camera is within the slack of, so the result is a superset (triangle inequality; z only shortens
    the plane distance). Town03's 1565 boxes: ~200 near a camera instead of all, each frame."""
    entries = _NEARBY.setdefault(id(centre), [])
    if entries and entries[0][0] is not centre:                # another array now has this id
        entries.clear()
    x, y = float(origin[0]), float(origin[1])
    for _, rx, ry, r, idx in entries:
        if r == reach and math.hypot(x - rx, y - ry) <= _NEARBY_SLACK:
            return idx
    d = np.hypot(centre[:, 0] - x, centre[:, 1] - y)
    idx = np.nonzero(d < reach + reach_extra + _NEARBY_SLACK + 1.0)[0]
    entries.insert(0, (centre, x, y, reach, idx))
    del entries[4:]                                            # a few rigs far apart
    if len(_NEARBY) > 64:
        _NEARBY.clear()
    return idx


def _weather_key(w: carla.WeatherParameters) -> tuple:
    return tuple(round(float(getattr(w, k)), 3) for k in (
        "cloudiness", "precipitation", "precipitation_deposits", "wetness", "fog_density", "fog_distance",
        "sun_altitude_angle", "sun_azimuth_angle"))


# --------------------------------------------------------------------------- renderer
class Renderer:
    """Renders camera images of one town; build once per map (the raster is cached on disk).

    ``seed`` places the roadside scenery; the same (map, seed, camera, weather) always gives the same
    image. ``terrain=False`` ignores the town's relief: the ground is then level at the road height under
    each camera (the model before hills were drawn; it changes nothing in level towns such as Town01/02).
    """

    def __init__(self, carla_map: carla.Map, seed: int = 0, resolution: float = 0.1,
                 draw_distance: float = 120.0, raster: Optional[TownRaster] = None, terrain: bool = True):
        if draw_distance <= 0:
            raise ValueError(f"draw_distance={draw_distance!r} must be > 0 metres")
        self._map = carla_map
        self.seed = int(seed)
        self.draw_distance = float(draw_distance)
        self.raster = raster if raster is not None else TownRaster.from_map(carla_map, resolution=resolution)
        field = ElevationField.from_map(carla_map, cache_dir=self.raster.cache_dir) if terrain else None
        self.elevation: Optional[ElevationField] = None if field is None or field.flat else field   # None: level
        self.scenery: Scenery = generate_scenery(self.raster, seed=self.seed)
        self._puddles: Optional[np.ndarray] = None
        self._look: Optional[_Look] = None
        self._rain_cache: dict = {}
        self._fog_cache = None
        self._sky_cache: dict = {}          # (rows, width) -> (panorama, its columns, its rows, sky image)
        self.randomization = None  # randomization.DomainRandomization (training data only), or None

    # ------------------------------------------------------------------ public
    def render(self, camera_transform: carla.Transform, width: int, height: int, fov_deg: float,
               weather: carla.WeatherParameters, boxes: Optional["ExtraBoxes"] = None) -> np.ndarray:
        """A new (height, width, 4) uint8 BGRA image seen by a camera at ``camera_transform`` (world).

        ``boxes``: other actors (vehicles, walkers, traffic lights) drawn with the scenery, see
        :class:`ExtraBoxes`.
        """
        if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer))
                and width > 0 and height > 0):
            raise ValueError(f"image size {width!r}x{height!r} must be positive integers")
        if not (0.0 < float(fov_deg) < 180.0):
            raise ValueError(f"fov={fov_deg!r} degrees is out of range; use 0 < fov < 180")
        dr = self.randomization
        if dr is not None:  # camera mount jitter and FOV; the vehicle (hence the label) does not move
            camera_transform, fov_deg = dr.camera.apply(camera_transform, fov_deg)
            weather = dr.appearance.weather(weather)
        look = self._look_for(weather)
        loc, rot = camera_transform.location, camera_transform.rotation
        origin = np.array([loc.x, loc.y, loc.z], dtype=np.float64)
        f = focal_length(width, fov_deg)
        roll = float(rot.roll)
        if abs(roll) < 1e-3:
            return self._render_unrolled(origin, rot.pitch, rot.yaw, width, height, f, look, boxes)
        else:
            c, s = abs(math.cos(math.radians(roll))), abs(math.sin(math.radians(roll)))
            wp = int(math.ceil(width * c + height * s)) + 2
            hp = int(math.ceil(width * s + height * c)) + 2
            big = self._render_unrolled(origin, rot.pitch, rot.yaw, wp, hp, f, look, boxes)
            # Image rotation by the roll about the principal point (see module docstring).
            m = cv2.getRotationMatrix2D((wp / 2.0, hp / 2.0), roll, 1.0)
            m[:, 2] += (width / 2.0 - wp / 2.0, height / 2.0 - hp / 2.0)
            return cv2.warpAffine(big, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    # ------------------------------------------------------------------ per-weather state
    def _look_for(self, weather: carla.WeatherParameters) -> _Look:
        key = _weather_key(weather) + ((self.randomization.appearance.draw,) if self.randomization else ())
        if self._look is None or self._look.key != key:
            self._look = self._build_look(key, Lighting.from_weather(weather))
        return self._look

    def _build_look(self, key: tuple, light: Lighting) -> _Look:
        img = self.raster.image
        appearance = self.randomization.appearance if self.randomization else None
        if appearance is not None:
            img = appearance.recolour(img, self.raster.material)
        lit = cv2.transform(img, light.colour_matrix)
        if light.wet > 0.02:
            # Wet paving: darker, and a glossy film that reflects the sky.
            refl = np.array(light.horizon) * 0.08 * light.wet
            m = np.hstack([light.colour_matrix * (1.0 - 0.45 * light.wet), refl[:, None]])
            wet = cv2.transform(img, m)
            cv2.copyTo(wet, self._material_mask(_PAVED), lit)
            del wet
        if light.puddles > 0.02:
            field = self._puddle_field()
            thresh = int(255 * (0.86 - 0.16 * light.puddles))
            mask = cv2.bitwise_and(self._material_mask(_ASPHALT), cv2.threshold(field, thresh, 255, cv2.THRESH_BINARY)[1])
            puddle = np.empty_like(lit)
            sky = (np.array(light.zenith) + np.array(light.horizon)) / 2
            puddle[:] = np.clip(_mix(sky, sky.mean(), 0.5) * 0.55, 0, 255).astype(np.uint8)  # dull sky mirror
            cv2.addWeighted(lit, 0.45, puddle, 0.55, 0.0, dst=puddle)
            cv2.copyTo(puddle, mask, lit)
            del puddle
        if light.lamps_on:
            self._paint_lamp_pools(lit)
        # Kept as BGRA: OpenCV's bilinear warp of 4-channel uint8 is vectorised, of 3-channel it is not
        # (Town03's near band: 0.95 vs 3.0 ms); the unused alpha costs a third more memory.
        h, w = lit.shape[:2]
        levels = [(cv2.resize(lit, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA), k)
                  for k in _LEVELS[1:]]
        levels = [(cv2.cvtColor(img, cv2.COLOR_BGR2BGRA), k) for img, k in [(lit, 1)] + levels]
        del lit
        ground = np.array(self.raster.image.reshape(-1, 3)[:: 997].mean(axis=0), np.float64)
        border = tuple(float(v) for v in np.clip(light.colour_matrix @ ground, 0, 255))
        pano = self._sky_panorama(light)
        if appearance is not None:
            pano = appearance.sky_panorama(pano)
        pano = cv2.cvtColor(np.ascontiguousarray(pano), cv2.COLOR_BGR2BGRA)   # 4 channels warp faster, as the ground
        return _Look(key, light, levels, border, pano, self._glow_sprite(),
                     appearance.scenery(self.scenery) if appearance is not None else None)

    def _material_mask(self, materials) -> np.ndarray:
        """uint8 mask (255 where the raster's material is one of ``materials``), built with one LUT."""
        lut = np.zeros(256, np.uint8)
        lut[list(materials)] = 255
        return cv2.LUT(self.raster.material, lut)

    def _puddle_field(self) -> np.ndarray:
        if self._puddles is None:
            h, w = self.raster.material.shape
            rng = np.random.default_rng(self.seed + 777)
            k = 4
            small = smooth_noise(h // k + 2, w // k + 2, 2.5 / (self.raster.resolution * k), rng)
            small = 0.7 * small + 0.3 * smooth_noise(h // k + 2, w // k + 2, 0.8 / (self.raster.resolution * k), rng)
            self._puddles = cv2.resize((small * 255).astype(np.uint8), ((w // k + 2) * k, (h // k + 2) * k),
                                       interpolation=cv2.INTER_LINEAR)[:h, :w].copy()
        return self._puddles

    def _paint_lamp_pools(self, lit: np.ndarray) -> None:
        """Warm pools of street light on the ground under every lamp (night only)."""
        r_m = 9.0
        r = int(r_m / self.raster.resolution)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        fall = np.exp(-(xx ** 2 + yy ** 2) / (2 * (r / 2.2) ** 2))
        sprite = (fall[..., None] * np.array([38, 52, 62])).astype(np.uint8)
        h, w = lit.shape[:2]
        for x, y, _ in self.scenery.lamp_pos:
            u, v = self.raster.world_to_pixel(x, y)
            u, v = int(round(float(u))), int(round(float(v)))
            x0, y0, x1, y1 = u - r, v - r, u + r + 1, v + r + 1
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                continue
            cv2.add(lit[y0:y1, x0:x1], sprite, dst=lit[y0:y1, x0:x1])

    def _glow_sprite(self) -> np.ndarray:
        yy, xx = np.mgrid[-32:32, -32:32] + 0.5
        d = np.sqrt(xx ** 2 + yy ** 2) / 32.0
        g = np.exp(-d ** 2 * 6.0) + 0.6 * np.clip(1.0 - d * 4.0, 0, 1)
        return (np.clip(g, 0, 1)[..., None] * np.array([170, 225, 255, 0])).astype(np.uint8)   # BGRA, alpha 0: added

    def _sky_panorama(self, light: Lighting) -> np.ndarray:
        """Equirectangular sky: columns are azimuth (with padding), rows elevation from +90 down.

        What does not depend on the light (angles, cloud noise, stars, the ridge line) comes from
        :func:`_pano_fields`, computed once per process: a relight (weather change, domain
        randomisation) then costs about half as much, with the very same pixels.
        """
        g = _pano_fields(light.day < 0.3)
        el, n_el, n_az = g.el, g.el.shape[0], g.cos_el_cos_az.shape[1]
        col = _mix(np.array(light.horizon)[None], np.array(light.zenith)[None], g.t[:, None])  # (n_el, 3)
        sky = np.broadcast_to(col[:, None, :], (n_el, n_az, 3)).astype(np.float32)
        # Sun glow and disc (seen only when the sun is up).
        sx, sy, sz = light.sun_dir
        sun_vis = light.day * (1.0 - 0.9 * light.overcast)
        if sun_vis > 0:   # at night the glow is all zeros: skip its three full-panorama passes
            cosg = g.cos_el_cos_az * sx + g.cos_el_sin_az * sy + g.sin_el * sz
            gamma = np.degrees(np.arccos(np.clip(cosg, -1, 1)))
            sun_col = _mix((235, 245, 255), (120, 190, 255), 1.0 - _smoothstep(5, 40, math.degrees(math.asin(sz))))
            glow = (0.55 * np.exp(-gamma / 12.0) + 1.5 * (gamma < 1.6)) * sun_vis
            sky += (glow[..., None] * np.asarray(sun_col, np.float32)).astype(np.float32)
        # Clouds: noise stretched towards the horizon, coverage from cloudiness.
        noise = g.noise
        cover = light.overcast
        lo = 0.72 - 0.55 * cover
        alpha = np.clip((noise - lo) / 0.18, 0, 1) * g.above
        cloud_col = _mix(np.array(light.horizon) * 1.05, np.array(light.zenith) * 0.6 + 90 * light.day, 0.3)
        cloud_col = np.asarray(_mix(cloud_col, np.array(light.horizon) * 0.75, cover), np.float32)
        sky = sky * (1 - alpha[..., None]) + (cloud_col * g.shade) * alpha[..., None]
        if g.stars is not None:
            sky[g.stars] += 120 * (1 - light.overcast) * (1 - light.day / 0.3)
        # Distant hills and tree lines on the horizon, fading into haze.
        hill_col = _mix(np.array(light.colour_matrix @ np.array([70.0, 95.0, 80.0])), light.fog_colour, 0.6)
        sky[g.hill] = np.asarray(hill_col, np.float32)
        sky[el < 0] = np.asarray(light.fog_colour, np.float32)
        # Fog veils the whole sky towards the fog colour.
        veil = min(1.0, light.fog_k * 35.0)
        if veil > 0:
            sky = sky * (1 - veil) + np.asarray(light.fog_colour, np.float32) * veil
        return np.clip(sky, 0, 255).astype(np.uint8)

    # ------------------------------------------------------------------ frame
    def _ground_z(self, origin: np.ndarray) -> float:
        """Height of the road nearest ``origin``; the last answer is kept (cameras of one rig share it)."""
        key = (float(origin[0]), float(origin[1]), float(origin[2]))
        if getattr(self, "_ground_z_last", (None,))[0] != key:
            wp = self._map.get_waypoint(carla.Location(x=key[0], y=key[1], z=key[2]), project_to_road=True)
            self._ground_z_last = (key, float(wp.transform.location.z) if wp is not None else 0.0)
        return self._ground_z_last[1]

    def view(self, origin: np.ndarray, pitch: float, yaw: float, width: int, height: int, f: float) -> View:
        """The :class:`View` of an unrolled camera; the last few are kept, so the cameras of a rig that share
        pose, size and fov (an RGB and a semantic camera) share one."""
        key = (float(origin[0]), float(origin[1]), float(origin[2]), float(pitch), float(yaw), int(width),
               int(height), float(f), self.draw_distance)
        views = self.__dict__.setdefault("_views", {})
        view = views.get(key)
        if view is None:
            if len(views) >= 8:
                views.clear()
            view = views[key] = View(np.asarray(origin, np.float64), pitch, yaw, width, height, f,
                                     self._ground_z(origin), self.draw_distance, self.elevation)
        return view

    def _render_unrolled(self, origin, pitch, yaw, width, height, f, look: _Look, boxes=None) -> np.ndarray:
        light = look.lighting
        view = self.view(origin, pitch, yaw, width, height, f)
        out = np.empty((height, width, 4), np.uint8)       # BGRA throughout: no conversion per piece or at the end
        if view.v_ground > 0:
            self._draw_sky(out[:view.v_ground], pitch, yaw, width, view.cx, view.cy, f, look)
        if view.v_ground < height:
            self._draw_ground(out, view, look)
        self._draw_objects(out, view, look, boxes)
        if light.rain > 0.02:
            self._draw_rain(out, origin, light)
        return out

    def _draw_sky(self, dst, pitch, yaw, width, cx, cy, f, look: _Look) -> None:
        dpp = _PANO_DEG_PER_PX
        k = math.degrees(1.0 / f) / dpp  # panorama pixels per image pixel at the centre
        col0 = ((yaw % 360.0) + _PANO_AZ_PAD) / dpp
        # elevation at row v ~ pitch + (cy - v)/f  ->  panorama row (90 - el)/dpp
        row0 = (90.0 - pitch) / dpp
        m = np.array([[k, 0.0, col0 - k * cx], [0.0, k, row0 - k * cy]])
        h, pano = dst.shape[0], look.pano
        # The warp is a scale and shift (no rotation): pixel (x, y) is pano[rows[y], cols[x]]. The indices come
        # from the same warp of index images, so they are OpenCV's own rounding. A camera that keeps its
        # heading and pitch (a straight road) sees the same sky: kept per size, only changed rows/columns redone.
        cols, rows = _sky_indices(pano.shape, m, width, h)
        key = (h, width)
        cached = self._sky_cache.get(key)
        if cached is not None and cached[0] is pano:
            _, old_cols, old_rows, sky = cached
            dc, dr = np.flatnonzero(old_cols != cols), np.flatnonzero(old_rows != rows)
            if 4 * (len(dc) * h + len(dr) * width) > h * width:    # most of it: the warp is faster
                cached = None
            else:
                sky32, pano32 = _as_u32(sky), _as_u32(pano)
                if len(dr):
                    sky32[dr] = pano32[rows[dr][:, None], cols[None, :]]
                if len(dc):
                    sky32[:, dc] = pano32[rows[:, None], cols[dc][None, :]]
        if cached is None or cached[0] is not pano:
            if len(self._sky_cache) >= 8:
                self._sky_cache.clear()
            sky = cv2.warpAffine(pano, m, (width, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_REPLICATE)
        self._sky_cache[key] = (pano, cols, rows, sky)
        np.copyto(dst, sky)

    def _draw_ground(self, out, view: View, look: _Look) -> None:
        height, width = out.shape[:2]
        v_ground, dist, f = view.v_ground, view.dist, view.f
        r = self.raster
        # Level by row: fine while one screen pixel spans < ~2 raster pixels across the road.
        footprint = dist[v_ground:] / f
        level = np.zeros(len(footprint), np.int64)
        for k in _LEVELS[1:]:
            level += footprint > 2.2 * r.resolution * k / 3.0
        level_kr = _level_pixel_maps(r)
        border = look.border + (255.0,)
        for r0, r1, level_k, world_h in _ground_pieces(view.bands, level, v_ground):
            hm = level_kr[level_k] @ world_h @ _row_shift(r0)
            cv2.warpPerspective(look.levels[level_k][0], hm, (width, r1 - r0), dst=out[r0:r1],
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=border)
        # Fog / haze / night darkness, in bands of nearly equal weight.
        alpha, beta = look.lighting.row_blend(dist[v_ground:])
        qa = np.round(alpha * 40.0)
        qb = np.round(beta * 40.0)
        change = np.nonzero((np.diff(qa) != 0) | (np.diff(qb) != 0))[0] + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(alpha)]])
        fog_rows = self._fog_image(out.shape, look.lighting.fog_colour)
        blended = None                                # rows [blended[0], blended[1]) had their alpha blended too
        for s0, s1 in zip(starts.tolist(), ends.tolist()):
            a_ = float(alpha[(s0 + s1 - 1) // 2])
            b_ = float(beta[(s0 + s1 - 1) // 2])
            if abs(a_ - 1.0) < 0.01 and b_ < 0.01:
                continue
            band = out[v_ground + s0:v_ground + s1]
            cv2.addWeighted(band, a_, fog_rows[: s1 - s0], b_, 0.0, dst=band)
            blended = (s0 if blended is None else blended[0], s1)
        if blended is not None:                       # back to opaque (a darkening blend lowers alpha too)
            rows = out[v_ground + blended[0]:v_ground + blended[1]]
            cv2.bitwise_or(rows, _OPAQUE, dst=rows)

    def _draw_objects(self, out, view: View, look: _Look, boxes=None) -> None:
        """Painter's algorithm over every visible face/crown/lamp (and actor box) within ``draw_distance``."""
        sc = look.scenery if look.scenery is not None else self.scenery
        light = look.lighting
        origin, rot, f, cx, cy = view.origin, view.rot, view.f, view.cx, view.cy
        dd = self.draw_distance
        fog = np.asarray(light.fog_colour)
        draws: list = []  # (distance, drawing function, args)

        # ---- boxes: buildings, trunks, poles, lamp heads; then other actors
        if len(sc.box_kind):
            p = view.boxes(sc.box_corners, sc.box_centre, sc.box_face_centre, sc.box_normals, sc.box_radius,
                           static=True)
            self._box_draws(draws, p, view, sc.box_normals, sc.box_colour, _trunk_bias(sc), light)
        if boxes is not None and len(boxes.corners):
            p = view.boxes(boxes.corners, boxes.centre, boxes.face_centre, boxes.normals, boxes.radius)
            self._box_draws(draws, p, view, boxes.normals, boxes.colour, None, light)

        # ---- tree crowns: a shaded disc with a sunlit highlight
        if len(sc.sphere_radius):
            p = view.crowns(sc.sphere_centre, sc.sphere_radius)
            sel = p.sel
            if len(sel):
                uv = _cam_to_uv(p.cam, f, cx, cy)
                pr = f * sc.sphere_radius[sel] / p.cam[:, 0]
                al, be = light.row_blend(p.d)
                dark, lit = _dark_lit(sc.sphere_colour[sel], light, al, be, fog)
                # centre, highlight centre, radii in 1/8 px, rounded at once: x0 y0 x1 y1 r0 r1
                pos = np.empty((len(sel), 6))
                pos[:, 0:2] = uv * 8
                pos[:, 2:4] = (uv - pr[:, None] * np.array([0.22, 0.25])) * 8
                pos[:, 4] = pr * 8
                pos[:, 5] = pr * 0.62 * 8
                pos = np.round(pos).astype(np.int64).tolist()
                d = p.d.tolist()
                rows = view.visible_rows(p.cam[:, 0] - sc.sphere_radius[sel])
                for j in range(len(sel)):
                    x0, y0, x1, y1, r0, r1 = pos[j]
                    args = ([x0, y0], r0, tuple(dark[j]), [x1, y1], r1, tuple(lit[j]))
                    draws.append((d[j], _crown, args) if rows is None or rows[j] >= view.height else
                                 (d[j], _clipped, (rows[j], _crown, args)))

        # ---- conifers: a cone seen from the side is a triangle, lit on one half
        if len(sc.cone_radius):
            p = view.cones(sc.cone_base, sc.cone_radius, sc.cone_height)
            sel = p.sel
            if len(sel):
                uvb = _cam_to_uv(p.cam, f, cx, cy)
                uva = _cam_to_uv(p.apex, f, cx, cy)
                pr = (f * sc.cone_radius[sel] / p.cam[:, 0])[:, None] * np.array([1.0, 0.0])
                al, be = light.row_blend(p.d)
                dark, lit = _dark_lit(sc.cone_colour[sel], light, al, be, fog)
                tri = np.ascontiguousarray(np.round(np.stack([uva, uvb - pr, uvb + pr], 1) * 8), dtype=np.int32)
                half = np.ascontiguousarray(np.round(np.stack([uva, uvb - pr, uvb], 1) * 8), dtype=np.int32)
                d = p.d.tolist()
                rows = view.visible_rows(p.cam[:, 0] - sc.cone_radius[sel])
                for j in range(len(sel)):
                    args = (tri[j], tuple(dark[j]), half[j], tuple(lit[j]))
                    draws.append((d[j], _cone, args) if rows is None or rows[j] >= view.height else
                                 (d[j], _clipped, (rows[j], _cone, args)))

        # ---- street lamps at night: additive glow, dimmed by fog only
        if light.lamps_on and len(sc.lamp_pos):
            c = sc.lamp_pos + view.lift(sc.lamp_pos)
            cam = _to_camera(c, origin, rot)
            d = np.linalg.norm(c - origin, axis=1)
            sel = np.nonzero((d < dd * 1.5) & (cam[:, 0] > 1.0))[0]
            if len(sel):
                uv = _cam_to_uv(cam[sel], f, cx, cy)
                vis = np.exp(-light.fog_k * np.maximum(d[sel] - light.fog_start, 0) * 0.5)
                size = np.clip(f * 9.0 / cam[sel, 0], 6, 200).astype(int)
                for j in range(len(sel)):
                    draws.append((d[sel[j]] - 0.5, _blit_glow, (look.glow, uv[j], int(size[j]), float(vis[j]))))
        draws.sort(key=_FIRST, reverse=True)         # far to near; stable, as reverse keeps ties in order
        for _, func, args in draws:
            func(out, *args)

    @staticmethod
    def _box_draws(draws, p: ProjectedBoxes, view: View, normals_all, colour_all, dist_bias, light: Lighting) -> None:
        """Append the faces of projected boxes ``p`` to the painter's list, shaded and fogged."""
        sel = p.sel
        if not len(sel):
            return
        fog = np.asarray(light.fog_colour)
        fill = cv2.fillConvexPoly
        normals = normals_all[sel]
        shade = light.ambient + light.diffuse * np.clip(normals @ np.array(light.sun_dir), 0, None)
        shade = shade * _FACE_CONTRAST  # keeps edges readable when there is no direct sun
        colour = (colour_all[sel] @ light.colour_matrix.T) * (shade / light.flat_shade)[..., None]
        al, be = light.row_blend(p.d)
        colour = _bgra(colour * al[:, None, None] + fog * be[:, None, None], as_list=False)
        dist = (p.d if dist_bias is None else p.d + dist_bias[sel]).tolist()
        rows = view.visible_rows(p.ccam[:, :, 0].min(axis=1))
        js, fis = p.flat
        for j, poly, c in zip(js.tolist(), p.polys[js, fis], colour[js, fis].tolist()):
            args = (poly, tuple(c), cv2.LINE_AA, 3)
            draws.append((dist[j], fill, args) if rows is None or rows[j] >= view.height else
                         (dist[j], _clipped, (rows[j], fill, args)))
        for j, fi in zip(*(a.tolist() for a in p.clipped)):
            poly = _clip_near(p.ccam[j, BOX_FACES[fi]])
            if len(poly) >= 3:
                pts = np.round(np.clip(_cam_to_uv(poly, view.f, view.cx, view.cy), -1e5, 1e5) * 8).astype(np.int32)
                args = (pts, tuple(colour[j, fi].tolist()), cv2.LINE_AA, 3)
                draws.append((dist[j], fill, args) if rows is None or rows[j] >= view.height else
                             (dist[j], _clipped, (rows[j], fill, args)))

    def _fog_image(self, shape, colour) -> np.ndarray:
        key = (shape, tuple(np.clip(colour, 0, 255).astype(np.uint8).tolist()) + (255,))
        if self._fog_cache is None or self._fog_cache[0] != key:
            img = np.empty(shape, np.uint8)
            img[:] = key[1]
            self._fog_cache = (key, img)
        return self._fog_cache[1]

    def _draw_rain(self, out, origin, light: Lighting) -> None:
        h, w = out.shape[:2]
        key = (w, h, round(light.rain, 2))
        overlay = self._rain_cache.get(key)
        if overlay is None:
            rng = np.random.default_rng(99)
            overlay = np.zeros((2 * h, w, 4), np.uint8)     # alpha 0: adding it keeps the image opaque
            n = int(light.rain * w * h / 2500)
            xs = rng.uniform(0, w, n)
            ys = rng.uniform(0, 2 * h, n)
            ln = rng.uniform(0.03, 0.09, n) * h
            val = rng.uniform(15, 40, n) * (0.5 + 0.5 * light.day)
            for x, y, l, v in zip(xs, ys, ln, val):
                cv2.line(overlay, (int(x), int(y)), (int(x - 0.08 * l), int(y + l)), (v, v, v), 1, cv2.LINE_AA)
            overlay = cv2.blur(overlay, (1, 3))
            self._rain_cache = {key: overlay}
        off = int(abs(origin[0] * 37.0 + origin[1] * 53.0)) % h
        cv2.add(out, overlay[off:off + h], dst=out)


def _level_pixel_maps(raster: TownRaster) -> list:
    """Per raster level (``_LEVELS``): the 3x3 map from world xy to that level's pixels (kept on the raster)."""
    maps = raster.__dict__.get("_level_pixel_maps")
    if maps is None:
        maps = []
        for k in _LEVELS:
            res = raster.resolution * k
            x0 = raster.x0 + (k - 1) / 2.0 * raster.resolution
            y0 = raster.y0 + (k - 1) / 2.0 * raster.resolution
            maps.append(np.array([[1 / res, 0, -x0 / res], [0, 1 / res, -y0 / res], [0, 0, 1.0]]))
        raster.__dict__["_level_pixel_maps"] = maps
    return maps


def _row_shift(r0: int) -> np.ndarray:
    """The 3x3 map from a band's own pixels to the image's: rows start at ``r0``."""
    shift = np.eye(3)
    shift[1, 2] = r0
    return shift


def _ground_pieces(bands: list, level: np.ndarray, v_ground: int) -> list:
    """Row ranges of one ground plane and one raster level: (r0, r1, level index, plane homography), far
    (coarse) to near. ``bands`` are (r0, r1, homography) of the view's planes, ``level`` the raster level
    of each row from ``v_ground`` down."""
    change = (np.nonzero(np.diff(level))[0] + 1 + v_ground).tolist()
    pieces = []
    for b0, b1, world_h in bands:
        cuts = [b0] + [c for c in change if b0 < c < b1] + [b1]
        pieces += [(r0, r1, int(level[r0 - v_ground]), world_h) for r0, r1 in zip(cuts[:-1], cuts[1:])]
    return pieces


_INDEX_IMAGES: dict = {}


def _sky_indices(shape: tuple, m: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns (width,), rows (height,)) of the panorama of ``shape`` that ``cv2.warpAffine`` with the
    separable matrix ``m`` (no rotation), INTER_NEAREST, WARP_INVERSE_MAP and BORDER_REPLICATE takes each
    image column and row from: the same warp of a row and a column of index values (exact in float32)."""
    images = _INDEX_IMAGES.get(shape[:2])
    if images is None:
        images = _INDEX_IMAGES[shape[:2]] = (np.arange(shape[1], dtype=np.float32)[None, :],
                                             np.arange(shape[0], dtype=np.float32)[:, None])
    flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
    cols = cv2.warpAffine(images[0], m, (width, 1), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    rows = cv2.warpAffine(images[1], m, (1, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return cols.reshape(-1).astype(np.intp), rows.reshape(-1).astype(np.intp)


def _as_u32(image: np.ndarray) -> np.ndarray:
    """A contiguous (H, W, 4) uint8 image viewed as (H, W) uint32: one element per pixel."""
    return image.view(np.uint32).reshape(image.shape[:2])


def _dark_lit(albedo: np.ndarray, light: Lighting, al: np.ndarray, be: np.ndarray, fog: np.ndarray) -> tuple:
    """(shaded, sunlit) BGRA colour lists of vegetation (crowns, cones) of ``albedo`` (n,3), fogged by the
    (alpha, beta) of their distances: both in one pass of array operations."""
    base = albedo @ light.colour_matrix.T * ((light.ambient + 0.4 * light.diffuse) / light.flat_shade)
    both = base[:, None, :] * np.array([0.8, 0.85 + 0.35 * light.diffuse])[None, :, None] * al[:, None, None]
    both = _bgra(both + fog * be[:, None, None])
    return [c[0] for c in both], [c[1] for c in both]


def _bgra(colour: np.ndarray, as_list: bool = True):
    """BGR float colours (..., 3) clipped to 0..255 with an alpha of 255 appended (..., 4), as nested lists
    for cv2's drawing calls unless ``as_list`` is False: the frame is BGRA and what is drawn is opaque."""
    out = np.full(colour.shape[:-1] + (4,), 255.0)
    np.clip(colour, 0, 255, out=out[..., :3])
    return out.tolist() if as_list else out


def _trunk_bias(sc: Scenery) -> np.ndarray:
    """Painter's distance bias per scenery box: trunks count 0.5 m farther, behind their crowns (cached)."""
    bias = sc.__dict__.get("_trunk_bias")
    if bias is None:
        bias = sc.__dict__["_trunk_bias"] = np.where(sc.box_kind == KIND_TRUNK, 0.5, 0.0)
    return bias


def _clip_near(poly: np.ndarray, near: float = _NEAR) -> np.ndarray:
    """Clip a convex polygon in camera coordinates against the plane depth = near."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ina, inb = a[0] > near, b[0] > near
        if ina:
            out.append(a)
        if ina != inb:
            t = (near - a[0]) / (b[0] - a[0])
            out.append(a + (b - a) * t)
    return np.array(out).reshape(-1, 3)


def _blit_glow(out, sprite, uv, size, vis) -> None:
    h, w = out.shape[:2]
    x0, y0 = int(uv[0]) - size // 2, int(uv[1]) - size // 2
    x1, y1 = x0 + size, y0 + size
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        return
    spr = cv2.resize(sprite, (size, size), interpolation=cv2.INTER_LINEAR)
    if vis < 0.99:
        spr = (spr * vis).astype(np.uint8)
    sx0, sy0 = max(0, -x0), max(0, -y0)
    sx1, sy1 = size - max(0, x1 - w), size - max(0, y1 - h)
    roi = out[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    cv2.add(roi, spr[sy0:sy1, sx0:sx1], dst=roi)


def _clipped(out, rows, func, args) -> None:
    """``func(out, *args)`` on the top ``rows`` rows of ``out`` only (what the ground does not hide)."""
    if rows > 0:
        func(out[:rows], *args)


def _crown(out, p0, r0, c0, p1, r1, c1) -> None:
    cv2.circle(out, p0, r0, c0, -1, cv2.LINE_AA, 3)
    cv2.circle(out, p1, r1, c1, -1, cv2.LINE_AA, 3)


def _cone(out, tri, c0, half, c1) -> None:
    cv2.fillConvexPoly(out, tri, c0, cv2.LINE_AA, 3)
    cv2.fillConvexPoly(out, half, c1, cv2.LINE_AA, 3)
