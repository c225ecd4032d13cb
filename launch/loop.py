"""The closed loop: tick the world, classify the frame, let the gate pick the expert, drive, draw, record.

Used by ``launch.drive`` (one run, live window), ``launch.evaluate`` (many episodes, headless) and
``launch.bench`` (timing). Structure after CARLA's ``examples/synchronous_mode.py``: a synchronous
world (``carla_client.sync.CarlaSyncMode``), small helpers, and ``try/finally`` so that on any exit
(end of route, ``--frames``, ESC, Ctrl-C, an exception) the video is finalised, the metrics are
written, the world settings are restored and every actor we spawned is destroyed.

Per tick, in order (each a :class:`launch.timing.CycleTimer` section): ``tick`` (simulation step and
camera frame), ``infer`` (classifier), ``control`` (ground truth + gate + experts), then what a
person sees: ``overlay`` (the HUD, with a window), ``record`` (hand the frame to the recording
thread; waits only when its queue is full), ``display`` (window + keys). The recording thread draws
the HUD (headless) and encodes off the control path; its times are the stages ``bg_overlay`` and
``bg_encode``. The control of tick t always comes from tick t's frame: nothing is pipelined.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

import carla

from carla_client.cli import weather_presets
from carla_client.config import SimConfig, arg, parse_res
from carla_client.episode import EgoSpec, ensure_town, spawn_ego
from carla_client.episode import StopRule
from carla_client.labels import label_at
from carla_client.route import RoutePath
from carla_client.sync import CarlaSyncMode
from carla_embedded.threads import usable_cpus
from datasets.io_safety import write_json_atomic
from datasets.schema import Contract
from control.experts import Observation, create_expert
from control.gates import CURVE, STRAIGHT, create_gate, gate_names
from control.moe import MoEController, MoEStep
from control.traffic_rules import TRAFFIC_LIGHT_RULES, check_rule, hold, must_hold
from launch.display import Action, open_display
from launch.metrics import LEADERBOARD_1_0, DriveTrace, TickRecord, episode_metrics
from launch.overlay import HudState, Minimap, Overlay, bgra_to_bgr, image_to_array, route_to_xy
from launch.timing import CycleTimer
from launch.video import FrameWorker, VideoWriter, video_path

log = logging.getLogger(__name__)


def _backend_choices() -> list[str]:
    from perception.formats import BACKEND_NAMES
    return ["auto", *BACKEND_NAMES]


def _weather(name: str) -> str:
    presets = weather_presets()
    if name not in presets:
        raise ValueError(f"unknown weather preset {name!r}; valid: {', '.join(sorted(presets))}")
    return name


def parse_experts(text: str) -> tuple[tuple[str, str], ...]:
    """``curve=a.pt,straight=b.pt`` or ``monolithic=m.pt`` -> ((name, path), ...); one line on bad input."""
    if not text:
        return ()
    pairs = []
    for item in str(text).split(","):
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--experts {text!r}: expected NAME=PATH, e.g. curve=runs/curve/weights/best.pt")
        pairs.append((name.strip(), path.strip()))
    names = {n for n, _ in pairs}
    if names not in ({CURVE, STRAIGHT}, {"monolithic"}):
        raise ValueError(f"--experts {text!r}: give {CURVE}=PATH,{STRAIGHT}=PATH or monolithic=PATH")
    missing = [p for _, p in pairs if not Path(p).is_file()]
    if missing:
        raise ValueError(f"--experts: no such file {missing[0]!r}")
    return tuple(pairs)


@dataclass
class DriveConfig(SimConfig):
    """Everything one drive needs. Defaults give a 20 Hz drive on the embedded Town02.

    The simulator fields (sim, host, port, timeout, seed) come from :class:`SimConfig`. The camera and
    the ground-truth label settings come from the model's contract (``datasets.schema.Contract``,
    stored at training and export); ``res``/``fov`` left at None take them from there (CARLA's hood
    camera without a model). A ``res``/``fov`` that differs from the model's is refused unless
    ``camera_override`` is set, and then recorded in the metrics.

    Args:
        town: map name. model: classifier file (.onnx/.pt/.engine); required by gates ``hard``/``soft``.
        gate: initial gate (``G`` cycles). frames / duration: stop after N ticks / S simulated seconds
            (else at the end of the route, or on ESC). record: ``.mp4`` path or a directory.
        route_length_m: planned route length; with ``extend_route`` raised so ``frames``/``duration`` fit
            (``launch.evaluate`` turns that off: there the route is the task and the duration a time limit).
        expert_params: per expert, overrides of its FollowerParams (e.g. ``{"straight": {"cruise_speed_kmh": 35}}``).
        realtime: hold the loop to ``fps`` wall-clock (only matters with a window; default when displaying).
        max_route_deviation_m: end the episode when farther than this from the route (Leaderboard: 30 m).
        blocked_s: end the episode after this long below 0.5 km/h (simulated seconds).
    """
    res: tuple[int, int] | None = field(default=None, metadata=arg(
        "camera resolution (default: the model's camera, else 800x600)", parse=parse_res, metavar="WxH"))
    town: str = field(default="Town02", metadata=arg("map to load"))
    model: str | None = field(default=None, metadata=arg(
        "classifier: .onnx, .pt or .engine (needed by gates hard/soft)"))
    backend: str = field(default="auto", metadata=arg("inference backend", choices=_backend_choices))
    gate: str = field(default="hard", metadata=arg("which gate decides the expert", choices=gate_names))
    weather: str = field(default="ClearNoon", metadata=arg("CARLA weather preset (ClearNoon, WetNoon, HardRainNight, ...)",
                                                           parse=_weather, metavar="PRESET"))
    frames: int | None = field(default=None, metadata=arg("stop after N ticks (default: end of route)", parse=int))
    duration: float | None = field(default=None, metadata=arg("stop after S simulated seconds", parse=float))
    record: str | None = field(default=None, metadata=arg(
        "record the overlaid view; a directory gets <town>_<gate>_<date>.mp4", metavar="OUT.mp4|DIR"))
    display: bool = field(default=True, metadata=arg("headless: no window (still records)", negative="--no-display"))
    metrics: str | None = field(default=None, metadata=arg("write the drive's metrics here", metavar="OUT.json"))
    fov: float | None = field(default=None, metadata=arg(
        "camera horizontal field of view, deg (default: the model's camera, else 90)", parse=float))
    camera_override: bool = field(default=False, metadata=arg(
        "drive with --res/--fov although the model was trained on another camera (recorded in the metrics)"))
    fps: float = field(default=20.0, metadata=arg("simulation rate, Hz (fixed_delta_seconds = 1/fps)"))
    route_length_m: float = field(default=600.0, metadata=arg("planned route length, m", flag="--route-length"))
    expert_params: dict = field(default_factory=dict, metadata=arg("", cli=False))
    realtime: bool | None = field(default=None, metadata=arg(
        "hold the loop to --fps wall-clock (default: on with a window, off headless)", boolean=True))
    hud: bool = field(default=True, metadata=arg("start with the HUD hidden", negative="--no-hud"))
    minimap: bool = True
    warmup: int = field(default=10, metadata=arg("classifier warm-up inferences before the first tick"))
    traffic: int = field(default=0, metadata=arg("NPC vehicles driven by the Traffic Manager"))
    walkers: int = field(default=0, metadata=arg("NPC walkers on the sidewalks"))
    tm_port: int = field(default=8000, metadata=arg("Traffic Manager port"))
    experts: tuple[tuple[str, str], ...] = field(default=(), metadata=arg(
        "learned camera experts in place of the route followers: curve=CKPT,straight=CKPT (the gate picks "
        "between them) or monolithic=CKPT (one policy in both slots); training.train_policy checkpoints",
        parse=parse_experts, metavar="NAME=PATH,..."))
    expert_longitudinal: str = field(default="cruise", metadata=arg(
        "learned experts: 'cruise' holds --cruise-kmh and takes only their steering, 'learned' their throttle/brake too",
        choices=("cruise", "learned")))
    cruise_kmh: float = field(default=20.0, metadata=arg("learned experts' cruise speed, km/h"))
    traffic_lights: str = field(default="stop", metadata=arg(
        "'stop': brake while the car is in the trigger zone of a red light (vehicle.is_at_traffic_light(), "
        "CARLA's BasicAgent rule), the same for every gate and expert, so a comparison measures the driving and "
        "not when each arrived at a light; 'ignore': drive through. Runs are counted either way",
        choices=TRAFFIC_LIGHT_RULES))
    max_route_deviation_m: float = 30.0
    blocked_s: float = 30.0
    extend_route: bool = True
    vehicle: str = "vehicle.*"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gate not in gate_names():
            raise ValueError(f"unknown gate {self.gate!r}; valid: {', '.join(gate_names())}")
        if create_gate(self.gate).needs_model and not self.model:
            raise ValueError(f"gate {self.gate!r} needs --model; gates without a model: "
                             f"{', '.join(g for g in gate_names() if not create_gate(g).needs_model)}")
        if self.backend not in _backend_choices():
            raise ValueError(f"unknown backend {self.backend!r}; valid: {', '.join(_backend_choices())}")
        if self.frames is not None and self.duration is not None:
            raise ValueError("give --frames or --duration, not both")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {self.frames}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"--duration must be > 0 s, got {self.duration}")
        if not 1.0 <= self.fps <= 1000.0:
            raise ValueError(f"fps must be in [1, 1000], got {self.fps}")
        _weather(self.weather)
        if self.model and not Path(self.model).exists():
            raise ValueError(f"--model {self.model!r}: no such file")
        check_rule(self.traffic_lights)
        if self.traffic < 0 or self.walkers < 0:
            raise ValueError(f"--traffic and --walkers must be >= 0, got {self.traffic} and {self.walkers}")
        if self.fov is not None and not 0 < self.fov < 180:
            raise ValueError(f"--fov must be in (0, 180) deg, got {self.fov:g}")
        if not isinstance(self.experts, str):  # set by code: checked by the flag's own parser
            self.experts = ",".join(f"{k}={v}" for k, v in self.experts)
        self.experts = parse_experts(self.experts)
        bad = set(self.expert_params) - {CURVE, STRAIGHT}
        if bad:
            raise ValueError(f"expert_params for unknown expert(s) {sorted(bad)}; valid: {CURVE}, {STRAIGHT}")

    @property
    def dt(self) -> float:
        return 1.0 / self.fps

    @property
    def max_ticks(self) -> int | None:
        if self.frames is not None:
            return int(self.frames)
        if self.duration is not None:
            return int(math.ceil(self.duration * self.fps - 1e-9))
        return None


@contextlib.contextmanager
def learned_experts(cfg: DriveConfig):
    """Bind the ``curve``/``straight`` expert slots to the camera policies of ``cfg.experts`` for one drive."""
    if not cfg.experts:
        yield
        return
    from control.vision_experts import expert_slots, register_vision_experts
    from perception.policy_runtime import PolicyRuntime
    mapping = dict(cfg.experts)
    runtime = PolicyRuntime.load(mapping, "onnxruntime")
    prefix = "vision_drive_"
    register_vision_experts(runtime, prefix=prefix, longitudinal=cfg.expert_longitudinal, cruise_kmh=cfg.cruise_kmh)
    binding = ({CURVE: prefix + "monolithic", STRAIGHT: prefix + "monolithic"} if "monolithic" in mapping
               else {CURVE: prefix + CURVE, STRAIGHT: prefix + STRAIGHT})
    with expert_slots(binding):
        yield


def resolve_contract(cfg: DriveConfig, model_contract: Contract | None) -> tuple[Contract, list[str]]:
    """The camera and label settings of a drive, and the fields the user overrode against the model.

    Without a model contract: CARLA's hood camera with ``cfg.res``/``cfg.fov`` applied. With one: the
    model's, unless ``cfg.res``/``cfg.fov`` differ, which is refused (one line naming both values and
    ``--camera-override``) or, with the override, used and listed.
    """
    base = model_contract or Contract()
    trained = base.camera
    wanted = replace(trained, **({"width": cfg.res[0], "height": cfg.res[1]} if cfg.res else {}),
                     **({"fov": float(cfg.fov)} if cfg.fov is not None else {}))
    changed = Contract(wanted, base.label).differences(base)
    if changed and model_contract is not None and not cfg.camera_override:
        raise ValueError(f"the model was trained with camera {trained.width}x{trained.height} fov {trained.fov:g}, this drive "
                         f"asks for {wanted.width}x{wanted.height} fov {wanted.fov:g} ({', '.join(changed)}); "
                         "drop --res/--fov to use the model's camera, or pass --camera-override")
    return Contract(wanted, base.label), (changed if model_contract is not None else [])


@dataclass
class DriveResult:
    """What a drive produced. ``metrics`` is what ``--metrics`` writes."""
    metrics: dict
    records: list[TickRecord]
    videos: list[Path]
    metrics_path: Path | None
    interrupted: bool
    end_reason: str

    @property
    def trace(self) -> DriveTrace:
        return DriveTrace.from_records(self.records)


@dataclass
class WorldContext:
    """A connected world with its map, planner and (lazily) the town raster: shared by the episodes of
    one town in ``launch.evaluate`` so the map is loaded and rasterised once."""
    client: object
    world: object
    map: object
    planner: object
    town: str
    _raster: object = None

    def raster(self):
        """``carla_embedded.raster.TownRaster`` of the map (0.5 m/px), built on first use; None if unavailable."""
        if self._raster is None:
            try:
                from carla_embedded.raster import TownRaster
                self._raster = TownRaster.from_map(self.map, 0.5)
            except Exception as e:  # minimap is a nicety: never fail a drive for it
                log.warning("no minimap: cannot rasterise %s (%s)", self.town, e)
                self._raster = False
        return self._raster or None


def open_world(cfg: DriveConfig) -> WorldContext:
    """Connect (``carla_client.connect``), load ``cfg.town`` unless it is already loaded, build the planner."""
    from carla_client import connect
    from carla_client.planner import GlobalRoutePlanner
    client = connect(cfg.sim, host=cfg.host, port=cfg.port, timeout=cfg.timeout)
    world, _ = ensure_town(client, cfg.town)
    wmap = world.get_map()
    return WorldContext(client, world, wmap, GlobalRoutePlanner(wmap, 2.0), cfg.town)


def load_classifier(model: str | None, backend: str = "auto", warmup: int = 10, threads: int | None = None):
    """The perception classifier for ``model`` (None without a model), warmed up before the first tick.

    ``threads``: intra-op threads of an ONNX Runtime classifier (None: its own choice; other backends ignore it).
    """
    if not model:
        return None
    from perception.classifier import CurveClassifier, resolve_backend
    options = {}
    if threads is not None and resolve_backend(backend, Path(model)) == "onnxruntime":
        options["threads"] = threads
    return CurveClassifier.load(model, backend=backend, warmup=warmup, **options)


def plan_route(ctx: WorldContext, seed: int, length_m: float):
    """A reproducible random route of at least ``length_m`` from a spawn point chosen by ``seed``.

    The same seed gives the same route for every gate, so gates are compared on identical drives.
    """
    rng = np.random.default_rng(seed)
    spawns = ctx.map.get_spawn_points()
    if spawns:
        start = spawns[int(rng.integers(len(spawns)))].location
    else:
        wps = ctx.planner.spawn_waypoints()
        start = wps[int(rng.integers(len(wps)))].transform.location
    return ctx.planner.random_route(start, length_m, rng)


def opencv_threads_while_recording(threads: int) -> int:
    """OpenCV threads while a video records, given ``threads`` otherwise: one fewer than the CPUs this
    process may use when OpenCV would take them all (the recording thread needs a core), else unchanged."""
    cpus = usable_cpus()
    return cpus - 1 if cpus > 1 and threads >= cpus else threads


class _Recorder:
    """Owns the current video (R toggles it); one frame per tick while on.

    Frames are drawn (headless: the HUD too) and encoded on a :class:`launch.video.FrameWorker`
    thread, in tick order, so the encoder overlaps the next tick instead of delaying the control;
    :meth:`shutdown` waits for every queued frame, so an exception or Ctrl-C loses none.

    While it records, OpenCV's pool leaves that thread a core: where OpenCV has as many threads as the
    process has CPUs (the embedded renderer's default on 2 cores), it gets one fewer until the video ends.
    Measured on the 2-core dev machine (session 9, alternating blocks): an 800x600 loop with video ran
    0.95-0.97x as fast with the renderer on 2 threads as on 1, and 1.09-1.13x as fast without video.
    """

    def __init__(self, cfg: DriveConfig, gate_name: str) -> None:
        self.cfg = cfg
        self.gate_name = gate_name
        self.writer: VideoWriter | None = None
        self.worker: FrameWorker | None = None
        self.videos: list[Path] = []
        self.wanted = cfg.record is not None
        self._cv_threads: int | None = None        # OpenCV's count before recording lowered it

    def _give_encoder_a_core(self) -> None:
        import cv2
        n = cv2.getNumThreads()
        fewer = opencv_threads_while_recording(n)
        if self._cv_threads is None and fewer != n:
            self._cv_threads = n
            cv2.setNumThreads(fewer)

    def _restore_cv_threads(self) -> None:
        if self._cv_threads is not None:
            import cv2
            cv2.setNumThreads(self._cv_threads)
            self._cv_threads = None

    def toggle(self, gate_name: str) -> None:
        self.gate_name = gate_name
        if self.writer is not None:
            self.close()
            self.wanted = False
        else:
            self.wanted = True

    def write(self, frame: np.ndarray, draw: Callable[[np.ndarray], object] | None = None) -> None:
        """Queue ``frame`` (BGR, not touched by the caller afterwards): ``draw(frame)``, then encode."""
        if not self.wanted:
            return
        if self.writer is None:
            target = self.cfg.record or "runs/drive"
            path = video_path(target, self.cfg.town, self.gate_name).absolute()
            if path in self.videos or (path.exists() and self.videos):  # second recording in the same second
                path = path.with_name(f"{path.stem}_{len(self.videos)}{path.suffix}")
            self.writer = VideoWriter(path, self.cfg.fps, (frame.shape[1], frame.shape[0]))
            self.videos.append(path)
            self._give_encoder_a_core()
        if self.worker is None:
            self.worker = FrameWorker(maxsize=RECORD_QUEUE_JOBS)
        if draw is not None:
            self.worker.submit(draw, frame, stage="bg_overlay")
        self.worker.submit(self.writer.write, frame, stage="bg_encode")

    def close(self) -> None:
        """End the current video; the worker finalises it after the frames queued before (even after an error)."""
        try:
            if self.writer is not None:
                self.worker.submit(self.writer.close, always=True)
                self.writer = None
        finally:
            self._restore_cv_threads()

    def shutdown(self, timer: CycleTimer | None = None) -> None:
        """Close the video and wait until it is written; the worker's timings go to ``timer``. Raises its error."""
        try:
            self.close()
        finally:
            worker, self.worker = self.worker, None
            if worker is not None:
                try:
                    worker.close()
                finally:
                    for stage, seconds in worker.timings if timer is not None else ():
                        timer.add(stage, seconds)


RECORD_QUEUE_JOBS = 8
"""Recording jobs that may wait (two per frame headless: HUD, encode). Beyond that the loop waits:
no frame is dropped; a SIGKILL loses at most these few frames on top of the video's last fragment."""


def _predict(classifier, frame_bgra: np.ndarray):
    """(label, p_curve) or (None, None) when inference fails (logged, the MoE falls back)."""
    try:
        result = classifier.predict(frame_bgra)
        p = float(result.p_curve)
        if not math.isfinite(p):
            return None, p
        return result.label, p
    except Exception as e:  # noqa: BLE001 - a failed inference must not stop the car, the MoE slows it down
        log.warning("inference failed: %s: %s", e.__class__.__name__, e)
        return None, None


TickHook = Callable[[int, TickRecord], None]


def model_contract(cfg: DriveConfig, classifier=None) -> Contract | None:
    """The camera/label contract the model was trained with (None for a model without one, or no model)."""
    contract = getattr(classifier, "contract", None)
    if contract is None and cfg.model:
        from perception.meta import read_contract
        contract = read_contract(cfg.model)
    for name, path in cfg.experts:  # learned experts see the same camera frame as the classifier
        from training.policy import policy_contract
        theirs = policy_contract(path)
        if theirs is None:
            continue
        if contract is None:
            contract = theirs
            continue
        changed = Contract(theirs.camera, contract.label).differences(contract)
        if changed and not cfg.camera_override:
            raise ValueError(f"--experts {name}: trained with another camera than the classifier ({', '.join(changed)}); "
                             "use models trained on one dataset, or pass --camera-override")
    return contract


class _Drive:
    """One episode's explicit state: what was built at spawn and what changes from tick to tick.

    :meth:`step` is one tick (simulate, infer, ground truth, gate, control) and returns its record;
    :meth:`end_reason` decides whether the episode is over.
    """

    def __init__(self, ctx: WorldContext, cfg: DriveConfig, ego, route, path, contract: Contract, predict,
                 timer: CycleTimer) -> None:
        self.ctx, self.cfg, self.ego, self.path, self.contract = ctx, cfg, ego, path, contract
        self.predict, self.timer = predict, timer
        self.invasions: list[int] = []
        self.records: list[TickRecord] = []
        self.monitor = None  # carla_client.infractions.InfractionMonitor
        ego.sensors["sensor.other.lane_invasion"].listen(lambda event: self.invasions.append(event.frame))
        experts = {name: create_expert(name, route, vehicle=ego.vehicle, dt=cfg.dt, **cfg.expert_params.get(name, {}))
                   for name in (STRAIGHT, CURVE)}
        self.moe = MoEController(experts, create_gate(cfg.gate))
        self.stop_at_red = check_rule(cfg.traffic_lights) == "stop"
        self.hint = 0
        self.stop = StopRule(end_margin_m=2.0, max_route_deviation_m=cfg.max_route_deviation_m,
                             stuck_speed_ms=0.5 / 3.6, stuck_s=cfg.blocked_s, max_ticks=cfg.max_ticks)

    def step(self, sync) -> tuple[TickRecord, MoEStep, np.ndarray]:
        """One tick: (record, the MoE's decision, the raw BGRA frame)."""
        cfg, timer, vehicle = self.cfg, self.timer, self.ego.vehicle
        timer.tick()
        with timer.section("tick"):
            frame_id, (image,) = sync.tick(timeout=max(2.0, cfg.timeout))
            raw = image_to_array(image)
            tf = vehicle.get_transform()
            vel = vehicle.get_velocity()
        t = image.timestamp
        label, p_curve, infer_ms = None, None, None
        if self.predict is not None:
            t0 = time.perf_counter()
            with timer.section("infer"):
                label, p_curve = self.predict(raw)
            infer_ms = (time.perf_counter() - t0) * 1000.0
        with timer.section("control"):
            x, y = tf.location.x, tf.location.y
            s0, self.hint, dist = self.path.project(x, y, self.hint)
            evidence = label_at(self.path, s0, self.contract.label)
            truth = evidence.label if evidence is not None else None
            obs = Observation(tf, vel, timestamp=t, frame=frame_id, image=raw, command=self.path.command_at(s0))
            step: MoEStep = self.moe.run_step(obs, p_curve, truth)
            held = must_hold(vehicle, self.stop_at_red)
            control = hold(step.control) if held else step.control
            vehicle.apply_control(control)
            if self.monitor is not None:
                self.monitor.update()
            on_road = self.ctx.map.get_waypoint(tf.location, project_to_road=False,
                                                lane_type=carla.LaneType.Driving) is not None
        n_inv = sum(1 for f in self.invasions if f <= frame_id)
        del self.invasions[:n_inv]
        rec = TickRecord(
            frame=frame_id, t=t, x=x, y=y, yaw=tf.rotation.yaw, speed_kmh=obs.speed_kmh,
            steer=control.steer, throttle=control.throttle, brake=control.brake,
            progress_m=s0, route_dist_m=dist, on_road=on_road, lane_invasions=n_inv, truth=truth,
            pred=label, p_curve=p_curve, expert=step.in_charge, w_curve=step.decision.weights.get(CURVE, 0.0),
            fallback=step.fallback, gate=self.moe.gate.name, infer_ms=infer_ms, red_light_hold=held)
        return rec, step, raw

    def end_reason(self, rec: TickRecord) -> str | None:
        """Leaderboard-like end conditions after this tick (None: drive on)."""
        reason = self.stop.check(self.cfg.dt, rec.speed_kmh / 3.6, self.path.length - rec.progress_m, rec.route_dist_m,
                                 waiting=rec.red_light_hold)
        if self.moe.done():
            return "route_completed"
        if reason == "max_ticks":
            return "frames" if self.cfg.frames is not None else "duration"
        return reason


class _View:
    """The window, the HUD and the video: what a person sees of the drive, and the keys they press."""

    def __init__(self, ctx: WorldContext, cfg: DriveConfig, route, camera, gate_order: list[str],
                 crop_rows: tuple[float, float] | None = None) -> None:
        self.cfg, self.gate_order = cfg, gate_order
        self.minimap = None
        if cfg.minimap and cfg.hud:
            raster = ctx.raster()
            if raster is not None:
                self.minimap = Minimap(raster.image, raster.world_to_pixel, route_to_xy(route))
        self.overlay = Overlay(camera.res, self.minimap, crop_rows)
        self.recorder = _Recorder(cfg, cfg.gate)
        self.display = open_display(camera.res, cfg.display, title=f"carla-drive {cfg.town}")
        self.realtime = cfg.realtime if cfg.realtime is not None else self.display is not None
        self.show_hud, self.paused, self.last_frame = cfg.hud, False, None
        self.monitor = None  # carla_client.infractions.InfractionMonitor: its counts go on the HUD

    def poll(self, moe: MoEController, timer: CycleTimer) -> str | None:
        """Handle the keys: ``"quit"``, ``"paused"`` (do not tick; the window stays alive) or None."""
        if self.display is None:
            return None
        with timer.section("display"):
            actions = self.display.poll()
        if Action.QUIT in actions:
            return "quit"
        for a in actions:
            if a is Action.PAUSE:
                self.paused = not self.paused
            elif a is Action.TOGGLE_HUD:
                self.show_hud = not self.show_hud
            elif a is Action.TOGGLE_RECORD:
                self.recorder.toggle(moe.gate.name)
            elif a is Action.CYCLE_GATE:
                order = self.gate_order
                nxt = order[(order.index(moe.gate.name) + 1) % len(order)] if moe.gate.name in order else order[0]
                moe.set_gate(create_gate(nxt))
                log.info("gate -> %s", nxt)
        if self.paused:
            if self.last_frame is not None:
                self.display.show(self.last_frame)
            time.sleep(0.05)
            return "paused"
        return None

    def draw(self, rec: TickRecord, step: MoEStep, raw: np.ndarray, timer: CycleTimer) -> None:
        """Overlay the HUD on the frame, record it and show it (only when someone looks).

        Headless, the HUD is drawn on the recording thread too: the loop only copies the frame
        (the simulator may reuse its buffer) and snapshots the HUD's numbers. With a window the
        HUD is drawn here, for the window, and only the encoding is left to the recording thread.
        """
        if not (self.recorder.wanted or self.display is not None):
            return
        if self.display is None:
            with timer.section("record"):
                hud = self._hud_inputs(rec, step, timer)
                self.recorder.write(bgra_to_bgr(raw), lambda bgr: self._draw_hud(bgr, *hud))
            return
        with timer.section("overlay"):
            bgr = bgra_to_bgr(raw)
            self._draw_hud(bgr, *self._hud_inputs(rec, step, timer))
        if self.recorder.wanted:
            with timer.section("record"):
                self.recorder.write(bgr)
        with timer.section("display"):
            self.display.show(bgr)
        self.last_frame = bgr

    def _hud_inputs(self, rec: TickRecord, step: MoEStep, timer: CycleTimer) -> tuple:
        """What the HUD of this tick needs, frozen now (the timer's windows are copied, not yet reduced)."""
        recent = {name: tuple(timer.stages[name].recent) if name in timer.stages else () for name in ("tick", "infer")}
        m = self.monitor
        infractions = (m.counts(), m.penalty()) if m is not None else ({}, 1.0)
        return (rec, step, recent["tick"], recent["infer"], tuple(timer.cycles.recent), self.recorder.wanted,
                self.paused, self.show_hud, infractions)

    def _draw_hud(self, bgr: np.ndarray, rec: TickRecord, step: MoEStep, tick_s: tuple, infer_s: tuple,
                  cycle_s: tuple, recording: bool, paused: bool, show_hud: bool,
                  infractions: tuple = ({}, 1.0)) -> None:
        cfg = self.cfg
        if self.minimap is not None:
            self.minimap.mark(rec.x, rec.y, _expert_color(step.in_charge))
        tick_p50 = _percentiles_ms(tick_s)[0]
        infer_p50, infer_p99 = _percentiles_ms(infer_s)
        self.overlay.draw(bgr, HudState(
            pred_label=rec.pred, p_curve=rec.p_curve, truth=rec.truth, gate=rec.gate,
            weights=step.decision.weights, in_charge=step.in_charge, fallback=step.fallback,
            speed_kmh=rec.speed_kmh, steer=rec.steer, throttle=rec.throttle, brake=rec.brake,
            sim_fps=1000.0 / tick_p50 if tick_p50 > 0 else float("nan"),
            client_fps=1.0 / max(float(np.mean(cycle_s)), 1e-9) if cycle_s else float("nan"),
            infer_p50_ms=infer_p50, infer_p99_ms=infer_p99, town=cfg.town, weather=cfg.weather,
            sim_time=rec.t, x=rec.x, y=rec.y, yaw=rec.yaw, recording=recording, paused=paused,
            infractions=infractions[0], penalty=infractions[1], red_light_hold=rec.red_light_hold), show_hud=show_hud)

    def close(self, timer: CycleTimer | None = None) -> None:
        """Finish the recording (waits for every queued frame) and close the window, even if that fails."""
        try:
            self.recorder.shutdown(timer)
        finally:
            if self.display is not None:
                self.display.close()


def _percentiles_ms(seconds: tuple) -> tuple[float, float]:
    """(p50, p99) in ms of durations in s; NaN for none (as :meth:`CycleTimer.rolling`)."""
    if not seconds:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(seconds, dtype=np.float64) * 1000.0, (50, 99))
    return float(p50), float(p99)


