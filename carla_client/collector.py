"""The collector's library: drive routes, label frames from the map, write a balanced dataset.

``carla_client.collect`` is its CLI. A car follows random routes through the town's junction graph
(:mod:`carla_client.planner`) with the route follower (:mod:`carla_client.follower`) at town speeds,
in synchronous mode; each frame is labelled from the planned route ahead (:mod:`carla_client.labels`)
and written with :class:`datasets.manifest.DatasetWriter`. The car, its camera and the end of an
episode come from the one episode lifecycle (:mod:`carla_client.episode`), shared with the drive loop.

Per job (one town, one quota per class), :func:`run_job` drives episodes; per episode an
:class:`EpisodeState` holds what changes from tick to tick and :meth:`EpisodeState.frame_due` is the
one rule for "may this frame be saved" (warm-up over, no perturbation under way, spacing).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import carla
import numpy as np

from datasets.manifest import (DatasetWriter, DiskFullError, check_writable, merge_info, previous_runs,
                               read_manifest, write_contact_sheet)
from datasets.schema import (CLASSES, FORMAT_VERSION, INFO_NAME, RANDOMIZATION_NAME, CameraSpec,
                             LabelParams)

from .cli import parse_weather
from .config import SimConfig, arg
from .connection import connect, sim_kind
from .episode import EgoSpec, StopRule, ensure_town, resolve_town, spawn_ego
from .follower import TOWN, FollowerParams, RouteFollower
from .workers import LOCK_NAME, CollectorLock, QuotaAuthority, check_lock_held, die_with_parent
from .labels import JunctionChoices, label_at, route_dependent
from .planner import GlobalRoutePlanner, RoadOption
from .route import RoutePath
from .sync import CarlaSyncMode

logger = logging.getLogger(__name__)

WARMUP_TICKS = 10          # let the car settle on the road before saving
STUCK_SECONDS = 4.0        # slower than 0.5 m/s this long ends the episode
OFF_ROUTE_M = 4.0          # farther than this from the route = left the road, ends the episode
PLANNER_RESOLUTION_M = 1.0
RECOVERY_S = 2.0           # after a perturbation, frames this long are flagged ``recovery``
TAKEOVER_M = 1.5           # DAgger: the follower takes the wheel from a learned driver this far off the lane centre
RELEASE_M = 0.3            # ... and hands it back once this close again


class Driver(Protocol):
    """A learned policy driving the car while the route follower only labels (DAgger).

    ``__call__(bgra, speed_kmh, command) -> steer``; ``describe()`` goes into dataset.json's run entry.
    The collector never imports a model: the caller (``training.train_policy --dagger``) passes one in.
    """

    def __call__(self, bgra: np.ndarray, speed_kmh: float, command: str) -> float: ...

    def describe(self) -> dict: ...


def _towns(text) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip())


@dataclass
class CollectConfig(SimConfig):
    """Everything a collection run depends on (saved in dataset.json).

    Simulator fields (sim, host, port, timeout, res, seed) come from :class:`SimConfig`; worker k
    connects to ``ports[k]`` (default: ``port``). ``res`` and ``fov`` make the camera
    (:meth:`camera`, with CARLA's hood mount); ``label`` is the label definition. Both are the
    dataset's contract, written to dataset.json.

    Args:
        out: dataset directory (shared by runs and towns).
        towns: towns to drive in; jobs are spread over them equally.
        frames: total target of the dataset (both classes get frames / 2).
        weather: presets cycled per episode.
        min_spacing: metres driven between two saved frames.
        workers: processes collecting in parallel into ``out``.
        recovery: chance per second of a random steering perturbation (frames during it are not saved;
            the frames while the car comes back are flagged ``recovery``).
        episode_length: metres of route per episode (a new spawn point and weather after it).
        delta_seconds: fixed simulation step, s.
        vehicle: blueprint filter for the car.
        follower: route-follower parameters.
        camera_on_demand: listen to the camera only on ticks whose frame is saved.
        progress: show a tqdm bar.
    """

    out: Path = field(default=Path("data/curvature"), metadata=arg("dataset directory"))
    towns: tuple[str, ...] = field(default=("Town02",), metadata=arg(
        "town, or a comma list of towns", flag="--town", parse=_towns))
    frames: int = field(default=36000, metadata=arg(
        "total frames of the dataset, split equally between curve and straight"))
    ports: tuple[int, ...] = ()
    tm_port: int = field(default=8000, metadata=arg(
        "Traffic Manager port (recorded; the collector drives with its own controller)"))
    fov: float = field(default=90.0, metadata=arg("camera horizontal field of view, deg"))
    weather: tuple[str, ...] = field(default=("ClearNoon",), metadata=arg(
        "preset or comma list of CARLA presets, cycled (see --weather-every), or 'all'", parse=parse_weather))
    weather_every: int = field(default=25, metadata=arg(
        "saved frames between two weather presets within an episode (0: one preset per episode)"))
    min_spacing: float = field(default=2.0, metadata=arg("metres driven between two saved frames"))
    workers: int = field(default=1, metadata=arg("parallel collector processes"))
    label: LabelParams = field(default_factory=LabelParams)
    image_format: str = field(default="jpg", metadata=arg("image file format", choices=("jpg", "png")))
    jpeg_quality: int = field(default=95, metadata=arg("JPEG quality, 1..100"))
    recovery: float = field(default=0.0, metadata=arg(
        "recovery data: random steering perturbations per second; their frames are never saved, the frames "
        "while the car comes back are flagged recovery (0 = off)"))
    episode_length: float = field(default=300.0, metadata=arg(
        "metres of route per episode before a new spawn point and weather"))
    delta_seconds: float = field(default=0.05, metadata=arg("fixed simulation step, s", flag="--delta"))
    traffic: int = field(default=0, metadata=arg(
        "NPC vehicles driven by the Traffic Manager in every job's town (labels stay map-true)"))
    walkers: int = field(default=0, metadata=arg("NPC walkers on the sidewalks"))
    domain_randomization: bool = field(default=False, metadata=arg(
        "embedded simulator only: randomise colours, sky, sun, clutter and the camera mount/FOV per frame "
        "(recorded in randomization.jsonl; labels stay map-true)"))
    vehicle: str = "vehicle.*"
    follower: FollowerParams = TOWN
    camera_on_demand: bool = True
    progress: bool = True
    adopt: bool = field(default=False, metadata=arg(
        "collect into a non-empty --out that is not a collector dataset (its files are kept, never deleted)"))

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "towns", _towns(self.towns))
        if isinstance(self.weather, str):
            object.__setattr__(self, "weather", parse_weather(self.weather))
        if not self.ports:
            object.__setattr__(self, "ports", (self.port,))
        if self.frames < 2 or self.frames % 2:
            raise ValueError(f"--frames must be an even number >= 2 (split equally between {' and '.join(CLASSES)}), "
                             f"got {self.frames}")
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
        if self.weather_every < 0:
            raise ValueError(f"--weather-every must be >= 0 saved frames (0: one preset per episode), got {self.weather_every}")
        if not 0 <= self.recovery <= 5:
            raise ValueError(f"--recovery must be in [0, 5] perturbations per second, got {self.recovery}")
        self.camera()  # validates res and fov
        if self.episode_length <= self.label.lookahead_m:
            raise ValueError(f"--episode-length ({self.episode_length} m) must exceed the lookahead "
                             f"({self.label.lookahead_m} m)")
        if self.traffic < 0 or self.walkers < 0:
            raise ValueError(f"--traffic and --walkers must be >= 0, got {self.traffic} and {self.walkers}")
        if not 0 < self.delta_seconds <= 0.1:
            raise ValueError(f"--delta must be in (0, 0.1] s (CARLA's physics limit), got {self.delta_seconds}")

    @property
    def junction_policy(self) -> str:
        return self.label.junction_policy

    def camera(self) -> CameraSpec:
        """The camera every frame is taken with (CARLA's hood mount)."""
        return CameraSpec(self.res[0], self.res[1], self.fov)

    def label_json(self) -> dict:
        """``dataset.json``'s ``"label"``: thresholds plus the junction policy (both decide which frames exist)."""
        return self.label.to_json()

    def camera_json(self) -> dict:
        return {**self.camera().to_json(), "image_format": self.image_format}


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
    flagged: Counter = field(default_factory=Counter)  # route-dependent frames saved flagged (outside the quotas)
    ticks: int = 0
    takeovers: int = 0  # DAgger: times the follower took the wheel from the learned driver
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
    junction_policy: str = "flag"
    flagged: Counter = field(default_factory=Counter)
    takeovers: int = 0  # DAgger: times the follower took the wheel from the learned driver

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
def collect(config: CollectConfig, client=None, driver: Driver | None = None) -> CollectResult:
    """Collect into ``config.out`` until both classes reach ``config.frames / 2``.

    Args:
        config: the run.
        client: an already connected client to reuse (single worker only); else connects.
        driver: a learned policy that steers while the follower labels (DAgger, one worker only): every
            saved frame keeps the follower's controls as its label and is flagged ``recovery`` when the
            driver steered it; the follower takes over beyond ``TAKEOVER_M`` from the lane centre.

    Raises:
        ValueError: unknown town (lists the valid ones), incompatible existing dataset.
        PermissionError: ``out`` not writable.
        CarlaConnectionError: no server with ``sim="carla"``.
        KeyboardInterrupt: after a clean stop (settings restored, actors destroyed, data intact).
    """
    t_start = time.perf_counter()
    if driver is not None and config.workers != 1:
        raise ValueError(f"--workers {config.workers}: a learned driver (DAgger) runs in this process; use --workers 1")
    check_writable(config.out)
    if client is None:
        client = connect(config.sim, config.host, config.ports[0], config.timeout)
    towns = [resolve_town(client, t) for t in config.towns]
    with CollectorLock(config.out):   # one collector per dataset; its workers check the parent still holds it
        writer = DatasetWriter(config.out, config.image_format, config.jpeg_quality)
        reconciled = writer.prepare(adopt=config.adopt)
        have = writer.counts()
        target = config.frames // 2
        need = {c: max(0, target - have.get(c, 0)) for c in CLASSES}
        run_index = previous_runs(config.out)
        jobs = _plan_jobs(config, towns, need, run_index)
        info = {"label": _label_json_for(config), "camera": config.camera_json(), "format_version": FORMAT_VERSION,
                "routes": "routes/<episode>.json: lane coordinates [road_id, section_id, lane_id, s] and "
                          "x, y, yaw of every route point an episode's labels were computed from"}
        run = {"run": run_index, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": _config_json(config),
               "sim": sim_kind(client), "client_version": client.get_client_version(),
               "server_version": client.get_server_version(), "need": need}
        if driver is not None:
            run["driver"] = {**driver.describe(), "takeover_m": TAKEOVER_M, "release_m": RELEASE_M}
        merge_info(config.out, info, run)
        logger.info("collecting %s into %s (have %s, need %s)", ", ".join(towns), config.out, dict(have), need)
        results = _run_jobs(config, jobs, client, need, driver) if any(need.values()) else []
    rows = [r for r in read_manifest(config.out, strict=False) if r["route_dependent"] != "1"]
    added = sum((r.saved for r in results), Counter())
    timings = sum((Counter(r.timings) for r in results), Counter())
    stopped = next((r.stopped for r in results if r.stopped), None)
    sheet = write_contact_sheet(config.out, seed=config.seed) if rows else None
    return CollectResult(added=added, totals=Counter(r["label"] for r in rows),
                         by_town=Counter(r["town"] for r in rows), by_weather=Counter(r["weather"] for r in rows),
                         seconds=time.perf_counter() - t_start, ticks=sum(r.ticks for r in results),
                         episodes=sum(r.episodes for r in results), timings=dict(timings), stopped=stopped,
                         contact_sheet=sheet, reconciled=reconciled,
                         skipped=sum((r.skipped for r in results), Counter()), junction_policy=config.junction_policy,
                         flagged=sum((r.flagged for r in results), Counter()),
                         takeovers=sum(r.takeovers for r in results))


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


def _run_jobs(config: CollectConfig, jobs: list[Job], client, need: dict, driver: Driver | None = None) -> list[JobResult]:
    bar = _Bar(config, need)
    try:
        if config.workers == 1:
            results = []
            for job in jobs:
                results.append(run_job(config, job, client, on_saved=bar.saved, driver=driver))
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

            self.bar = tqdm(total=sum(need.values()), unit="frame", dynamic_ncols=True, desc="collect",
                            disable=None)  # None: quiet when stderr is not a terminal
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
    # one authority for the class quotas: after any crash a rerun ends exactly at the target
    guard = QuotaGuard(QuotaAuthority(ctx, {c: sum(j.quota[c] for j in jobs) for c in CLASSES}),
                       str(Path(config.out) / LOCK_NAME))
    per_worker = [[j for j in jobs if j.index % config.workers == k] for k in range(config.workers)]
    procs = [ctx.Process(target=_worker_main, args=(config, wj, events, guard, os.getpid()),
                         name=f"collect-worker-{k}")
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
        # SIGTERM, not SIGINT: a collector started in the background (``nohup ... &``, a batch script)
        # inherits SIGINT ignored, and its workers then drove on until the joins below timed out.
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=30)
        raise
    for p in procs:  # every event has been read, so no worker is blocked flushing the queue
        p.join()
    return results


@dataclass(frozen=True)
class QuotaGuard:
    """What a worker process checks before each save: the parent still holds the dataset's lock, and
    the shared quota authority grants the frame (workers die with their parent: ``die_with_parent``)."""

    quota: object      # carla_client.workers.QuotaAuthority
    lock_path: str

    def claim(self, label: str) -> bool:
        check_lock_held(self.lock_path)
        return self.quota.claim(label)

    def release(self, label: str) -> None:
        self.quota.release(label)


def _share_cores_with_siblings(config: CollectConfig) -> None:
    """Embedded workers split the CPUs for their renderers' OpenCV threads (each would take two by default:
    with two workers on two cores they would fight), unless ``CARLA_EMBEDDED_THREADS`` says otherwise."""
    if config.sim != "embedded" or config.workers < 2:
        return
    from carla_embedded.threads import ENV, usable_cpus
    os.environ.setdefault(ENV, str(max(1, usable_cpus() // config.workers)))


def _worker_main(config: CollectConfig, jobs: list[Job], events, guard: QuotaGuard | None = None,
                 parent_pid: int | None = None) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    _share_cores_with_siblings(config)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    client = None
    try:
        for job in jobs:
            try:
                client = client or connect(config.sim, config.host, job.port, config.timeout)
                result = run_job(config, job, client, on_saved=lambda label: events.put(("saved", label)), guard=guard)
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
@dataclass
class JobRun:
    """What the episodes of one job share: built once per job by :func:`run_job`."""

    config: CollectConfig
    job: Job
    world: object
    planner: GlobalRoutePlanner
    junctions: JunctionChoices | None
    starts: list
    rng: np.random.Generator
    writer: DatasetWriter
    result: JobResult
    timer: SectionTimer
    on_saved: object
    ego: EgoSpec
    guard: QuotaGuard | None = None
    randomizer: "_Randomizer | None" = None
    driver: Driver | None = None
    saved: Counter = field(default_factory=Counter)
    weather_turn: int = 0     # presets used so far (episodes and changes within them)

    def quota_left(self, label: str) -> bool:
        return self.saved[label] < self.job.quota[label]

    def done(self) -> bool:
        return not any(self.quota_left(c) for c in CLASSES)


def run_job(config: CollectConfig, job: Job, client, on_saved=lambda label: None,
            guard: QuotaGuard | None = None, driver: Driver | None = None) -> JobResult:
    """Drive episodes in ``job.town`` until the job's quota is met; restores the world on any exit.

    ``guard`` (worker processes) is asked before every save of a class frame."""
    result = JobResult(sim=sim_kind(client))
    world, settings_before_load = ensure_town(client, job.town)
    wmap = world.get_map()
    planner = GlobalRoutePlanner(wmap, PLANNER_RESOLUTION_M)
    run = JobRun(
        config=config, job=job, world=world, planner=planner,
        junctions=JunctionChoices(wmap, config.label.lookahead_m, PLANNER_RESOLUTION_M)
        if config.junction_policy != "keep" else None,
        starts=list(wmap.get_spawn_points()) or [w.transform for w in planner.spawn_waypoints(10.0)],
        rng=np.random.default_rng([config.seed, job.run_index, job.index]),
        writer=DatasetWriter(config.out, config.image_format, config.jpeg_quality), result=result,
        timer=SectionTimer(), on_saved=on_saved, ego=EgoSpec(config.vehicle, config.camera()), guard=guard,
        randomizer=_Randomizer.create(config, job, world), driver=driver)
    original_weather = world.get_weather()
    episode = 0
    try:
        with CarlaSyncMode(world, fixed_delta_seconds=config.delta_seconds), _traffic(client, world, config, job):
            failures = 0
            while not run.done():
                weather = _next_weather(run)
                episode_id = f"{job.town}-r{job.run_index:03d}-j{job.index:02d}-e{episode:04d}"
                got = run_episode(run, episode_id, weather)
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
        if run.randomizer is not None:
            run.randomizer.close()
        result.episodes = episode
        result.timings = dict(run.timer.totals)
    return result


def _traffic(client, world, config: CollectConfig, job: Job):
    """The job's NPCs (Traffic Manager, identical calls on a CARLA server), alive for all its episodes."""
    if not (config.traffic or config.walkers):
        return contextlib.nullcontext()
    from .traffic import Traffic, TrafficConfig

    return Traffic(client, world, TrafficConfig(vehicles=config.traffic, walkers=config.walkers,
                                                seed=config.seed * 1000 + job.run_index * 100 + job.index,
                                                tm_port=config.tm_port))


@dataclass
class _Randomizer:
    """Domain randomisation (``--domain-randomization``): a new camera jitter before every tick, a new
    appearance every ``appearance_period`` saved frames (relighting the town costs ~0.5 s), its own
    generator (the routes stay those of the seed), and the draw of each saved frame appended to
    ``randomization.jsonl`` (one JSON object per line: ``image`` plus every sampled number)."""

    world: object
    camera_bp: object
    rng: np.random.Generator
    cfg: object
    path: Path
    record: dict = field(default_factory=dict)
    advance: bool = True     # a frame was saved since the last draw: the appearance clock moves on

    @classmethod
    def create(cls, config: CollectConfig, job: Job, world) -> "_Randomizer | None":
        if not config.domain_randomization:
            return None
        from .episode import camera_blueprint
        from .randomize import DomainRandomizationConfig, check_domain_randomization

        cfg = DomainRandomizationConfig()
        check_domain_randomization(world, cfg)   # one line on a CARLA server
        return cls(world, camera_blueprint(world.get_blueprint_library(), config.camera()),
                   np.random.default_rng([config.seed, job.run_index, job.index, 0xD0]), cfg,
                   Path(config.out) / RANDOMIZATION_NAME)

    def draw(self) -> None:
        from .randomize import apply_domain_randomization
        self.record = apply_domain_randomization(self.world, self.camera_bp, self.rng, self.cfg, self.advance)
        self.advance = False

    def saved(self, image: str) -> None:
        self.advance = True
        line = (json.dumps({"image": image, **self.record}, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)   # one small O_APPEND write: workers' lines do not interleave
        finally:
            os.close(fd)

    def close(self) -> None:
        from .randomize import apply_domain_randomization
        apply_domain_randomization(self.world, self.camera_bp, self.rng, None)


def _turn_probability(job: Job, saved: Counter) -> float:
    """Prefer turns while curves lag behind: they are the scarce class in every town."""
    curve, straight = CLASSES
    need_c = job.quota[curve] - saved[curve]
    need_s = job.quota[straight] - saved[straight]
    if need_c <= 0:
        return 0.0
    return min(1.0, 2.0 * need_c / max(1, need_c + need_s))


def _random_starts(run: JobRun, attempts: int = 20):
    """Spawn candidates drawn from the job's generator one at a time, only as far as needed."""
    for _ in range(attempts):
        yield run.starts[int(run.rng.integers(len(run.starts)))]


@dataclass
class EpisodeState:
    """What changes from tick to tick in one collection episode.

    Distances are metres driven (``odometer``), so the spacing between saved frames does not depend
    on speed or tick rate.
    """

    episode_id: str
    weather: str
    path: RoutePath
    follower: RouteFollower
    perturbation: "Perturbation"
    choices: tuple | None
    stop: StopRule
    odometer: float = 0.0
    last_saved_at: float = -math.inf
    last_skipped_at: float = -math.inf
    previous_xy: tuple | None = None
    tick: int = 0
    camera_on: bool = True
    n_saved: int = 0
    state: object = None  # the follower's reading of the car on the last tick
    expert_driving: bool = False  # DAgger: the follower has taken the wheel from the learned driver
    driven: bool = False          # DAgger: this tick's control came from the learned driver

    def advance(self, loc) -> None:
        if self.previous_xy is not None:
            self.odometer += math.hypot(loc.x - self.previous_xy[0], loc.y - self.previous_xy[1])
        self.previous_xy = (loc.x, loc.y)

    def frame_due(self, min_spacing: float, ahead_m: float = 0.0, ticks_ahead: int = 0,
                  perturbing: bool | None = None) -> bool:
        """May the frame ``ticks_ahead`` ticks from now (``ahead_m`` further on) be saved, as far as warm-up,
        perturbation and spacing go? The one rule behind saving, skipping and listening to the camera."""
        perturbing = self.perturbation.active if perturbing is None else perturbing
        return not perturbing and self.tick + ticks_ahead > WARMUP_TICKS \
            and self.odometer - self.last_saved_at + ahead_m >= min_spacing


def _start_episode(run: JobRun, ego, episode_id: str, weather: str) -> EpisodeState | None:
    """Plan the route, store it, find its junction choices; None when the route is too short."""
    config = run.config
    route = run.planner.random_route(ego.vehicle.get_transform().location,
                                     config.episode_length + config.label.lookahead_m, run.rng,
                                     _turn_probability(run.job, run.saved))
    path = RoutePath.from_route(route)
    if path.length < config.label.lookahead_m + 5:
        return None
    run.writer.write_route(episode_id, {"town": run.job.town, "episode": episode_id,
                                        "columns": ["road_id", "section_id", "lane_id", "s", "x", "y", "yaw_deg"],
                                        # lane s unrounded: map.get_waypoint_xodr rejects s past the lane end
                                        "points": np.column_stack((path.ids, np.round(np.column_stack(
                                            (path.x, path.y, np.degrees(path.yaw))), 4))).tolist()})
    with run.timer("label"):
        choices = run.junctions.along(path) if run.junctions is not None else None
    follower = RouteFollower(ego.vehicle, config.follower, dt=config.delta_seconds)
    follower.set_route(path)
    stop = StopRule(end_margin_m=config.label.lookahead_m, max_route_deviation_m=OFF_ROUTE_M, stuck_speed_ms=0.5,
                    stuck_s=STUCK_SECONDS, warmup_ticks=WARMUP_TICKS)
    return EpisodeState(episode_id, weather, path, follower, Perturbation(config.recovery, config.delta_seconds, run.rng),
                        choices, stop)


def run_episode(run: JobRun, episode_id: str, weather: str) -> int:
    """One spawn + one route; returns the number of frames saved.

    Junction choices are found once per episode; a frame's route dependence is only computed for
    frames that would otherwise be saved, so it costs little.
    """
    config = run.config
    with spawn_ego(run.world, run.ego, _random_starts(run)) as ego:
        st = _start_episode(run, ego, episode_id, weather)
        if st is None:
            return 0
        with CarlaSyncMode(run.world, ego.camera, fixed_delta_seconds=config.delta_seconds) as sync:
            on_demand = config.camera_on_demand and run.driver is None  # a learned driver sees every frame
            if on_demand:  # warm-up frames are never saved
                sync.pause(ego.camera)
                st.camera_on = False
            while True:
                if run.randomizer is not None:
                    run.randomizer.draw()
                with run.timer("tick"):
                    frame, (image,) = sync.tick(timeout=max(2.0, config.timeout))
                if not _collect_tick(run, st, ego, frame, image):
                    break
                if on_demand:  # listen to the camera for the next frame only if it can be saved
                    with run.timer("control"):
                        want = _camera_wanted(run, st)
                    if want != st.camera_on:
                        (sync.resume if want else sync.pause)(ego.camera)
                        st.camera_on = want
    return st.n_saved


def _collect_tick(run: JobRun, st: EpisodeState, ego, frame: int, image) -> bool:
    """Control the car, label and maybe save this tick's frame; False when the episode is over."""
    config, timer = run.config, run.timer
    st.tick += 1
    run.result.ticks += 1
    with timer("control"):
        tf = ego.vehicle.get_transform()
        st.advance(tf.location)
        state = st.state = st.follower.read_state()
        control = st.follower.compute(state)  # the label
        applied = _driver_control(run, st, control, image, frame, state) if run.driver is not None else control
        perturbing = st.perturbation.apply(applied, allowed=st.tick > WARMUP_TICKS)
    with timer("label"):
        s0 = st.follower.progress
        evidence = label_at(st.path, s0, config.label)
        skip, flagged = None, False
        if evidence is not None and st.frame_due(config.min_spacing, perturbing=perturbing):
            skip, flagged = _skip_reason(run, st, s0, evidence)
            if skip is not None and st.odometer - st.last_skipped_at >= config.min_spacing:
                run.result.skipped[skip] += 1
                st.last_skipped_at = st.odometer
    if image is not None and evidence is not None and evidence.label is not None and skip is None \
            and st.frame_due(config.min_spacing, perturbing=perturbing) and run.quota_left(evidence.label) \
            and image.frame == frame:
        _save(run, st, image, evidence, tf, state, control, flagged)
        if run.done():
            return False
    ego.vehicle.apply_control(applied)
    return st.stop.check(config.delta_seconds, state.speed, st.follower.remaining(), st.follower.lateral_error) is None


def _driver_control(run: JobRun, st: EpisodeState, label, image, frame: int, state):
    """DAgger: the learned driver's steer with the follower's throttle/brake, unless the follower has the wheel
    (warm-up, no fresh image, or beyond ``TAKEOVER_M`` until back within ``RELEASE_M``)."""
    err = abs(st.follower.lateral_error)
    if st.expert_driving and err < RELEASE_M:
        st.expert_driving = False
    elif not st.expert_driving and err > TAKEOVER_M and st.tick > WARMUP_TICKS:
        st.expert_driving = True
        run.result.takeovers += 1
    st.driven = not st.expert_driving and st.tick > WARMUP_TICKS and image is not None and image.frame == frame
    if not st.driven:
        return carla.VehicleControl(throttle=label.throttle, steer=label.steer, brake=label.brake)
    bgra = np.frombuffer(image.raw_data, dtype=np.uint8).reshape(image.height, image.width, 4)
    steer = float(run.driver(bgra, state.speed * 3.6, _route_command(st)))
    steer = min(1.0, max(-1.0, steer)) if math.isfinite(steer) else label.steer
    return carla.VehicleControl(throttle=label.throttle, steer=steer, brake=label.brake)


def _route_command(st: EpisodeState) -> str:
    """The route's RoadOption at the car's position: what a frame records and a learned driver is told."""
    return RoadOption(st.path.command_at(st.follower.progress)).name


def _skip_reason(run: JobRun, st: EpisodeState, s0: float, evidence) -> tuple[str | None, bool]:
    """(why a due frame is not saved, whether it is saved flagged ``route_dependent``).

    ``ambiguous``: delta_psi in the gap between the thresholds. ``route_dependent``: another legal way
    on at a junction ahead would give the other class; ``--junction-policy skip`` drops the frame,
    ``flag`` saves it flagged (outside the class quotas). Computed only for frames whose class still
    needs frames: the rest are not saved anyway.
    """
    if evidence.label is None:
        return "ambiguous", False
    if st.choices and run.quota_left(evidence.label) and route_dependent(st.path, s0, run.config.label, st.choices):
        return (None, True) if run.config.junction_policy == "flag" else ("route_dependent", False)
    return None, False


def _camera_wanted(run: JobRun, st: EpisodeState) -> bool:
    """Will the NEXT frame be saved? (predicted one step ahead; a miss only delays a save by one tick)."""
    config = run.config
    step = max(0.0, st.state.speed) * config.delta_seconds
    if not st.frame_due(config.min_spacing, ahead_m=step * 0.98, ticks_ahead=1):
        return False
    s_next = st.follower.progress + step
    ev = label_at(st.path, s_next, config.label)
    if ev is None or ev.label is None or not run.quota_left(ev.label):
        return False
    return config.junction_policy != "skip" or not (st.choices and route_dependent(st.path, s_next, config.label,
                                                                                     st.choices))


def _save(run: JobRun, st: EpisodeState, image, evidence, tf, state, control, flagged: bool) -> None:
    """Encode and write one frame with its row; count it (flagged frames stay outside the quotas)."""
    writer, timer, label = run.writer, run.timer, evidence.label
    with timer("encode"):
        bgra = np.frombuffer(image.raw_data, dtype=np.uint8).reshape(image.height, image.width, 4)
        encoded = writer.encode(bgra)
    row = {
        "image": writer.image_path(label, st.episode_id, image.frame), "label": label,
        "town": run.job.town, "sim": run.result.sim, "weather": st.weather, "episode": st.episode_id,
        "frame": image.frame, "timestamp": f"{image.timestamp:.4f}", "x": f"{tf.location.x:.4f}",
        "y": f"{tf.location.y:.4f}", "z": f"{tf.location.z:.4f}", "yaw": f"{tf.rotation.yaw:.4f}",
        "speed": f"{state.speed * 3.6:.3f}", "steer": f"{control.steer:.5f}", "throttle": f"{control.throttle:.5f}",
        "brake": f"{control.brake:.5f}", "heading_change_deg": f"{evidence.heading_change_deg:.4f}",
        "max_curvature": f"{evidence.max_curvature:.6f}", "lookahead_m": f"{evidence.lookahead_m:g}",
        "command": _route_command(st),
        "recovery": "1" if st.perturbation.recovering or st.driven else "0",
        "route_dependent": "1" if flagged else "0",
    }
    claimed = run.guard is not None and not flagged
    if claimed and not run.guard.claim(label):
        run.saved[label] = run.job.quota[label]  # the authority says this class is full
        return
    try:
        with timer("write"), _signals_deferred():
            writer.write_frame(encoded, row)
    except BaseException:
        if claimed:
            run.guard.release(label)
        raise
    if run.randomizer is not None:
        run.randomizer.saved(row["image"])
    st.last_saved_at = st.odometer
    st.n_saved += 1
    if flagged:
        run.result.flagged[label] += 1
        return
    run.saved[label] += 1
    run.result.saved[label] += 1
    run.result.by_weather[st.weather] += 1
    run.on_saved(label)
    every = run.config.weather_every
    if every and len(run.config.weather) > 1 and st.n_saved % every == 0:
        st.weather = _next_weather(run)


def _next_weather(run: JobRun) -> str:
    """Set the next preset of the cycle on the world and return its name.

    Called at each episode start and, with ``--weather-every N``, after every N saved frames. One
    preset per episode tied weather to class: late in a town's quota only curves are still wanted,
    so the few episodes a preset got could all fall in that phase (HardRainNight in Town01/03/04
    of a 4000-frame, 22-preset collection: 96 frames, every one a curve), and a model learned
    "dark rain means curve" (37.8 % on held-out Town02 in that weather).
    """
    presets = run.config.weather
    name = presets[(run.weather_turn + run.job.index + run.job.run_index) % len(presets)]
    run.weather_turn += 1
    run.world.set_weather(getattr(carla.WeatherParameters, name))
    return name


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
        self.recovery_left = 0.0

    @property
    def active(self) -> bool:
        return self.left > 0

    @property
    def recovering(self) -> bool:
        """Within :data:`RECOVERY_S` after a perturbation ended: the car is coming back to the lane."""
        return not self.active and self.recovery_left > 0

    def apply(self, control, allowed: bool = True) -> bool:
        """Perturb ``control`` in place; True while a perturbation is under way on this tick."""
        if not self.active and self.rate > 0 and allowed and self.rng.random() < self.rate * self.dt:
            self.left = float(self.rng.uniform(0.4, 1.0))
            self.offset = float(self.rng.choice([-1, 1]) * self.rng.uniform(0.15, 0.35))
        if not self.active:
            self.recovery_left -= self.dt
            return False
        self.left -= self.dt
        if not self.active:
            self.recovery_left = RECOVERY_S + self.dt  # counted down from the next tick on
        control.steer = float(np.clip(control.steer + self.offset, -1.0, 1.0))
        return True


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


