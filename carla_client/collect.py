"""Collect a balanced curve/straight image dataset, labelled from the map along the route driven.

Example::

    python -m carla_client.collect --sim embedded --town Town02 --frames 2000 --out data/curvature --seed 1
    python -m carla_client.collect --town Town01,Town02 --weather all --workers 2 --recovery 0.2

A car follows random routes through the town's junction graph (``carla_client.planner``)
with our route follower (``carla_client.follower``) at town speeds, in synchronous mode. Each
frame is labelled from the planned route ahead (``carla_client.labels``); ambiguous frames and
frames of a class that is already full are not saved, and two saved frames are at least
``--min-spacing`` metres of driving apart.

``--junction-policy skip`` (default) also drops route-dependent frames: approaching a
junction with several ways on, the label depends on which one the planner picked, which the
camera cannot see (the same crossing image would be ``curve`` on one route and ``straight`` on
another), so such frames are label noise (see ``carla_client.labels.route_dependent``).
``keep`` saves them, as before the policy existed. The summary counts what was skipped
(counted at the ``--min-spacing`` rate, like saved frames). Running again with the same ``--out`` resumes
(reconciling images and rows first); ``--frames`` is the total target of the dataset.

Speed: the camera is only listened to on ticks whose frame will be saved (the embedded
simulator renders, and a CARLA server streams, only for listened cameras); every other
tick costs the physics step, the controller and one projection on the route. The work
function (:func:`collect`) returns per-section timings; ``--profile`` prints them, and
``python -m carla_client.bench_collect`` runs the reference benchmark.

Exit codes: 0 done, 1 stopped early (disk full, error), 2 bad input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

import carla
from .follower import TOWN, FollowerParams, RouteFollower
from datasets.schema import CLASSES, INFO_NAME, JUNCTION_POLICIES

from .cli import add_carla_args, parse_weather, weather_presets
from .connection import SIMS, connect, sim_kind
from datasets.manifest import DatasetWriter, DiskFullError, check_writable, merge_info, previous_runs, read_manifest, \
    write_contact_sheet
from .labels import JunctionChoices, LabelParams, label_at, route_dependent
from .planner import GlobalRoutePlanner
from .route import RoutePath
from .sync import CarlaSyncMode

logger = logging.getLogger(__name__)

CAMERA_MOUNT = {"x": 1.5, "y": 0.0, "z": 2.0, "pitch": 0.0, "yaw": 0.0, "roll": 0.0}
"""Camera on the car, CARLA's hood position: what the label's lookahead defaults are derived for."""


def camera_mount_transform(mount: dict = CAMERA_MOUNT) -> carla.Transform:
    """The camera's transform relative to the car. The drive loop uses it too: the classifier must see
    the view it was trained on."""
    return carla.Transform(carla.Location(x=mount["x"], y=mount["y"], z=mount["z"]),
                           carla.Rotation(pitch=mount["pitch"], yaw=mount["yaw"], roll=mount["roll"]))

WARMUP_TICKS = 10          # let the car settle on the road before saving
STUCK_SECONDS = 4.0        # slower than 0.5 m/s this long ends the episode
OFF_ROUTE_M = 4.0          # farther than this from the route = left the road, ends the episode
PLANNER_RESOLUTION_M = 1.0


@dataclass(frozen=True)
class CollectConfig:
    """Everything a collection run depends on (saved in dataset.json).

    Args:
        out: dataset directory (shared by runs and towns).
        towns: towns to drive in; jobs are spread over them equally.
        frames: total target of the dataset (both classes get frames / 2).
        sim, host, ports, tm_port, timeout: simulator connection; worker k uses ports[k].
        res: camera (width, height); fov: horizontal field of view, deg.
        weather: presets cycled per episode.
        seed: base seed; routes also depend on the run index, so a resumed run drives new routes.
        min_spacing: metres driven between two saved frames.
        workers: processes collecting in parallel into ``out``.
        label: label parameters.
        junction_policy: ``skip`` drops route-dependent frames at junctions, ``keep`` saves them.
        image_format, jpeg_quality: how frames are stored.
        recovery: chance per second of a random steering perturbation (frames during it are not saved).
        episode_length: metres of route per episode (a new spawn point and weather after it).
        delta_seconds: fixed simulation step, s.
        vehicle: blueprint filter for the car.
        follower: route-follower parameters.
        camera_on_demand: listen to the camera only on ticks whose frame is saved.
        progress: show a tqdm bar.
    """

    out: Path = Path("data/curvature")
    towns: tuple[str, ...] = ("Town02",)
    frames: int = 36000
    sim: str = "auto"
    host: str = "127.0.0.1"
    ports: tuple[int, ...] = (2000,)
    tm_port: int = 8000
    timeout: float = 10.0
    res: tuple[int, int] = (800, 600)
    fov: float = 90.0
    weather: tuple[str, ...] = ("ClearNoon",)
    seed: int = 0
    min_spacing: float = 2.0
    workers: int = 1
    label: LabelParams = field(default_factory=LabelParams)
    image_format: str = "jpg"
    jpeg_quality: int = 95
    recovery: float = 0.0
    episode_length: float = 300.0
    delta_seconds: float = 0.05
    vehicle: str = "vehicle.*"
    follower: FollowerParams = TOWN
    camera_on_demand: bool = True
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "out", Path(self.out))
        if self.frames < 2 or self.frames % 2:
            raise ValueError(f"--frames must be an even number >= 2 (split equally between {' and '.join(CLASSES)}), "
                             f"got {self.frames}")
        if self.sim not in SIMS:
            raise ValueError(f"unknown sim {self.sim!r}; valid: {', '.join(SIMS)}")
        if not self.towns:
            raise ValueError("--town needs at least one town")
        parse_weather(",".join(self.weather))
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.sim == "carla" and len(self.ports) < self.workers:
            raise ValueError(f"--workers {self.workers} with --sim carla needs one server port per worker, "
                             f"got --port {','.join(map(str, self.ports))}")
        if self.min_spacing < 0:
            raise ValueError(f"--min-spacing must be >= 0 m, got {self.min_spacing}")
        if not 0 <= self.recovery <= 5:
            raise ValueError(f"--recovery must be in [0, 5] perturbations per second, got {self.recovery}")
        if not 0 < self.fov < 180:
            raise ValueError(f"--fov must be in (0, 180) deg, got {self.fov}")
        if self.episode_length <= self.label.lookahead_m:
            raise ValueError(f"--episode-length ({self.episode_length} m) must exceed the lookahead "
                             f"({self.label.lookahead_m} m)")
        if not 0 < self.delta_seconds <= 0.1:
            raise ValueError(f"--delta must be in (0, 0.1] s (CARLA's physics limit), got {self.delta_seconds}")

    @property
    def junction_policy(self) -> str:
        return self.label.junction_policy

    def label_json(self) -> dict:
        """``dataset.json``'s ``"label"``: thresholds plus the junction policy (both decide which frames exist)."""
        return self.label.to_json()

    def camera_json(self) -> dict:
        return {"width": self.res[0], "height": self.res[1], "fov": self.fov, "mount": CAMERA_MOUNT,
                "image_format": self.image_format}


