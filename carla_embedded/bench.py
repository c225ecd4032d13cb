"""Tick-time benchmark of the embedded simulator: a car driving its lane, with and without a camera.

Usage::

    python -m carla_embedded.bench                                  # 800x600, Town02: default vs pinned
    python -m carla_embedded.bench --res 800x600,1280x720,320x240 --ticks 300 --town Town03
    python -m carla_embedded.bench --cores 0                        # only what a plain user process gets
    python -m carla_embedded.bench --threads 1,4                    # the default beside other OpenCV thread counts

Prints the CPU model, then one row per case and configuration: median and p99 of ``world.tick()``
wall time in ms, and the median process CPU time per tick (``cpu ms``: on a shared, busy machine the
wall time grows with the competition for the core, the CPU time much less). ``default`` is what a user's script gets: the process unpinned, OpenCV threads
as the simulator sets them (:mod:`carla_embedded.threads`). ``pinned`` (``--cores N``, default 1)
pins the process to N CPUs and OpenCV to N threads. ``threads N`` (``--threads N,...``) leaves the
process unpinned with N OpenCV threads: whether the simulator's own choice suits this machine. All are
timed in alternating blocks in one run, so a busy machine hits them alike, and the default's ratio to
each of the others is printed.

The traffic case (``--traffic``, default 30 vehicles + 10 walkers in Town03, with its traffic lights)
is issue 12's rig: one RGB and one semantic camera at the same hood mount, at the first ``--res``. It is
timed beside the same rig in the same town without traffic, both configurations, in alternating blocks;
the last line compares its one-core median with the target (8 ms).
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
    cores: int = 1          # the pinned configuration's CPUs; 0 = time only the default one
    blocks: int = 4         # alternating blocks of ticks per configuration
    traffic: tuple[int, int] = (30, 10)   # traffic case: vehicles, walkers (0, 0 skips it)
    traffic_town: str = "Town03"
    block: int = 20         # ticks per block of the traffic case's interleaving
    threads: tuple[int, ...] = ()   # OpenCV thread counts timed unpinned beside the default

    def __post_init__(self):
        if self.ticks < 1 or self.warmup < 0:
            raise ValueError(f"ticks={self.ticks} must be >= 1 and warmup={self.warmup} >= 0")
        if self.cores < 0:
            raise ValueError(f"cores={self.cores} must be >= 0 (0 = only the default, unpinned configuration)")
        if self.blocks < 1:
            raise ValueError(f"blocks={self.blocks} must be >= 1")
        if any(n < 1 for n in self.threads) or len(set(self.threads)) != len(self.threads):
            raise ValueError(f"threads={self.threads} must be distinct counts >= 1")
        if len(self.traffic) != 2 or min(self.traffic) < 0:
            raise ValueError(f"traffic={self.traffic} must be two counts >= 0 (vehicles, walkers)")


@dataclass(frozen=True)
class BenchResult:
    case: str            # "no camera" or "800x600"
    ticks: int
    median_ms: float
    p99_ms: float
    config: str = "default"   # "default" (unpinned, the simulator's thread settings) or "pinned N"
    cpu_median_ms: float = math.nan   # median process CPU time per tick


class _Configs:
    """The configurations timed: ``default`` as the process started, ``threads N`` (unpinned, N OpenCV threads),
    ``pinned N`` (N CPUs, N OpenCV threads)."""

    def __init__(self, cores: int, threads: tuple[int, ...] = ()):
        import cv2

        self._cv2 = cv2
        self._all = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self._cv2_default = None
        self._threads = {f"threads {n}": n for n in threads}
        self.names = ["default"] + list(self._threads) + ([f"pinned {cores}"] if cores and self._all else [])
        self._cores = cores

    def apply(self, name: str) -> None:
        if self._cv2_default is None:          # read once the renderer has set its own count
            self._cv2_default = self._cv2.getNumThreads()
        if name == "default" or name in self._threads:
            if self._all:
                os.sched_setaffinity(0, set(self._all))
            self._cv2.setNumThreads(self._threads.get(name, self._cv2_default))
        else:
            os.sched_setaffinity(0, set(self._all[:self._cores]))
            self._cv2.setNumThreads(self._cores)

    def describe(self, name: str) -> str:
        if name == "default" or name in self._threads:
            n = self._threads.get(name, self._cv2_default)
            return f"{name}: unpinned ({len(self._all) or os.cpu_count()} CPUs), {n} OpenCV thread(s)"
        return f"{name}: pinned to CPU(s) {self._all[:self._cores]}, {self._cores} OpenCV thread(s)"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else the platform's word for it)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync_world(town: str, seed: int = 0, delta_seconds: float = 0.05):
    """(client, world) of ``town`` in synchronous mode at a fixed step: what every bench case ticks."""
    client = Client(seed=seed)
    world = client.load_world(town)
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, delta_seconds
    world.apply_settings(settings)
    return client, world


def _listening_camera(world, vehicle, width: int, height: int, fov: float, blueprint: str = "sensor.camera.rgb"):
    """(camera, frame ids it delivered): a camera (RGB by default) at CARLA's hood mount, listening."""
    bp = world.get_blueprint_library().find(blueprint)
    bp.set_attribute("image_size_x", str(width))
    bp.set_attribute("image_size_y", str(height))
    bp.set_attribute("fov", str(fov))
    camera = world.spawn_actor(bp, CAMERA_MOUNT, attach_to=vehicle)
    frames = []
    camera.listen(lambda image: frames.append(image.frame))
    return camera, frames


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