def _ticks(drive: _Drive, view: _View, on_tick: TickHook | None) -> str:
    """Tick until an end condition; returns the end reason."""
    cfg = drive.cfg
    with CarlaSyncMode(drive.ctx.world, drive.ego.camera, fixed_delta_seconds=cfg.dt) as sync:
        tick_i = 0
        while True:
            key = view.poll(drive.moe, drive.timer)
            if key == "quit":
                return "quit"
            if key == "paused":
                continue
            rec, step, raw = drive.step(sync)
            drive.records.append(rec)
            view.draw(rec, step, raw, drive.timer)
            tick_i += 1
            if on_tick is not None:
                on_tick(tick_i, rec)
            reason = drive.end_reason(rec)
            if reason is not None:
                return reason
            if view.realtime:
                drive.timer.wait()


def _traffic(ctx: WorldContext, cfg: DriveConfig, ego_start):
    """NPCs through the Traffic Manager for this episode (none by default), kept clear of the ego's start."""
    if not (cfg.traffic or cfg.walkers):
        return contextlib.nullcontext()
    from carla_client.traffic import Traffic, TrafficConfig
    return Traffic(ctx.client, ctx.world, TrafficConfig(vehicles=cfg.traffic, walkers=cfg.walkers, seed=cfg.seed,
                                                        tm_port=cfg.tm_port), avoid=[ego_start])


