"""Domain randomisation of the embedded renderer (training data only): appearance and camera mount.

A classifier trained on one look learns that look. Randomising what does not change the label --
colours of road, markings, ground, sidewalks, buildings and trees; sky; sun and light; how much
roadside clutter stands about; the camera's height, pitch, field of view and small mount offsets --
leaves it only the road's shape to learn. Labels stay exact: they come from the map along the route
of the *vehicle*, and nothing here moves the vehicle (the camera offset is applied at render time).

Two parts, sampled separately because they cost differently:

* :class:`CameraJitter` (per frame, free): offsets added to the sensor's mount, and the FOV.
* :class:`Appearance` (every ``appearance_period`` frames): per-material colour gains applied to the
  town raster, sky gain/tint, sun altitude/azimuth and cloudiness overrides, clutter. A new
  appearance relights the whole raster (like a weather change: ~0.3-0.6 s per town on one core), so
  it is resampled every few *saved* frames, not every tick: the collector advances the appearance
  clock only after a frame was saved (:meth:`DomainRandomization.step`), because it ticks ~25 times
  per saved frame and, counted in ticks, nearly every saved frame paid for a relight (Town01 at
  320x190: 0.77 s of the 0.9 s per saved frame).

Everything sampled is returned by :meth:`DomainRandomization.record` as a flat dict of plain numbers
(for a manifest row / JSON) so a dataset can be audited; ``enabled=False`` or
``World.set_domain_randomization(None)`` switches it off, and the renderer is then bit-identical to
one that never saw randomisation.

Ranges (defaults of :class:`RandomizationConfig`, all uniform):

=========================  =====================================================
camera height offset       -0.4 .. +0.6 m added to the mount's z (2.0 m by default)
camera pitch offset        -6 .. +4 deg added to the mount's pitch
camera FOV                 75 .. 105 deg (replaces the blueprint's fov)
mount jitter               x, y within +-0.25 m; yaw +-3 deg; roll +-2 deg
road / shoulder / median   brightness 0.55 .. 1.5, per-channel tint +-12 %
markings                   brightness 0.55 .. 1.1 (worn to fresh), tint +-8 %
ground, sidewalk, curb     brightness 0.6 .. 1.4, tint +-20 % (grass, dry earth, sand)
buildings, trees           brightness 0.6 .. 1.4, tint +-20 %
sky                        brightness 0.7 .. 1.3, tint +-15 %
sun                        altitude: preset + (-20 .. +20) deg; azimuth 0 .. 360 deg
cloudiness                 preset + (-30 .. +30), clipped to 0 .. 100
clutter                    keep 40 .. 100 % of the roadside objects
=========================  =====================================================
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import carla
import cv2
import numpy as np

from .raster import Material

Range = tuple[float, float]
_WEATHER_FIELDS = ("cloudiness", "precipitation", "precipitation_deposits", "wind_intensity", "sun_azimuth_angle",
                   "sun_altitude_angle", "fog_density", "fog_distance", "fog_falloff", "wetness",
                   "scattering_intensity", "mie_scattering_scale", "rayleigh_scattering_scale", "dust_storm")


@dataclass(frozen=True)
class RandomizationConfig:
    """Sampling ranges (see the module table). ``appearance_period``: frames between appearance draws
    (frames that advance the appearance clock: saved frames in the collector, see :meth:`DomainRandomization.step`)."""
    enabled: bool = True
    camera_height_m: Range = (-0.4, 0.6)
    camera_pitch_deg: Range = (-6.0, 4.0)
    camera_fov_deg: Range = (75.0, 105.0)
    mount_xy_m: float = 0.25
    mount_yaw_deg: float = 3.0
    mount_roll_deg: float = 2.0
    road_gain: Range = (0.55, 1.5)
    road_tint: float = 0.12
    marking_gain: Range = (0.55, 1.1)
    marking_tint: float = 0.08
    terrain_gain: Range = (0.6, 1.4)
    terrain_tint: float = 0.2
    object_gain: Range = (0.6, 1.4)
    object_tint: float = 0.2
    sky_gain: Range = (0.7, 1.3)
    sky_tint: float = 0.15
    sun_altitude_delta_deg: Range = (-20.0, 20.0)
    cloudiness_delta: Range = (-30.0, 30.0)
    clutter_keep: Range = (0.4, 1.0)
    appearance_period: int = 5

    def __post_init__(self):
        for name in ("camera_height_m", "camera_pitch_deg", "camera_fov_deg", "road_gain", "marking_gain",
                     "terrain_gain", "object_gain", "sky_gain", "sun_altitude_delta_deg", "cloudiness_delta",
                     "clutter_keep"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name}={getattr(self, name)!r}: low must be <= high")
        lo, hi = self.camera_fov_deg
        if not 0 < lo <= hi < 180:
            raise ValueError(f"camera_fov_deg={self.camera_fov_deg!r} must lie within (0, 180) degrees")
        if not 0 <= self.clutter_keep[0] <= self.clutter_keep[1] <= 1:
            raise ValueError(f"clutter_keep={self.clutter_keep!r} must lie within [0, 1]")
        if self.appearance_period < 1:
            raise ValueError(f"appearance_period={self.appearance_period} must be >= 1 frame")


@dataclass(frozen=True)
class CameraJitter:
    """Offsets in the camera's own mount frame (m, deg) and the FOV used for this frame."""
    dx: float = 0.0
    dy: float = 0.0
    dz: float = 0.0
    dpitch: float = 0.0
    dyaw: float = 0.0
    droll: float = 0.0
    fov: Optional[float] = None

    @classmethod
    def sample(cls, rng: np.random.Generator, cfg: RandomizationConfig) -> "CameraJitter":
        u = rng.uniform
        return cls(dx=float(u(-cfg.mount_xy_m, cfg.mount_xy_m)), dy=float(u(-cfg.mount_xy_m, cfg.mount_xy_m)),
                   dz=float(u(*cfg.camera_height_m)), dpitch=float(u(*cfg.camera_pitch_deg)),
                   dyaw=float(u(-cfg.mount_yaw_deg, cfg.mount_yaw_deg)),
                   droll=float(u(-cfg.mount_roll_deg, cfg.mount_roll_deg)), fov=float(u(*cfg.camera_fov_deg)))

    def apply(self, transform: carla.Transform, fov: float) -> tuple[carla.Transform, float]:
        """The world transform and FOV the renderer should use for a sensor at ``transform``."""
        loc, rot = transform.location, transform.rotation
        fwd, right = transform.get_forward_vector(), transform.get_right_vector()
        x = loc.x + self.dx * fwd.x + self.dy * right.x
        y = loc.y + self.dx * fwd.y + self.dy * right.y
        z = loc.z + self.dz
        out = carla.Transform(carla.Location(x=x, y=y, z=z),
                              carla.Rotation(pitch=rot.pitch + self.dpitch, yaw=rot.yaw + self.dyaw,
                                             roll=rot.roll + self.droll))
        return out, (self.fov if self.fov is not None else fov)

    def variant(self) -> str:
        """Coarse bin name for robustness reports: height / pitch / fov, each low|mid|high."""
        def third(v, lo, hi):
            t = (v - lo) / (hi - lo) if hi > lo else 0.5
            return "low" if t < 1 / 3 else "mid" if t < 2 / 3 else "high"
        cfg = RandomizationConfig()
        return (f"h-{third(self.dz, *cfg.camera_height_m)}/p-{third(self.dpitch, *cfg.camera_pitch_deg)}/"
                f"fov-{third(self.fov or 90.0, *cfg.camera_fov_deg)}")