def _timed_ticks(world, vehicle, n: int, warmup: int, cpu: list | None = None) -> np.ndarray:
    """Wall ms of ``n`` ticks after ``warmup``; their process CPU ms are appended to ``cpu`` if given."""
    carla_map = world.get_map()
    times = np.empty(n)
    for i in range(warmup + n):
        vehicle.apply_control(_follow_lane(vehicle, carla_map))
        start, cpu_start = time.perf_counter(), time.process_time()
        world.tick()
        if i >= warmup:
            times[i - warmup] = time.perf_counter() - start
            if cpu is not None:
                cpu.append((time.process_time() - cpu_start) * 1e3)
    return times * 1e3


def _interleaved(world, vehicle, config: BenchConfig, configs: _Configs, case: str) -> list[BenchResult]:
    """Time ``config.ticks`` ticks per configuration, in ``config.blocks`` alternating blocks each."""
    per_block = max(1, config.ticks // config.blocks)
    times = {name: [] for name in configs.names}
    cpu = {name: [] for name in configs.names}
    for block in range(config.blocks):
        order = configs.names if block % 2 == 0 else configs.names[::-1]
        for name in order:
            configs.apply(name)
            times[name].append(_timed_ticks(world, vehicle, per_block, config.warmup if block == 0 else 2, cpu[name]))
    configs.apply("default")
    out = []
    for name in configs.names:
        t = np.concatenate(times[name])
        out.append(BenchResult(case, len(t), float(np.median(t)), float(np.percentile(t, 99)), name,
                               float(np.median(cpu[name]))))
    return out


def run_bench(config: BenchConfig, configs: _Configs | None = None) -> list[BenchResult]:
    """Median/p99 tick time without a camera, then with one camera per resolution, per configuration."""
    configs = configs or _Configs(config.cores, config.threads)
    client, world = sync_world(config.town, config.seed)
    library = world.get_blueprint_library()
    spawn = world.get_map().get_spawn_points()[0]
    vehicle = world.spawn_actor(library.filter("vehicle.*")[0], spawn)
    results = []
    try:
        cpu: list = []
        times = _timed_ticks(world, vehicle, config.ticks, config.warmup, cpu)
        results.append(BenchResult("no camera", config.ticks, float(np.median(times)),
                                   float(np.percentile(times, 99)), cpu_median_ms=float(np.median(cpu))))
        for width, height in config.resolutions:
            vehicle.set_transform(spawn)
            camera, frames = _listening_camera(world, vehicle, width, height, config.fov)
            first = world.tick()              # the first camera tick starts the renderer (and its threads)
            results.extend(_interleaved(world, vehicle, config, configs, f"{width}x{height}"))
            expected = world.get_snapshot().frame - first + 1
            camera.destroy()
            if len(frames) != expected:
                raise RuntimeError(f"camera delivered {len(frames)} images for {expected} ticks")
    finally:
        vehicle.destroy()
    return results


TRAFFIC_CAMERAS = ("rgb", "semantic")       # the rig: one RGB and one semantic camera, same mount
TARGET_MS = 8.0                             # issue 12: traffic tick median on one core


def _traffic_world(config: BenchConfig, vehicles: int, walkers: int):
    """(world, ego, [(camera, frames)] per ``TRAFFIC_CAMERAS``) in ``config.traffic_town`` with NPCs
    spawned as generate_traffic does."""
    client, world = sync_world(config.traffic_town, config.seed)
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
    blueprints = {"rgb": "sensor.camera.rgb", "semantic": "sensor.camera.semantic_segmentation"}
    cameras = [_listening_camera(world, ego, width, height, config.fov, blueprints[name]) for name in TRAFFIC_CAMERAS]
    return world, ego, cameras


def run_traffic_bench(config: BenchConfig, configs: _Configs | None = None) -> list[BenchResult]:
    """The issue's camera rig (``TRAFFIC_CAMERAS``) without and with traffic in ``traffic_town``: blocks of
    ``config.block`` ticks alternate over both worlds and every configuration, so load hits all alike."""
    configs = configs or _Configs(config.cores, config.threads)
    vehicles, walkers = config.traffic
    width, height = config.resolutions[0]
    cases = {"no traffic": _traffic_world(config, 0, 0), "traffic": _traffic_world(config, vehicles, walkers)}
    for world, ego, _ in cases.values():
        _timed_ticks(world, ego, 0, config.warmup)
    times = {(case, name): [] for case in cases for name in configs.names}
    cpu = {key: [] for key in times}
    rounds = 0
    while min(len(t) for t in times.values()) < config.ticks:
        for name in (configs.names if rounds % 2 == 0 else configs.names[::-1]):
            configs.apply(name)
            for case, (world, ego, _) in cases.items():
                times[(case, name)].extend(_timed_ticks(world, ego, config.block, 0, cpu[(case, name)]))
        rounds += 1
    configs.apply("default")
    label = f"{width}x{height} {'+'.join(TRAFFIC_CAMERAS)}"
    results = []
    for case, (world, ego, cameras) in cases.items():
        for camera, frames in cameras:
            camera.stop()
            if not frames:
                raise RuntimeError(f"{camera.type_id} delivered no images in the {case} case")
        detail = f" {vehicles}v+{walkers}w" if case == "traffic" else ""
        for name in configs.names:
            t = np.array(times[(case, name)][:config.ticks])
            results.append(BenchResult(f"{config.traffic_town} {label} {case}{detail}", config.ticks,
                                       float(np.median(t)), float(np.percentile(t, 99)), name,
                                       float(np.median(cpu[(case, name)][:config.ticks]))))
    return results


def _pin_cores(cores: int) -> None:
    """Pin this process to ``cores`` CPUs and OpenCV to as many threads (0: leave both alone)."""
    if cores <= 0:
        return
    import cv2

    cv2.setNumThreads(cores)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))


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
    parser.add_argument("--cores", type=int, default=1,
                        help="CPUs of the pinned configuration timed beside the default unpinned one; "
                             "0 = time only the default (default: 1)")
    parser.add_argument("--threads", default="",
                        help="comma-separated OpenCV thread counts timed unpinned beside the default, e.g. 1,4 "
                             "(default: none)")
    parser.add_argument("--blocks", type=int, default=4,
                        help="alternating blocks per configuration (default: 4)")
    parser.add_argument("--traffic", default="30,10",
                        help="traffic case: N vehicles,M walkers with lights and an RGB + semantic camera at the "
                             "first --res, interleaved with the same cameras without traffic, in every configuration; "
                             "0,0 skips it (default: 30,10)")
    parser.add_argument("--traffic-town", default="Town03", help="town of the traffic case (default: Town03)")
    return parser