def _infractions(ctx: WorldContext, cfg: DriveConfig, vehicle):
    """Collisions (where the simulator has the sensor) and red-light runs, Leaderboard penalties."""
    from carla_client.infractions import COLLISION_BLUEPRINT, InfractionMonitor
    has_sensor = bool(ctx.world.get_blueprint_library().filter(COLLISION_BLUEPRINT))
    if not has_sensor:
        log.warning("no %s blueprint: collisions are not counted (red lights are)", COLLISION_BLUEPRINT)
    return InfractionMonitor(ctx.world, vehicle, collisions=has_sensor)


def _add_infractions(metrics: dict, monitor) -> None:
    """Infraction counts into the metrics; the driving score takes their Leaderboard penalties."""
    if monitor is None:
        return
    counts = monitor.counts()
    metrics["infractions"] = counts
    metrics["collisions"] = sum(v for k, v in counts.items() if k.startswith("collision"))
    metrics["red_lights"] = counts.get("red_light", 0)
    metrics["infraction_penalty"] = monitor.penalty()
    metrics["driving_score"] = metrics["driving_score"] * monitor.penalty()


def _route_for(ctx: WorldContext, cfg: DriveConfig):
    """The seeded route, long enough for the requested frames/duration when ``extend_route``."""
    length = cfg.route_length_m
    if cfg.max_ticks is not None and cfg.extend_route:  # the route must not end before the requested frames
        speed_max = max([30.0] + [p.get("cruise_speed_kmh", 40.0) for p in cfg.expert_params.values()] + [40.0])
        length = max(length, cfg.max_ticks * cfg.dt * speed_max / 3.6 * 1.2 + 50.0)
    route = plan_route(ctx, cfg.seed, length)
    return route, RoutePath.from_route(route)