@dataclass(frozen=True)
class Job:
    """One worker's share: a town and how many frames of each class to add."""

    index: int
    town: str
    quota: dict
    port: int
    run_index: int


@dataclass
class JobResult:
    saved: Counter = field(default_factory=Counter)
    by_weather: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # "ambiguous" / "route_dependent" frames not saved
    ticks: int = 0
    episodes: int = 0
    timings: dict = field(default_factory=dict)
    stopped: str | None = None  # None = quota reached; else why it stopped early
    sim: str = ""
    versions: dict = field(default_factory=dict)


@dataclass
class CollectResult:
    added: Counter
    totals: Counter
    by_town: Counter
    by_weather: Counter
    seconds: float
    ticks: int
    episodes: int
    timings: dict
    stopped: str | None
    contact_sheet: Path | None
    reconciled: object = None
    skipped: Counter = field(default_factory=Counter)
    junction_policy: str = "skip"

    @property
    def frames_per_second(self) -> float:
        return sum(self.added.values()) / self.seconds if self.seconds > 0 else 0.0


class SectionTimer:
    """Accumulates wall time per named section (``with timer("tick"): ...``)."""

    def __init__(self):
        self.totals: Counter = Counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - t0


# ---------------------------------------------------------------------------------- work
def collect(config: CollectConfig, client=None) -> CollectResult:
    """Collect into ``config.out`` until both classes reach ``config.frames / 2``.

    Args:
        config: the run.
        client: an already connected client to reuse (single worker only); else connects.

    Raises:
        ValueError: unknown town (lists the valid ones), incompatible existing dataset.
        PermissionError: ``out`` not writable.
        CarlaConnectionError: no server with ``sim="carla"``.
        KeyboardInterrupt: after a clean stop (settings restored, actors destroyed, data intact).
    """
    t_start = time.perf_counter()
    check_writable(config.out)
    if client is None:
        client = connect(config.sim, config.host, config.ports[0], config.timeout)
    towns = _validate_towns(client, config.towns)
    with _exclusive(config.out):
        writer = DatasetWriter(config.out, config.image_format, config.jpeg_quality)
        reconciled = writer.prepare()
        have = writer.counts()
        target = config.frames // 2
        need = {c: max(0, target - have.get(c, 0)) for c in CLASSES}
        run_index = previous_runs(config.out)
        jobs = _plan_jobs(config, towns, need, run_index)
        info = {"label": _label_json_for(config), "camera": config.camera_json(), "format_version": 1,
                "routes": "routes/<episode>.json: lane coordinates [road_id, section_id, lane_id, s] and "
                          "x, y, yaw of every route point an episode's labels were computed from"}
        run = {"run": run_index, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": _config_json(config),
               "sim": sim_kind(client), "client_version": client.get_client_version(),
               "server_version": client.get_server_version(), "need": need}
        merge_info(config.out, info, run)
        logger.info("collecting %s into %s (have %s, need %s)", ", ".join(towns), config.out, dict(have), need)
        results = _run_jobs(config, jobs, client, need) if any(need.values()) else []
    rows = read_manifest(config.out)
    added = sum((r.saved for r in results), Counter())
    timings = sum((Counter(r.timings) for r in results), Counter())
    stopped = next((r.stopped for r in results if r.stopped), None)
    sheet = write_contact_sheet(config.out, seed=config.seed) if rows else None
    return CollectResult(added=added, totals=Counter(r["label"] for r in rows),
                         by_town=Counter(r["town"] for r in rows), by_weather=Counter(r["weather"] for r in rows),
                         seconds=time.perf_counter() - t_start, ticks=sum(r.ticks for r in results),
                         episodes=sum(r.episodes for r in results), timings=dict(timings), stopped=stopped,
                         contact_sheet=sheet, reconciled=reconciled,
                         skipped=sum((r.skipped for r in results), Counter()), junction_policy=config.junction_policy)