def _colour(rng: np.random.Generator, gain: Range, tint: float) -> tuple[float, float, float]:
    g = rng.uniform(*gain)
    return tuple(float(g * rng.uniform(1 - tint, 1 + tint)) for _ in range(3))


@dataclass(frozen=True)
class Appearance:
    """One draw of everything that changes how the town looks (BGR gains, sun, clutter)."""
    draw: int = 0                                  # increasing id: the renderer's look-cache key
    road: tuple = (1.0, 1.0, 1.0)
    marking: tuple = (1.0, 1.0, 1.0)
    terrain: tuple = (1.0, 1.0, 1.0)
    sidewalk: tuple = (1.0, 1.0, 1.0)
    objects: tuple = (1.0, 1.0, 1.0)
    sky: tuple = (1.0, 1.0, 1.0)
    sun_altitude_delta: float = 0.0
    sun_azimuth: Optional[float] = None
    cloudiness_delta: float = 0.0
    clutter_keep: float = 1.0
    clutter_seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator, cfg: RandomizationConfig, draw: int) -> "Appearance":
        return cls(draw=draw, road=_colour(rng, cfg.road_gain, cfg.road_tint),
                   marking=_colour(rng, cfg.marking_gain, cfg.marking_tint),
                   terrain=_colour(rng, cfg.terrain_gain, cfg.terrain_tint),
                   sidewalk=_colour(rng, cfg.terrain_gain, cfg.terrain_tint),
                   objects=_colour(rng, cfg.object_gain, cfg.object_tint),
                   sky=_colour(rng, cfg.sky_gain, cfg.sky_tint),
                   sun_altitude_delta=float(rng.uniform(*cfg.sun_altitude_delta_deg)),
                   sun_azimuth=float(rng.uniform(0.0, 360.0)),
                   cloudiness_delta=float(rng.uniform(*cfg.cloudiness_delta)),
                   clutter_keep=float(rng.uniform(*cfg.clutter_keep)), clutter_seed=int(rng.integers(2**31)))

    # -- hooks called by render.Renderer ------------------------------------------------------
    def weather(self, weather: carla.WeatherParameters) -> carla.WeatherParameters:
        w = carla.WeatherParameters(**{k: getattr(weather, k) for k in _WEATHER_FIELDS})
        w.sun_altitude_angle = float(np.clip(weather.sun_altitude_angle + self.sun_altitude_delta, -90, 90))
        if self.sun_azimuth is not None:
            w.sun_azimuth_angle = self.sun_azimuth
        w.cloudiness = float(np.clip(weather.cloudiness + self.cloudiness_delta, 0, 100))
        return w

    def recolour(self, image: np.ndarray, material: np.ndarray) -> np.ndarray:
        """Town raster albedo (BGR uint8) with per-material gains: three LUTs and one multiply."""
        lut = np.ones((256, 3), np.float64)
        for mats, gain in (((Material.ROAD, Material.SHOULDER, Material.MEDIAN), self.road),
                           ((Material.MARKING_WHITE, Material.MARKING_YELLOW), self.marking),
                           ((Material.GROUND,), self.terrain), ((Material.SIDEWALK, Material.CURB), self.sidewalk)):
            lut[list(mats)] = gain
        q = np.clip(np.round(lut * 100), 0, 255).astype(np.uint8)
        gains = cv2.merge([cv2.LUT(material, q[:, c].copy()) for c in range(3)])
        return cv2.multiply(image, gains, scale=1 / 100.0)

    def sky_panorama(self, pano: np.ndarray) -> np.ndarray:
        """The sky panorama (BGR uint8) with this draw's sky gain/tint."""
        return cv2.multiply(pano, np.full(pano.shape, 1.0, np.float32) * np.asarray(self.sky, np.float32),
                            dtype=cv2.CV_8U)

    def scenery(self, scenery):
        """A copy of the roadside objects: a random ``clutter_keep`` share of them, recoloured."""
        rng = np.random.default_rng(self.clutter_seed)
        gain = np.asarray(self.objects, np.float32)
        keep_b = rng.random(len(scenery.box_kind)) < self.clutter_keep
        keep_s = rng.random(len(scenery.sphere_radius)) < self.clutter_keep
        keep_c = rng.random(len(scenery.cone_radius)) < self.clutter_keep
        return type(scenery)(
            box_corners=scenery.box_corners[keep_b], box_normals=scenery.box_normals[keep_b],
            box_colour=np.clip(scenery.box_colour[keep_b] * gain, 0, 255), box_kind=scenery.box_kind[keep_b],
            box_centre=scenery.box_centre[keep_b], sphere_centre=scenery.sphere_centre[keep_s],
            sphere_radius=scenery.sphere_radius[keep_s],
            sphere_colour=np.clip(scenery.sphere_colour[keep_s] * gain, 0, 255),
            cone_base=scenery.cone_base[keep_c], cone_radius=scenery.cone_radius[keep_c],
            cone_height=scenery.cone_height[keep_c], cone_colour=np.clip(scenery.cone_colour[keep_c] * gain, 0, 255),
            lamp_pos=scenery.lamp_pos)


