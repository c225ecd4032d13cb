"""Tick-time benchmark of the embedded simulator: a car driving its lane, with and without a camera,
and the same camera in traffic.

Usage::

    python -m carla_embedded.bench                                  # 800x600, Town02, one core, + traffic case
    python -m carla_embedded.bench --res 800x600,1280x720,320x240 --ticks 300 --town Town03
    python -m carla_embedded.bench --traffic 30,10 --traffic-town Town03   # (default) or --traffic 0,0 to skip

Prints one row per case: median and p99 of ``world.tick()`` wall time in ms. The traffic case
(``--traffic N,M``: N autopilot cars, M walkers, the town's traffic lights, one camera at the
first ``--res``) runs in blocks interleaved with the same camera in the same town without
traffic, so both figures see the same machine load. ``--cores 1`` (the default) pins the process
to one CPU and OpenCV to one thread.
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
    traffic: tuple[int, int] = (30, 10)
    traffic_town: str = "Town03"
    block: int = 20

    def __post_init__(self):
        if self.ticks < 1 or self.warmup < 0:
            raise ValueError(f"ticks={self.ticks} must be >= 1 and warmup={self.warmup} >= 0")
        if self.cores < 0:
            raise ValueError(f"cores={self.cores} must be >= 0 (0 = all)")
        if len(self.traffic) != 2 or min(self.traffic) < 0:
            raise ValueError(f"traffic={self.traffic} must be two counts >= 0 (vehicles, walkers)")


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


def _traffic_world(config: BenchConfig, vehicles: int, walkers: int):
    """(world, ego, camera, frames) in ``config.traffic_town`` with NPCs spawned as generate_traffic does."""
    client = Client(seed=config.seed)
    world = client.load_world(config.traffic_town)
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    library = world.get_blueprint_library()
    points = world.get_map().get_spawn_points()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), points[0])
    rng = np.random.default_rng(config.seed)
    if vehicles:
        tm = client.get_trafficmanager(8000)
        tm.set_random_device_seed(config.seed)
        cars = [bp for bp in library.filter("vehicle.*") if bp.get_attribute("base_type").as_str() == "car"]
        free = [points[i] for i in rng.permutation(len(points)) if points[i].location.distance(points[0].location) > 15]
        batch = [carla.command.SpawnActor(cars[int(rng.integers(len(cars)))], t).then(
            carla.command.SetAutopilot(carla.command.FutureActor, True, 8000)) for t in free[:vehicles]]
        client.apply_batch_sync(batch, True)
    if walkers:
        people = library.filter("walker.pedestrian.*")
        spawned = client.apply_batch_sync([carla.command.SpawnActor(
            people[int(rng.integers(len(people)))], carla.Transform(world.get_random_location_from_navigation()))
            for _ in range(walkers)], True)
        controllers = client.apply_batch_sync([carla.command.SpawnActor(
            library.find("controller.ai.walker"), carla.Transform(), r.actor_id) for r in spawned if not r.error], True)
        for r in controllers:
            controller = world.get_actor(r.actor_id)
            controller.start()
            controller.go_to_location(world.get_random_location_from_navigation())
    width, height = config.resolutions[0]
    bp = library.find("sensor.camera.rgb")
    bp.set_attribute("image_size_x", str(width))
    bp.set_attribute("image_size_y", str(height))
    bp.set_attribute("fov", str(config.fov))
    camera = world.spawn_actor(bp, CAMERA_MOUNT, attach_to=ego)
    frames = []
    camera.listen(lambda image: frames.append(image.frame))
    return world, ego, camera, frames


def run_traffic_bench(config: BenchConfig) -> list[BenchResult]:
    """The camera case without and with traffic in ``traffic_town``, interleaved in blocks."""
    vehicles, walkers = config.traffic
    width, height = config.resolutions[0]
    cases = {"no traffic": _traffic_world(config, 0, 0), "traffic": _traffic_world(config, vehicles, walkers)}
    for world, ego, _, _ in cases.values():
        _timed_ticks(world, ego, 0, config.warmup)
    times = {name: [] for name in cases}
    while min(len(t) for t in times.values()) < config.ticks:
        for name, (world, ego, _, _) in cases.items():
            times[name].extend(_timed_ticks(world, ego, config.block, 0))
    label = f"{width}x{height}"
    results = []
    for name, (world, ego, camera, frames) in cases.items():
        t = np.array(times[name][:config.ticks])
        camera.stop()
        if not frames:
            raise RuntimeError(f"camera delivered no images in the {name} case")
        detail = f" {vehicles}v+{walkers}w" if name == "traffic" else ""
        results.append(BenchResult(f"{config.traffic_town} {label} {name}{detail}", config.ticks,
                                   float(np.median(t)), float(np.percentile(t, 99))))
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
    parser.add_argument("--traffic", default="30,10",
                        help="traffic case: N vehicles,M walkers with lights and the first --res camera; "
                             "0,0 skips it (default: 30,10)")
    parser.add_argument("--traffic-town", default="Town03", help="town of the traffic case (default: Town03)")
    return parser


def _parse_traffic(text: str) -> tuple[int, int]:
    try:
        vehicles, walkers = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--traffic {text!r} is not N,M (vehicles,walkers), e.g. 30,10") from None
    return vehicles, walkers


def main(argv=None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = BenchConfig(resolutions=tuple(parse_resolution(r) for r in args.res.split(",") if r.strip()),
                             ticks=args.ticks, warmup=args.warmup, town=args.town, fov=args.fov,
                             seed=args.seed, cores=args.cores, traffic=_parse_traffic(args.traffic),
                             traffic_town=args.traffic_town)
        from .towns import canonical_town
        canonical_town(config.town)
        canonical_town(config.traffic_town)
    except ValueError as exc:
        parser.error(str(exc))
    _pin_cores(config.cores)
    try:
        results = run_bench(config)
        if sum(config.traffic):
            results += run_traffic_bench(config)
    except TownNotFoundError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"carla_embedded tick time, {config.town}, {config.ticks} ticks, "
          f"{config.cores or os.cpu_count()} core(s)")
    width = max(12, max(len(r.case) for r in results))
    print(f"{'case':>{width}} {'median ms':>10} {'p99 ms':>8}")
    for r in results:
        print(f"{r.case:>{width}} {r.median_ms:>10.2f} {r.p99_ms:>8.2f}")


if __name__ == "__main__":
    main()