def _parse_threads(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--threads {text!r} is not a comma-separated list of counts, e.g. 1,4") from None


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
                             seed=args.seed, cores=args.cores, blocks=args.blocks,
                             traffic=_parse_traffic(args.traffic), traffic_town=args.traffic_town,
                             threads=_parse_threads(args.threads))
        from .towns import canonical_town
        canonical_town(config.town)
        canonical_town(config.traffic_town)
    except ValueError as exc:
        parser.error(str(exc))
    configs = _Configs(config.cores, config.threads)
    try:
        results = run_bench(config, configs)
        if sum(config.traffic):
            configs.apply("default")
            results += run_traffic_bench(config, configs)
    except TownNotFoundError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"carla_embedded tick time, {config.town}, {config.ticks} ticks per case and configuration, "
          f"CPU: {cpu_model()}")
    for name in configs.names:
        print(f"  {configs.describe(name)}")
    width = max(12, max(len(r.case) for r in results))
    print(f"{'case':>{width}} {'config':>10} {'median ms':>10} {'p99 ms':>8} {'cpu ms':>8}")
    for r in results:
        print(f"{r.case:>{width}} {r.config:>10} {r.median_ms:>10.2f} {r.p99_ms:>8.2f} {r.cpu_median_ms:>8.2f}")
    for case in dict.fromkeys(r.case for r in results if r.case != "no camera"):
        rows = {r.config: r for r in results if r.case == case}
        for name in configs.names[1:]:
            if name in rows:
                target = " (target <= 1.2x)" if name.startswith("pinned") else ""
                print(f"{case}: default / {name} median = {rows['default'].median_ms / rows[name].median_ms:.2f}x"
                      f"{target}")

    traffic = {r.config: r for r in results if r.case.endswith(f"{config.traffic[0]}v+{config.traffic[1]}w")}
    if traffic:
        one_core = traffic.get("pinned 1") or traffic["default"]
        calm = next(r for r in results if r.case.endswith(" no traffic") and r.config == one_core.config)
        verdict = "met" if one_core.median_ms <= TARGET_MS else "NOT met"
        print(f"target (issue 12): {config.traffic_town}, {config.traffic[0]} vehicles + {config.traffic[1]} walkers, "
              f"lights, {' + '.join(TRAFFIC_CAMERAS)} camera: tick median <= {TARGET_MS:g} ms on one core; "
              f"{one_core.config}: {one_core.median_ms:.2f} ms ({verdict}; CPU {one_core.cpu_median_ms:.2f} ms), "
              f"no traffic {calm.median_ms:.2f} ms")

if __name__ == "__main__":
    main()