def run_episode(ctx: WorldContext, cfg: DriveConfig, classifier=None, on_tick: TickHook | None = None,
                predict: Callable | None = None) -> DriveResult:
    """Drive one episode in an open world. See the module docstring for the per-tick stages.

    Args:
        ctx: from :func:`open_world`.
        cfg: the drive.
        classifier: from :func:`load_classifier`, or None (gates ``oracle``/``curve``/``straight``).
        on_tick: called after every tick with (tick index, record); may raise (e.g. KeyboardInterrupt)
            to test the clean shutdown.
        predict: replaces the classifier call, ``frame_bgra -> (label, p_curve)`` (benchmarks, fault injection).

    Raises:
        ValueError: a gate that needs a model without one; a camera that differs from the model's
            without ``camera_override``.
    """
    if create_gate(cfg.gate).needs_model and classifier is None and predict is None:
        raise ValueError(f"gate {cfg.gate!r} needs a classifier (--model)")
    contract, overridden = resolve_contract(cfg, model_contract(cfg, classifier))
    route, path = _route_for(ctx, cfg)
    ctx.world.set_weather(getattr(carla.WeatherParameters, cfg.weather))
    # Every episode starts the lights' cycle from the same state: the same route then gives the same drive
    # whatever ran before it (evaluate's gate order, a study's shards), lights obeyed or not.
    ctx.world.reset_all_traffic_lights()
    if predict is None and classifier is not None:
        predict = lambda f: _predict(classifier, f)  # noqa: E731
    gate_order = [g for g in gate_names() if predict is not None or not create_gate(g).needs_model]
    timer = CycleTimer(cfg.dt)
    drive, view = None, None
    interrupted, end_reason = False, "running"
    start = route[0][0].transform
    spec = EgoSpec(cfg.vehicle, contract.camera, ("sensor.other.lane_invasion",))
    monitor = None
    try:
        with spawn_ego(ctx.world, spec, [carla.Transform(start.location, carla.Rotation(yaw=start.rotation.yaw))]) as ego, \
                _traffic(ctx, cfg, start.location), _infractions(ctx, cfg, ego.vehicle) as monitor:
            drive = _Drive(ctx, cfg, ego, route, path, contract, predict, timer)
            drive.monitor = monitor
            view = _View(ctx, cfg, route, contract.camera, gate_order,
                         getattr(getattr(classifier, "meta", None), "crop_rows", None))
            view.monitor = monitor
            end_reason = _ticks(drive, view, on_tick)
    except KeyboardInterrupt:
        interrupted, end_reason = True, "interrupted"
        log.info("interrupted: finalising video and metrics")
    except BaseException as e:
        end_reason = f"error: {e.__class__.__name__}: {e}"
        raise
    finally:
        view_error = None
        if view is not None:
            try:
                view.close(timer)
            except Exception as e:  # noqa: BLE001 - e.g. the disk filled while encoding: metrics first, then raise
                if end_reason.startswith("error"):   # already failing: keep that error, log this one
                    log.error("closing the view failed too: %s: %s", e.__class__.__name__, e)
                else:
                    view_error, end_reason = e, f"error: {e.__class__.__name__}: {e}"
        records = drive.records if drive is not None else []
        videos = view.recorder.videos if view is not None else []
        metrics = _drive_metrics(cfg, records, path.length, timer, videos, end_reason)
        metrics.update({"camera": contract.camera.to_json(), "label": contract.label.to_json(),
                        "camera_override": overridden, "traffic": {"vehicles": cfg.traffic, "walkers": cfg.walkers}})
        _add_infractions(metrics, monitor)
        metrics_path = Path(cfg.metrics) if cfg.metrics else None
        if metrics_path is not None:  # strict JSON (NaN -> null), atomic: also on SIGTERM / Ctrl-C
            write_json_atomic(metrics_path, json.loads(json.dumps(metrics, default=_json_default)))
        if view_error is not None:
            raise view_error
    return DriveResult(metrics=metrics, records=records, videos=videos, metrics_path=metrics_path,
                       interrupted=interrupted, end_reason=end_reason)