@contextlib.contextmanager
def _exclusive(out: Path):
    """One collector per dataset directory at a time (its workers share the parent's claim)."""
    fd = os.open(Path(out) / ".collect.lock", os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another collector is writing to {out}; wait for it or use another --out") from None
        yield
    finally:
        os.close(fd)


def _label_json_for(config: CollectConfig) -> dict:
    """The label record, compatible with datasets written before the junction policy existed.

    Those were collected as ``keep``: resuming one with ``keep`` keeps its record as it is;
    with ``skip`` it would mix two kinds of frames, so that is refused with the way out.
    """
    label = config.label_json()
    path = Path(config.out) / INFO_NAME
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8")).get("label", {})
        if "junction_policy" not in old and LabelParams.from_json(old) == replace(config.label, junction_policy="keep"):
            if config.junction_policy != "keep":
                raise ValueError(f"{config.out} was collected before --junction-policy existed (i.e. keep); "
                                 f"resume it with --junction-policy keep or use another --out")
            return old
    return label


def _validate_towns(client, towns) -> list[str]:
    available = sorted({m.rsplit("/", 1)[-1] for m in client.get_available_maps()})
    by_lower = {m.lower(): m for m in available}
    out = []
    for town in towns:
        if town.lower() not in by_lower:
            raise ValueError(f"unknown town {town!r}; valid: {', '.join(available)}")
        out.append(by_lower[town.lower()])
    return out


def _plan_jobs(config: CollectConfig, towns: list[str], need: dict, run_index: int) -> list[Job]:
    n = max(config.workers, len(towns))
    jobs = []
    for j in range(n):
        quota = {c: need[c] // n + (1 if j < need[c] % n else 0) for c in CLASSES}
        jobs.append(Job(index=j, town=towns[j % len(towns)], quota=quota,
                        port=config.ports[(j % config.workers) % len(config.ports)], run_index=run_index))
    return [j for j in jobs if any(j.quota.values())]


def _config_json(config: CollectConfig) -> dict:
    d = asdict(config)
    d["out"] = str(config.out)
    return d


def _run_jobs(config: CollectConfig, jobs: list[Job], client, need: dict) -> list[JobResult]:
    bar = _Bar(config, need)
    try:
        if config.workers == 1:
            results = []
            for job in jobs:
                results.append(run_job(config, job, client, on_saved=bar.saved))
                if results[-1].stopped:
                    break
            return results
        return _run_workers(config, jobs, bar)
    finally:
        bar.close()


class _Bar:
    """tqdm bar with both class counts (no-op when progress is off)."""

    def __init__(self, config: CollectConfig, need: dict):
        self.counts = Counter()
        self.need = need
        self.bar = None
        if config.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=sum(need.values()), unit="frame", dynamic_ncols=True, desc="collect")
            self._postfix()

    def _postfix(self):
        self.bar.set_postfix_str("  ".join(f"{c} {self.counts[c]}/{self.need[c]}" for c in CLASSES), refresh=False)

    def saved(self, label: str) -> None:
        self.counts[label] += 1
        if self.bar is not None:
            self._postfix()
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _run_workers(config: CollectConfig, jobs: list[Job], bar: _Bar) -> list[JobResult]:
    ctx = mp.get_context("spawn")  # carla's client starts C++ threads: never fork after them
    events = ctx.Queue()
    per_worker = [[j for j in jobs if j.index % config.workers == k] for k in range(config.workers)]
    procs = [ctx.Process(target=_worker_main, args=(config, wj, events), name=f"collect-worker-{k}")
             for k, wj in enumerate(per_worker) if wj]
    for p in procs:
        p.start()
    results: list[JobResult] = []
    exited = 0  # a worker runs several jobs; it says "exit" once, after its last one
    try:
        while exited < len(procs):
            try:
                kind, payload = events.get(timeout=0.5)
            except Exception:  # queue.Empty
                if not any(p.is_alive() for p in procs) and events.empty():
                    break  # a worker died without saying goodbye (killed): nothing more will come
                continue
            if kind == "saved":
                bar.saved(payload)
            elif kind == "done":
                results.append(payload)
            elif kind == "error":
                results.append(JobResult(stopped=payload))
            elif kind == "exit":
                exited += 1
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=30)
        raise
    for p in procs:  # every event has been read, so no worker is blocked flushing the queue
        p.join()
    return results