@dataclass
class DomainRandomization:
    """What the renderer applies now: one appearance and one camera jitter (see :meth:`step`)."""
    config: RandomizationConfig = field(default_factory=RandomizationConfig)
    appearance: Appearance = field(default_factory=Appearance)
    camera: CameraJitter = field(default_factory=CameraJitter)
    frames: int = 0

    def step(self, rng: np.random.Generator, advance: bool = True) -> "DomainRandomization":
        """Draw this frame's camera jitter; a new appearance on the first frame and every period after.

        ``advance=False`` draws only the camera jitter and leaves the appearance clock where it is: the
        collector passes it for ticks after which nothing was saved, so the period counts saved frames.
        """
        if advance or self.appearance.draw == 0:
            if self.frames % self.config.appearance_period == 0:
                self.appearance = Appearance.sample(rng, self.config, self.appearance.draw + 1)
            self.frames += 1
        self.camera = CameraJitter.sample(rng, self.config)
        return self

    def record(self) -> dict:
        """Flat plain-number dict of everything applied (``dr_*`` keys) plus ``camera_variant``."""
        out = {"dr": 1}
        for prefix, part in (("dr_cam_", self.camera), ("dr_", self.appearance)):
            for k, v in asdict(part).items():
                if isinstance(v, (tuple, list)):
                    out.update({f"{prefix}{k}_{c}": round(float(x), 4) for c, x in zip("bgr", v)})
                else:
                    out[f"{prefix}{k}"] = None if v is None else (round(float(v), 4) if isinstance(v, float) else v)
        out["camera_variant"] = self.camera.variant()
        return out

