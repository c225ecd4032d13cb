"""Tick-time benchmark of the embedded simulator: a car driving its lane, with and without a camera.

Usage::

    python -m carla_embedded.bench                                  # 800x600, Town02, one core
    python -m carla_embedded.bench --res 800x600,1280x720,320x240 --ticks 300 --town Town03

Prints one row per case: median and p99 of ``world.tick()`` wall time in ms. ``--cores 1`` (the
default) pins the process to one CPU and OpenCV to one thread, the budget of the 5 ms target.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np

import carla

from .client import Client
from .errors import TownNotFoundError

logger = logging.getLogger(__name__)

CAMERA_MOUNT = carla.Transform(carla.Location(x=1.5, z=2.0))


def parse_resolution(text: str) -> tuple[int, int]:
    """'800x600' -> (800, 600); ValueError naming the bad value otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution {text!r} is not WxH, e.g. 800x600") from None
    if not (1 <= w <= 8192 and 1 <= h <= 8192):
        raise ValueError(f"resolution {text!r} must be within 1..8192 pixels per side")
    return w, h


@dataclass(frozen=True)
class BenchConfig:
    resolutions: tuple[tuple[int, int], ...] = ((800, 600),)
    ticks: int = 200
    warmup: int = 10
    town: str = "Town02"
    fov: float = 90.0
    seed: int = 0
    cores: int = 1

    def __post_init__(self):
        if self.ticks < 1 or self.warmup < 0:
            raise ValueError(f"ticks={self.ticks} must be >= 1 and warmup={self.warmup} >= 0")
        if self.cores < 0:
            raise ValueError(f"cores={self.cores} must be >= 0 (0 = all)")


@dataclass(frozen=True)
class BenchResult:
    case: str            # "no camera" or "800x600"
    ticks: int
    median_ms: float
    p99_ms: float


def _follow_lane(vehicle, carla_map) -> carla.VehicleControl:
    """Pure pursuit on the lane centre 8 m ahead at ~30 km/h, so the camera sees a real drive."""
    t = vehicle.get_transform()
    wp = carla_map.get_waypoint(t.location)
    ahead = wp.next(8.0)
    target = ahead[0].transform.location if ahead else wp.transform.location
    yaw = math.radians(t.rotation.yaw)
    dx, dy = target.x - t.location.x, target.y - t.location.y
    lateral = -math.sin(yaw) * dx + math.cos(yaw) * dy
    distance2 = max(dx * dx + dy * dy, 1e-6)
    wheels = vehicle.get_physics_control().wheels
    wheelbase = math.dist((wheels[0].position.x, wheels[0].position.y), (wheels[2].position.x, wheels[2].position.y)) / 100.0
    steer = math.atan(2 * wheelbase * lateral / distance2) / math.radians(wheels[0].max_steer_angle)
    v = vehicle.get_velocity()
    speed = math.hypot(v.x, v.y)
    return carla.VehicleControl(throttle=0.5 if speed < 8.3 else 0.0, steer=max(-1.0, min(1.0, steer)))


def _timed_ticks(world, vehicle, n: int, warmup: int) -> np.ndarray:
    carla_map = world.get_map()
    times = np.empty(n)
    for i in range(warmup + n):
        vehicle.apply_control(_follow_lane(vehicle, carla_map))
        start = time.perf_counter()
        world.tick()
        if i >= warmup:
            times[i - warmup] = time.perf_counter() - start
    return times * 1e3


def run_bench(config: BenchConfig) -> list[BenchResult]:
    """Median/p99 tick time without a camera, then with one camera per resolution."""
    client = Client(seed=config.seed)
    world = client.load_world(config.town)
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    library = world.get_blueprint_library()
    spawn = world.get_map().get_spawn_points()[0]
    vehicle = world.spawn_actor(library.filter("vehicle.*")[0], spawn)
    results = []
    try:
        times = _timed_ticks(world, vehicle, config.ticks, config.warmup)
        results.append(BenchResult("no camera", config.ticks, float(np.median(times)),
                                   float(np.percentile(times, 99))))
        for width, height in config.resolutions:
            vehicle.set_transform(spawn)
            bp = library.find("sensor.camera.rgb")
            bp.set_attribute("image_size_x", str(width))
            bp.set_attribute("image_size_y", str(height))
            bp.set_attribute("fov", str(config.fov))
            camera = world.spawn_actor(bp, CAMERA_MOUNT, attach_to=vehicle)
            frames = []
            camera.listen(lambda image: frames.append(image.frame))
            times = _timed_ticks(world, vehicle, config.ticks, config.warmup)
            camera.destroy()
            if len(frames) != config.ticks + config.warmup:
                raise RuntimeError(f"camera delivered {len(frames)} images for {config.ticks + config.warmup} ticks")
            results.append(BenchResult(f"{width}x{height}", config.ticks, float(np.median(times)),
                                       float(np.percentile(times, 99))))
    finally:
        vehicle.destroy()
    return results


def _pin_cores(cores: int) -> None:
    if cores <= 0:
        return
    import cv2

    cv2.setNumThreads(cores)
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(allowed[:cores]))


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Tick-time benchmark of the embedded CARLA simulator",
                                     add_help=add_help)
    parser.add_argument("--res", default="800x600",
                        help="comma-separated camera resolutions WxH (default: 800x600)")
    parser.add_argument("--ticks", type=int, default=200, help="timed ticks per case (default: 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed ticks before each case (default: 10)")
    parser.add_argument("--town", default="Town02", help="town to drive in (default: Town02)")
    parser.add_argument("--fov", type=float, default=90.0, help="camera field of view, deg (default: 90)")
    parser.add_argument("--seed", type=int, default=0, help="scenery seed (default: 0)")
    parser.add_argument("--cores", type=int, default=1, help="CPU cores to run on, 0 = all (default: 1)")
    return parser


def main(argv=None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = BenchConfig(resolutions=tuple(parse_resolution(r) for r in args.res.split(",") if r.strip()),
                             ticks=args.ticks, warmup=args.warmup, town=args.town, fov=args.fov,
                             seed=args.seed, cores=args.cores)
        from .towns import canonical_town
        canonical_town(config.town)
    except ValueError as exc:
        parser.error(str(exc))
    _pin_cores(config.cores)
    try:
        results = run_bench(config)
    except TownNotFoundError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"carla_embedded tick time, {config.town}, {config.ticks} ticks, "
          f"{config.cores or os.cpu_count()} core(s)")
    print(f"{'case':>12} {'median ms':>10} {'p99 ms':>8}")
    for r in results:
        print(f"{r.case:>12} {r.median_ms:>10.2f} {r.p99_ms:>8.2f}")


if __name__ == "__main__":
    main()