def _worker_main(config: CollectConfig, jobs: list[Job], events) -> None:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    client = None
    try:
        for job in jobs:
            try:
                client = client or connect(config.sim, config.host, job.port, config.timeout)
                result = run_job(config, job, client, on_saved=lambda label: events.put(("saved", label)))
            except KeyboardInterrupt:
                events.put(("error", "interrupted"))
                return
            except Exception as err:  # noqa: BLE001 - reported to the parent as one line
                events.put(("error", f"{type(err).__name__}: {err}"))
                return
            events.put(("done", result))
            if result.stopped:
                return
    finally:
        events.put(("exit", None))


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------------------------- one job
def run_job(config: CollectConfig, job: Job, client, on_saved=lambda label: None) -> JobResult:
    """Drive episodes in ``job.town`` until the job's quota is met; restores the world on any exit."""
    timer = SectionTimer()
    result = JobResult(sim=sim_kind(client))
    writer = DatasetWriter(config.out, config.image_format, config.jpeg_quality)
    world = client.get_world()
    settings_before_load = None
    if not world.get_map().name.rsplit("/", 1)[-1] == job.town:
        settings_before_load = world.get_settings()  # CARLA's load_world resets settings by default
        world = client.load_world(job.town)
    wmap = world.get_map()
    planner = GlobalRoutePlanner(wmap, PLANNER_RESOLUTION_M)
    junctions = JunctionChoices(wmap, config.label.lookahead_m, PLANNER_RESOLUTION_M) \
        if config.junction_policy == "skip" else None
    starts = list(wmap.get_spawn_points()) or [w.transform for w in planner.spawn_waypoints(10.0)]
    rng = np.random.default_rng([config.seed, job.run_index, job.index])
    presets = weather_presets()
    original_weather = world.get_weather()
    bl = world.get_blueprint_library()
    vehicle_bp = _pick_vehicle(bl, config.vehicle)
    if vehicle_bp.has_attribute("role_name"):
        vehicle_bp.set_attribute("role_name", "hero")
    cam_bp = bl.find("sensor.camera.rgb")
    cam_bp.set_attribute("image_size_x", str(config.res[0]))
    cam_bp.set_attribute("image_size_y", str(config.res[1]))
    cam_bp.set_attribute("fov", str(config.fov))
    mount = camera_mount_transform()
    saved = Counter()
    episode = 0
    try:
        with CarlaSyncMode(world, fixed_delta_seconds=config.delta_seconds):
            failures = 0
            while any(saved[c] < job.quota[c] for c in CLASSES):
                weather = config.weather[(episode + job.index + job.run_index) % len(config.weather)]
                world.set_weather(presets[weather])
                episode_id = f"{job.town}-r{job.run_index:03d}-j{job.index:02d}-e{episode:04d}"
                got = _run_episode(config, job, world, planner, junctions, starts, rng, vehicle_bp, cam_bp, mount,
                                   writer, episode_id, weather, saved, result, timer, on_saved)
                episode += 1
                failures = 0 if got else failures + 1
                if failures >= 50:
                    raise RuntimeError(f"{failures} episodes in a row in {job.town} saved no frame; "
                                       f"check the label thresholds and --min-spacing")
    except DiskFullError as err:
        logger.error("%s", err)
        result.stopped = str(err)
    finally:
        with contextlib.suppress(RuntimeError):
            world.set_weather(original_weather)
        if settings_before_load is not None:
            world.apply_settings(settings_before_load)
        result.episodes = episode
        result.timings = dict(timer.totals)
    return result