def _expert_color(name: str) -> tuple[int, int, int]:
    from launch.overlay import COLORS
    return COLORS.get(name, COLORS["dim"])


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _drive_metrics(cfg: DriveConfig, records: list[TickRecord], route_length: float, timer: CycleTimer,
                   videos: list[Path], end_reason: str) -> dict:
    m = episode_metrics(records, route_length, cfg.dt, LEADERBOARD_1_0)
    summary = timer.summary()
    m.update({
        "town": cfg.town, "gate": cfg.gate, "weather": cfg.weather, "seed": cfg.seed, "model": cfg.model,
        "end_reason": end_reason, "loop_fps": summary["loop_fps"], "stages": summary["stages"],
        "videos": [str(v) for v in videos], "dt": cfg.dt,
        "finished_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "config": {k: v for k, v in asdict(cfg).items()},
    })
    return m


def run_drive(cfg: DriveConfig, on_tick: TickHook | None = None) -> DriveResult:
    """Connect, load the classifier (warmed up), drive one episode, clean up. What ``launch.drive`` runs."""
    classifier = load_classifier(cfg.model, cfg.backend, cfg.warmup)
    ctx = open_world(cfg)
    with learned_experts(cfg):
        return run_episode(ctx, cfg, classifier, on_tick=on_tick)
