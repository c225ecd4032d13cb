"""Tick-time benchmark of the embedded sensors: RGB alone vs RGB + semantic (+ depth, + everything).

Usage::

    python -m carla_embedded.bench_sensors                          # Town03, 800x600, one core
    python -m carla_embedded.bench_sensors --parked 30 --rounds 8   # with 30 parked cars in the town

All cases run in one world and are interleaved (blocks of ``--block`` ticks per case, ``--rounds``
times), so a busy shared machine slows them alike; a case switches sensors on and off with
``listen``/``stop`` (a stopped sensor costs nothing). Prints median and p99 of ``world.tick()`` per
case, its ratio to the RGB-only median and the median process CPU time per tick (``cpu ms``, which a
busy shared machine inflates much less than the wall time).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

import carla

from .bench import CAMERA_MOUNT, _follow_lane, _pin_cores, parse_resolution, sync_world
from .errors import TownNotFoundError

logger = logging.getLogger(__name__)

#: case name -> sensors listening in it
CASES = {
    "no camera": (),
    "rgb": ("rgb",),
    "rgb+semantic": ("rgb", "semantic"),
    "rgb+semantic+depth": ("rgb", "semantic", "depth"),
    "all sensors": ("rgb", "semantic", "depth", "collision", "obstacle", "gnss", "imu", "lidar", "radar"),
}
_BLUEPRINTS = {"rgb": "sensor.camera.rgb", "semantic": "sensor.camera.semantic_segmentation",
               "depth": "sensor.camera.depth", "collision": "sensor.other.collision",
               "obstacle": "sensor.other.obstacle", "gnss": "sensor.other.gnss", "imu": "sensor.other.imu",
               "lidar": "sensor.lidar.ray_cast", "radar": "sensor.other.radar"}


@dataclass(frozen=True)
class SensorBenchConfig:
    town: str = "Town03"
    resolution: tuple[int, int] = (800, 600)
    block: int = 20
    rounds: int = 5
    parked: int = 0
    seed: int = 0
    cores: int = 1

    def __post_init__(self):
        if self.block < 1 or self.rounds < 1 or self.parked < 0:
            raise ValueError(f"block={self.block} and rounds={self.rounds} must be >= 1, parked={self.parked} >= 0")


def run_sensor_bench(config: SensorBenchConfig, cpu: dict | None = None) -> dict[str, np.ndarray]:
    """Tick times (ms) per case, interleaved by blocks; the process CPU ms per tick go to ``cpu[case]`` if given."""
    client, world = sync_world(config.town, config.seed)
    library = world.get_blueprint_library()
    spawns = world.get_map().get_spawn_points()
    start = spawns[0]
    vehicle = world.spawn_actor(library.filter("vehicle.*")[0], start)
    by_distance = sorted(spawns[1:], key=lambda t: t.location.distance(start.location))
    parked = [a for a in (world.try_spawn_actor(library.find("vehicle.audi.a2"), t)
                          for t in by_distance[:config.parked]) if a is not None]
    sensors = {}
    for name, bp_id in _BLUEPRINTS.items():
        bp = library.find(bp_id)
        if name in ("rgb", "semantic", "depth"):
            bp.set_attribute("image_size_x", str(config.resolution[0]))
            bp.set_attribute("image_size_y", str(config.resolution[1]))
        sensors[name] = world.spawn_actor(bp, CAMERA_MOUNT, attach_to=vehicle)
    carla_map = world.get_map()
    times: dict[str, list] = {case: [] for case in CASES}
    try:
        for _ in range(config.rounds):
            for case, active in CASES.items():
                for name, sensor in sensors.items():
                    if name in active:
                        sensor.listen(lambda data: None)
                    else:
                        sensor.stop()
                for i in range(config.block + 2):          # 2 untimed ticks: caches of the previous case
                    vehicle.apply_control(_follow_lane(vehicle, carla_map))
                    t0, c0 = time.perf_counter(), time.process_time()
                    world.tick()
                    if i >= 2:
                        times[case].append((time.perf_counter() - t0) * 1e3)
                        if cpu is not None:
                            cpu.setdefault(case, []).append((time.process_time() - c0) * 1e3)
    finally:
        for actor in list(sensors.values()) + parked + [vehicle]:
            actor.destroy()
    return {case: np.array(v) for case, v in times.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Tick time of the embedded sensors, cases interleaved")
    parser.add_argument("--town", default="Town03", help="town (default: Town03)")
    parser.add_argument("--res", default="800x600", help="camera resolution WxH (default: 800x600)")
    parser.add_argument("--block", type=int, default=20, help="ticks per case per round (default: 20)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all cases (default: 5)")
    parser.add_argument("--parked", type=int, default=0, help="parked cars near the route (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="scenery seed (default: 0)")
    parser.add_argument("--cores", type=int, default=1, help="CPU cores to run on, 0 = all (default: 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = SensorBenchConfig(town=args.town, resolution=parse_resolution(args.res), block=args.block,
                                   rounds=args.rounds, parked=args.parked, seed=args.seed, cores=args.cores)
        from .towns import canonical_town
        canonical_town(config.town)
    except ValueError as exc:
        parser.error(str(exc))
    _pin_cores(config.cores)
    try:
        cpu: dict = {}
        results = run_sensor_bench(config, cpu)
    except TownNotFoundError as exc:
        parser.exit(2, f"error: {exc}\n")
    rgb = float(np.median(results["rgb"]))
    w, h = config.resolution
    print(f"carla_embedded sensor tick time, {config.town}, {w}x{h}, {config.parked} parked cars, "
          f"{config.rounds}x{config.block} ticks per case (interleaved), {config.cores or os.cpu_count()} core(s)")
    print(f"{'case':>20} {'median ms':>10} {'p99 ms':>8} {'x rgb':>6} {'cpu ms':>8}")
    for case, t in results.items():
        med = float(np.median(t))
        print(f"{case:>20} {med:>10.2f} {float(np.percentile(t, 99)):>8.2f} {med / rgb:>6.2f} "
              f"{float(np.median(cpu[case])):>8.2f}")


if __name__ == "__main__":
    main()