def _pick_vehicle(bl, pattern: str):
    """First matching blueprint by id, preferring four-wheelers (CARLA's vehicle.* also lists bikes)."""
    matches = sorted(bl.filter(pattern), key=lambda b: b.id)
    if not matches:
        raise ValueError(f"no vehicle blueprint matches {pattern!r}")
    cars = [b for b in matches if b.has_attribute("number_of_wheels")
            and int(b.get_attribute("number_of_wheels").as_int()) == 4]
    return (cars or matches)[0]


def _spawn(world, bp, starts, rng):
    for _ in range(20):
        start = starts[int(rng.integers(len(starts)))]
        start = carla.Transform(carla.Location(start.location.x, start.location.y, start.location.z + 0.3),
                                start.rotation)
        actor = world.try_spawn_actor(bp, start)
        if actor is not None:
            return actor
    raise RuntimeError("could not spawn the vehicle at 20 random spawn points (all occupied?)")


def _turn_probability(job: Job, saved: Counter) -> float:
    """Prefer turns while curves lag behind: they are the scarce class in every town."""
    curve, straight = CLASSES
    need_c = job.quota[curve] - saved[curve]
    need_s = job.quota[straight] - saved[straight]
    if need_c <= 0:
        return 0.0
    return min(1.0, 2.0 * need_c / max(1, need_c + need_s))


def _run_episode(config, job, world, planner, junctions, starts, rng, vehicle_bp, cam_bp, mount, writer, episode_id,
                 weather, saved, result, timer, on_saved) -> int:
    """One spawn + one route; returns the number of frames saved.

    ``junctions`` (a JunctionChoices, or None for ``--junction-policy keep``) finds the route's
    junction choices once per episode; a frame's route dependence is only computed for frames
    that would otherwise be saved, so it costs little.
    """
    actors = []
    n_saved = 0
    try:
        vehicle = _spawn(world, vehicle_bp, starts, rng)
        actors.append(vehicle)
        camera = world.spawn_actor(cam_bp, mount, attach_to=vehicle)
        actors.append(camera)
        route = planner.random_route(vehicle.get_transform().location, config.episode_length + config.label.lookahead_m,
                                     rng, _turn_probability(job, saved))
        path = RoutePath.from_route(route)
        if path.length < config.label.lookahead_m + 5:
            return 0
        writer.write_route(episode_id, {"town": job.town, "episode": episode_id,
                                        "columns": ["road_id", "section_id", "lane_id", "s", "x", "y", "yaw_deg"],
                                        # lane s unrounded: map.get_waypoint_xodr rejects s past the lane end
                                        "points": np.column_stack((path.ids, np.round(np.column_stack(
                                            (path.x, path.y, np.degrees(path.yaw))), 4))).tolist()})
        with timer("label"):
            choices = junctions.along(path) if junctions is not None else None
        follower = RouteFollower(vehicle, config.follower, dt=config.delta_seconds)
        follower.set_route(path)
        dt = config.delta_seconds
        with CarlaSyncMode(world, camera, fixed_delta_seconds=dt) as sync:
            odometer, last_saved_at, last_skipped_at = 0.0, -math.inf, -math.inf
            previous_xy = None
            slow_time = 0.0
            perturbation = Perturbation(config.recovery, dt, rng)
            camera_on = True
            if config.camera_on_demand:  # warm-up frames are never saved
                sync.pause(camera)
                camera_on = False
            tick = 0
            while True:
                with timer("tick"):
                    frame, (image,) = sync.tick(timeout=max(2.0, config.timeout))
                tick += 1
                result.ticks += 1
                with timer("control"):
                    tf = vehicle.get_transform()
                    loc = tf.location
                    if previous_xy is not None:
                        odometer += math.hypot(loc.x - previous_xy[0], loc.y - previous_xy[1])
                    previous_xy = (loc.x, loc.y)
                    state = follower.read_state()
                    control = follower.compute(state)
                    perturbing = perturbation.apply(control, allowed=tick > WARMUP_TICKS)
                with timer("label"):
                    s0 = follower.progress
                    evidence = label_at(path, s0, config.label)
                    skip = None
                    if evidence is not None and not perturbing and tick > WARMUP_TICKS \
                            and odometer - last_saved_at >= config.min_spacing:
                        skip = _skip_reason(config, path, s0, evidence, choices, saved, job)
                        if skip is not None and odometer - last_skipped_at >= config.min_spacing:
                            result.skipped[skip] += 1
                            last_skipped_at = odometer
                if image is not None and evidence is not None and evidence.label is not None and skip is None \
                        and not perturbing and tick > WARMUP_TICKS \
                        and saved[evidence.label] < job.quota[evidence.label] \
                        and odometer - last_saved_at >= config.min_spacing and image.frame == frame:
                    _save(writer, image, evidence, job, weather, episode_id, tf, state, control, result, timer)
                    saved[evidence.label] += 1
                    result.saved[evidence.label] += 1
                    result.by_weather[weather] += 1
                    n_saved += 1
                    last_saved_at = odometer
                    on_saved(evidence.label)
                    if all(saved[c] >= job.quota[c] for c in CLASSES):
                        break
                vehicle.apply_control(control)
                # episode end: route used up, stuck, or off the road
                slow_time = slow_time + dt if state.speed < 0.5 and tick > WARMUP_TICKS else 0.0
                if follower.remaining() < config.label.lookahead_m or slow_time > STUCK_SECONDS \
                        or follower.lateral_error > OFF_ROUTE_M:
                    break
                # listen to the camera for the next frame only if that frame can be saved
                with timer("control"):
                    want = _camera_wanted(config, follower, path, state, dt, odometer - last_saved_at, tick,
                                          perturbation.active, saved, job, choices)
                    if config.camera_on_demand and want != camera_on:
                        (sync.resume if want else sync.pause)(camera)
                        camera_on = want
    finally:
        with timer("other"):
            for actor in reversed(actors):
                with contextlib.suppress(RuntimeError):
                    actor.destroy()
    return n_saved


class Perturbation:
    """Recovery data: short random steering offsets added to the follower's command.

    A perturbation starts with probability ``rate * dt`` per tick, lasts 0.4-1.0 s and adds
    +-0.15-0.35 to steer. Frames during it are never saved (the car is being pushed off the
    line on purpose); the frames while the follower brings it back are the recovery data.
    """

    def __init__(self, rate: float, dt: float, rng: np.random.Generator):
        self.rate, self.dt, self.rng = rate, dt, rng
        self.left = 0.0
        self.offset = 0.0

    @property
    def active(self) -> bool:
        return self.left > 0

    def apply(self, control, allowed: bool = True) -> bool:
        """Perturb ``control`` in place; True while a perturbation is under way on this tick."""
        if not self.active and self.rate > 0 and allowed and self.rng.random() < self.rate * self.dt:
            self.left = float(self.rng.uniform(0.4, 1.0))
            self.offset = float(self.rng.choice([-1, 1]) * self.rng.uniform(0.15, 0.35))
        if not self.active:
            return False
        self.left -= self.dt
        control.steer = float(np.clip(control.steer + self.offset, -1.0, 1.0))
        return True


def _skip_reason(config, path, s0, evidence, choices, saved, job) -> str | None:
    """Why a frame that is due (spacing, warm-up, no perturbation) is not saved, for the summary.

    ``ambiguous``: delta_psi in the gap between the thresholds. ``route_dependent``: with
    ``--junction-policy skip``, another legal way on at a junction ahead would give the other
    class (computed only for frames whose class still needs frames: the rest are not saved anyway).
    """
    if evidence.label is None:
        return "ambiguous"
    if choices and saved[evidence.label] < job.quota[evidence.label] \
            and route_dependent(path, s0, config.label, choices):
        return "route_dependent"
    return None


def _camera_wanted(config, follower, path, state, dt, since_saved, tick, perturbing, saved, job, choices=None) -> bool:
    """Will the NEXT frame be saved? (predicted one step ahead; a miss only delays a save by one tick)."""
    step = max(0.0, state.speed) * dt
    if perturbing or tick + 1 <= WARMUP_TICKS or since_saved + step * 0.98 < config.min_spacing:
        return False
    s_next = follower.progress + step
    ev = label_at(path, s_next, config.label)
    return ev is not None and ev.label is not None and saved[ev.label] < job.quota[ev.label] \
        and not (choices and route_dependent(path, s_next, config.label, choices))


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM while an image and its row are written, then raise KeyboardInterrupt.

    Without it a Ctrl-C between the image and its row would leave an orphan image (reconcile
    would remove it on the next start, but a reader of the interrupted dataset would see it).
    Only the main thread may set handlers; elsewhere this is a no-op.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    handler = lambda signum, frame: caught.append(signum)  # noqa: E731
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
    if caught:
        raise KeyboardInterrupt(f"signal {caught[0]}")


def _save(writer, image, evidence, job, weather, episode_id, tf, state, control, result, timer):
    with timer("encode"):
        bgra = np.frombuffer(image.raw_data, dtype=np.uint8).reshape(image.height, image.width, 4)
        encoded = writer.encode(bgra)
    row = {
        "image": writer.image_path(evidence.label, episode_id, image.frame), "label": evidence.label,
        "town": job.town, "sim": result.sim, "weather": weather, "episode": episode_id, "frame": image.frame,
        "timestamp": f"{image.timestamp:.4f}", "x": f"{tf.location.x:.4f}", "y": f"{tf.location.y:.4f}",
        "z": f"{tf.location.z:.4f}", "yaw": f"{tf.rotation.yaw:.4f}", "speed": f"{state.speed * 3.6:.3f}",
        "steer": f"{control.steer:.5f}", "throttle": f"{control.throttle:.5f}", "brake": f"{control.brake:.5f}",
        "heading_change_deg": f"{evidence.heading_change_deg:.4f}", "max_curvature": f"{evidence.max_curvature:.6f}",
        "lookahead_m": f"{evidence.lookahead_m:g}",
    }
    with timer("write"), _signals_deferred():
        writer.write_frame(encoded, row)


# ---------------------------------------------------------------------------------- CLI
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carla-collect",
                                description="Collect a balanced curve/straight dataset labelled from the map.",
                                add_help=add_help)
    add_carla_args(p, port_list=True)
    p.add_argument("--tm-port", type=int, default=8000,
                   help="Traffic Manager port (recorded; the collector drives with its own controller and spawns no traffic)")
    p.add_argument("--fov", type=float, default=90.0, help="camera horizontal field of view, deg (default: %(default)s)")
    p.add_argument("--town", default="Town02", help="town, or a comma list of towns (default: %(default)s)")
    p.add_argument("--frames", type=int, default=36000,
                   help="total frames of the dataset, split equally between curve and straight (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("data/curvature"), help="dataset directory (default: %(default)s)")
    p.add_argument("--weather", default="ClearNoon",
                   help="preset or comma list of CARLA presets cycled per episode, or 'all' (default: %(default)s)")
    p.add_argument("--min-spacing", type=float, default=2.0,
                   help="metres driven between two saved frames (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="parallel collector processes (default: %(default)s)")
    p.add_argument("--lookahead", type=float, default=LabelParams.lookahead_m,
                   help="label lookahead L along the route, m (default: %(default)s)")
    p.add_argument("--curve-deg", type=float, default=LabelParams.curve_deg,
                   help="heading change over L at or above which a frame is 'curve', deg (default: %(default)s)")
    p.add_argument("--straight-deg", type=float, default=LabelParams.straight_deg,
                   help="heading change over L at or below which a frame is 'straight', deg (default: %(default)s)")
    p.add_argument("--junction-policy", choices=JUNCTION_POLICIES, default="skip",
                   help="skip: do not save frames whose label depends on a route choice at a junction ahead, which "
                        "the camera cannot see (straight or turn at a crossing); keep: save them (default: %(default)s)")
    p.add_argument("--recovery", type=float, default=0.0,
                   help="recovery data: random steering perturbations per second; their frames are never saved "
                        "(default: %(default)s = off)")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="(default: %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="(default: %(default)s)")
    p.add_argument("--episode-length", type=float, default=300.0,
                   help="metres of route per episode before a new spawn point and weather (default: %(default)s)")
    p.add_argument("--delta", type=float, default=0.05, help="fixed simulation step, s (default: %(default)s)")
    p.add_argument("--cruise-speed", type=float, default=TOWN.cruise_speed_kmh,
                   help="route follower cruise speed, km/h (default: %(default)s)")
    p.add_argument("--camera-always-on", action="store_true",
                   help="listen to the camera every tick instead of only on ticks that are saved")
    p.add_argument("--profile", action="store_true", help="print where the time went")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _parse_ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise ValueError(f"--port {text!r} is not a port or a comma list of ports") from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise ValueError(f"--port {text!r}: ports must be in 1..65535")
    return ports


def config_from_args(args: argparse.Namespace) -> CollectConfig:
    from dataclasses import replace

    if not args.sync:
        raise ValueError("the collector needs synchronous mode (frames matched by frame id); drop --async")
    return CollectConfig(
        out=args.out, towns=tuple(t.strip() for t in args.town.split(",") if t.strip()), frames=args.frames,
        sim=args.sim, host=args.host, ports=_parse_ports(args.port), tm_port=args.tm_port, timeout=args.timeout,
        res=args.res, fov=args.fov, weather=parse_weather(args.weather), seed=args.seed,
        min_spacing=args.min_spacing, workers=args.workers,
        label=LabelParams(args.lookahead, args.curve_deg, args.straight_deg, args.junction_policy),
        image_format=args.image_format,
        jpeg_quality=args.jpeg_quality, recovery=args.recovery, episode_length=args.episode_length,
        delta_seconds=args.delta, follower=replace(TOWN, cruise_speed_kmh=args.cruise_speed,
                                                   min_speed_kmh=min(TOWN.min_speed_kmh, args.cruise_speed)),
        camera_on_demand=not args.camera_always_on, progress=not args.no_progress)


def format_summary(result: CollectResult, out: Path, profile: bool = False) -> str:
    added = sum(result.added.values())
    lines = [f"added {added} frames in {result.seconds:.1f} s ({result.frames_per_second:.1f} frames/s, "
             f"{result.ticks} ticks, {result.episodes} episodes) -> {out}",
             "dataset: " + ", ".join(f"{c} {result.totals.get(c, 0)}" for c in CLASSES),
             f"skipped: {result.skipped.get('ambiguous', 0)} ambiguous, "
             + (f"{result.skipped.get('route_dependent', 0)} route-dependent at junctions"
                if result.junction_policy == "skip" else "route-dependent frames kept (--junction-policy keep)"),
             "per town: " + ", ".join(f"{k} {v}" for k, v in sorted(result.by_town.items())),
             "per weather: " + ", ".join(f"{k} {v}" for k, v in sorted(result.by_weather.items()))]
    if result.contact_sheet:
        lines.append(f"contact sheet: {result.contact_sheet}")
    if profile and result.timings:
        total = sum(result.timings.values())
        lines.append("time split (all workers): " + ", ".join(
            f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in sorted(result.timings.items(), key=lambda kv: -kv[1])))
        if result.ticks:
            lines.append(f"per tick: {1000 * result.timings.get('tick', 0) / result.ticks:.2f} ms simulator, "
                         f"{1000 * result.timings.get('control', 0) / result.ticks:.2f} ms controller; per saved frame: "
                         f"{1000 * (result.timings.get('encode', 0) + result.timings.get('write', 0)) / max(1, added):.2f}"
                         f" ms encode+write")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    from .connection import CarlaConnectionError

    try:
        result = collect(config)
    except KeyboardInterrupt:
        rows = read_manifest(config.out) if (config.out / INFO_NAME).exists() else []
        counts = Counter(r["label"] for r in rows)
        print(f"interrupted: {config.out} holds " + ", ".join(f"{c} {counts.get(c, 0)}" for c in CLASSES)
              + "; run the same command again to resume", file=sys.stderr)
        return 130
    except (ValueError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CarlaConnectionError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_summary(result, config.out, profile=args.profile))
    if result.stopped:
        print(f"stopped early: {result.stopped}; run again to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
