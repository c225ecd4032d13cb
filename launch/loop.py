"""The closed loop: tick the world, classify the frame, let the gate pick the expert, drive, draw, record.

Used by ``launch.drive`` (one run, live window), ``launch.evaluate`` (many episodes, headless) and
``launch.bench`` (timing). Structure after CARLA's ``examples/synchronous_mode.py``: a synchronous
world (``carla_client.sync.CarlaSyncMode``), small helpers, and ``try/finally`` so that on any exit
(end of route, ``--frames``, ESC, Ctrl-C, an exception) the video is finalised, the metrics are
written, the world settings are restored and every actor we spawned is destroyed.

Per tick, in order (each a :class:`launch.timing.CycleTimer` section): ``tick`` (simulation step and
camera frame), ``infer`` (classifier), ``control`` (ground truth + gate + experts), ``overlay``,
``encode`` (video), ``display`` (window + keys).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import carla

from carla_client.cli import parse_res, weather_presets
from carla_client.collect import camera_mount_transform
from carla_client.connection import SIMS
from control.experts import Observation, create_expert
from control.gates import CURVE, STRAIGHT, create_gate, gate_names
from control.moe import MoEController, MoEStep
from launch.display import Action, open_display
from launch.metrics import LEADERBOARD_1_0, DriveTrace, TickRecord, episode_metrics
from launch.overlay import HudState, Minimap, Overlay, bgra_to_bgr, image_to_array, route_to_xy
from launch.timing import CycleTimer
from launch.video import VideoWriter, video_path

log = logging.getLogger(__name__)


@dataclass
class DriveConfig:
    """Everything one drive needs. Defaults give a 20 Hz drive on the embedded Town02.

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
    town: str = "Town02"
    model: str | None = None
    sim: str = "auto"
    host: str = "127.0.0.1"
    port: int = 2000
    timeout: float = 10.0
    backend: str = "auto"
    gate: str = "hard"
    weather: str = "ClearNoon"
    frames: int | None = None
    duration: float | None = None
    record: str | None = None
    display: bool = True
    metrics: str | None = None
    seed: int = 0
    res: tuple[int, int] = (800, 600)
    fov: float = 90.0
    fps: float = 20.0
    route_length_m: float = 600.0
    expert_params: dict = field(default_factory=dict)
    realtime: bool | None = None
    hud: bool = True
    minimap: bool = True
    warmup: int = 10
    max_route_deviation_m: float = 30.0
    blocked_s: float = 30.0
    extend_route: bool = True

    def __post_init__(self) -> None:
        if self.sim not in SIMS:
            raise ValueError(f"unknown sim {self.sim!r}; valid: {', '.join(SIMS)}")
        if self.gate not in gate_names():
            raise ValueError(f"unknown gate {self.gate!r}; valid: {', '.join(gate_names())}")
        if create_gate(self.gate).needs_model and not self.model:
            raise ValueError(f"gate {self.gate!r} needs --model; gates without a model: "
                             f"{', '.join(g for g in gate_names() if not create_gate(g).needs_model)}")
        if self.frames is not None and self.duration is not None:
            raise ValueError("give --frames or --duration, not both")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {self.frames}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"--duration must be > 0 s, got {self.duration}")
        if not 1.0 <= self.fps <= 1000.0:
            raise ValueError(f"fps must be in [1, 1000], got {self.fps}")
        if isinstance(self.res, str):
            self.res = parse_res(self.res)
        presets = weather_presets()
        if self.weather not in presets:
            raise ValueError(f"unknown weather preset {self.weather!r}; valid: {', '.join(sorted(presets))}")
        if self.model and not Path(self.model).exists():
            raise ValueError(f"--model {self.model!r}: no such file")
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
    world = client.get_world()
    if world.get_map().name.split("/")[-1] != cfg.town:
        world = client.load_world(cfg.town)
    wmap = world.get_map()
    return WorldContext(client, world, wmap, GlobalRoutePlanner(wmap, 2.0), cfg.town)


def load_classifier(model: str | None, backend: str = "auto", warmup: int = 10):
    """The perception classifier for ``model`` (None without a model), warmed up before the first tick."""
    if not model:
        return None
    from perception.classifier import CurveClassifier
    return CurveClassifier.load(model, backend=backend, warmup=warmup)


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


def _spawn(ctx: WorldContext, cfg: DriveConfig, route):
    """Vehicle at the route start (lifted 0.3 m), the camera, and a lane-invasion sensor."""
    bl = ctx.world.get_blueprint_library()
    start = route[0][0].transform
    spawn = carla.Transform(carla.Location(start.location.x, start.location.y, start.location.z + 0.3),
                            carla.Rotation(yaw=start.rotation.yaw))
    vehicle_bp = bl.filter("vehicle.*")[0]
    vehicle = ctx.world.spawn_actor(vehicle_bp, spawn)
    actors = [vehicle]
    try:
        cam_bp = bl.find("sensor.camera.rgb")
        cam_bp.set_attribute("image_size_x", str(cfg.res[0]))
        cam_bp.set_attribute("image_size_y", str(cfg.res[1]))
        cam_bp.set_attribute("fov", str(cfg.fov))
        camera = ctx.world.spawn_actor(cam_bp, camera_mount_transform(), attach_to=vehicle)
        actors.append(camera)
        lane = ctx.world.spawn_actor(bl.find("sensor.other.lane_invasion"), carla.Transform(), attach_to=vehicle)
        actors.append(lane)
    except Exception:
        _destroy(actors)
        raise
    return vehicle, camera, lane, actors


def _destroy(actors) -> None:
    for actor in reversed(actors):
        try:
            actor.destroy()
        except Exception as e:  # already gone (server reset): nothing left to clean
            log.debug("destroy %s failed: %s", actor, e)


class _Recorder:
    """Owns the current video (R toggles it); one frame per tick while on."""

    def __init__(self, cfg: DriveConfig, gate_name: str) -> None:
        self.cfg = cfg
        self.gate_name = gate_name
        self.writer: VideoWriter | None = None
        self.videos: list[Path] = []
        self.wanted = cfg.record is not None

    def toggle(self, gate_name: str) -> None:
        self.gate_name = gate_name
        if self.writer is not None:
            self.close()
            self.wanted = False
        else:
            self.wanted = True

    def write(self, frame: np.ndarray) -> None:
        if not self.wanted:
            return
        if self.writer is None:
            target = self.cfg.record or "runs/drive"
            path = video_path(target, self.cfg.town, self.gate_name).absolute()
            if path in self.videos or (path.exists() and self.videos):  # second recording in the same second
                path = path.with_name(f"{path.stem}_{len(self.videos)}{path.suffix}")
            self.writer = VideoWriter(path, self.cfg.fps, (frame.shape[1], frame.shape[0]))
            self.videos.append(path)
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


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
    """
    from carla_client.labels import LabelParams, label_at
    from carla_client.route import RoutePath
    from carla_client.sync import CarlaSyncMode

    if create_gate(cfg.gate).needs_model and classifier is None and predict is None:
        raise ValueError(f"gate {cfg.gate!r} needs a classifier (--model)")
    dt = cfg.dt
    max_ticks = cfg.max_ticks
    speed_max = max([30.0] + [p.get("cruise_speed_kmh", 40.0) for p in cfg.expert_params.values()] + [40.0])
    length = cfg.route_length_m
    if max_ticks is not None and cfg.extend_route:  # make sure the route does not end before the requested frames
        length = max(length, max_ticks * dt * speed_max / 3.6 * 1.2 + 50.0)
    route = plan_route(ctx, cfg.seed, length)
    path = RoutePath.from_route(route)
    label_params = LabelParams()
    ctx.world.set_weather(getattr(carla.WeatherParameters, cfg.weather))

    gate_order = [g for g in gate_names() if classifier is not None or predict is not None
                  or not create_gate(g).needs_model]
    records: list[TickRecord] = []
    timer = CycleTimer(dt)
    recorder = _Recorder(cfg, cfg.gate)
    display = None
    actors = []
    interrupted, end_reason = False, "running"
    invasions: list[int] = []
    show_hud = cfg.hud
    realtime = cfg.realtime
    metrics: dict = {}
    metrics_path = Path(cfg.metrics) if cfg.metrics else None
    try:
        vehicle, camera, lane_sensor, actors = _spawn(ctx, cfg, route)
        lane_sensor.listen(lambda event: invasions.append(event.frame))
        experts = {name: create_expert(name, route, vehicle=vehicle, dt=dt, **cfg.expert_params.get(name, {}))
                   for name in (STRAIGHT, CURVE)}
        moe = MoEController(experts, create_gate(cfg.gate))
        minimap = None
        if cfg.minimap and cfg.hud:
            raster = ctx.raster()
            if raster is not None:
                minimap = Minimap(raster.image, raster.world_to_pixel, route_to_xy(route))
        overlay = Overlay(cfg.res, minimap)
        display = open_display(cfg.res, cfg.display, title=f"carla-drive {cfg.town}")
        if realtime is None:
            realtime = display is not None
        predict = predict or (None if classifier is None else (lambda f: _predict(classifier, f)))
        hint = 0
        slow_since: float | None = None
        paused = False
        last_frame = None
        with CarlaSyncMode(ctx.world, camera, fixed_delta_seconds=dt) as sync:
            tick_i = 0
            while max_ticks is None or tick_i < max_ticks:
                # ---- pause: keep the window alive, do not tick (one video frame per tick holds)
                if display is not None:
                    with timer.section("display"):
                        actions = display.poll()
                    if Action.QUIT in actions:
                        end_reason = "quit"
                        break
                    for a in actions:
                        if a is Action.PAUSE:
                            paused = not paused
                        elif a is Action.TOGGLE_HUD:
                            show_hud = not show_hud
                        elif a is Action.TOGGLE_RECORD:
                            recorder.toggle(moe.gate.name)
                        elif a is Action.CYCLE_GATE:
                            nxt = gate_order[(gate_order.index(moe.gate.name) + 1) % len(gate_order)] \
                                if moe.gate.name in gate_order else gate_order[0]
                            moe.set_gate(create_gate(nxt))
                            log.info("gate -> %s", nxt)
                    if paused:
                        if last_frame is not None:
                            display.show(last_frame)
                        time.sleep(0.05)
                        continue
                timer.tick()
                with timer.section("tick"):
                    frame_id, (image,) = sync.tick(timeout=max(2.0, cfg.timeout))
                    raw = image_to_array(image)
                    tf = vehicle.get_transform()
                    vel = vehicle.get_velocity()
                snapshot_t = image.timestamp
                label, p_curve, infer_ms = None, None, None
                if predict is not None:
                    t0 = time.perf_counter()
                    with timer.section("infer"):
                        label, p_curve = predict(raw)
                    infer_ms = (time.perf_counter() - t0) * 1000.0
                with timer.section("control"):
                    x, y = tf.location.x, tf.location.y
                    s0, hint, dist = path.project(x, y, hint)
                    evidence = label_at(path, s0, label_params)
                    truth = evidence.label if evidence is not None else None
                    obs = Observation(tf, vel, timestamp=snapshot_t, frame=frame_id, image=raw)
                    step: MoEStep = moe.run_step(obs, p_curve, truth)
                    vehicle.apply_control(step.control)
                    on_road = ctx.map.get_waypoint(tf.location, project_to_road=False,
                                                   lane_type=carla.LaneType.Driving) is not None
                speed = obs.speed_kmh
                n_inv = sum(1 for f in invasions if f <= frame_id)
                del invasions[:n_inv]
                rec = TickRecord(
                    frame=frame_id, t=snapshot_t, x=x, y=y, yaw=tf.rotation.yaw, speed_kmh=speed,
                    steer=step.control.steer, throttle=step.control.throttle, brake=step.control.brake,
                    progress_m=s0, route_dist_m=dist, on_road=on_road, lane_invasions=n_inv, truth=truth,
                    pred=label, p_curve=p_curve, expert=step.in_charge, w_curve=step.decision.weights.get(CURVE, 0.0),
                    fallback=step.fallback, gate=moe.gate.name, infer_ms=infer_ms)
                records.append(rec)
                need_frame = recorder.wanted or display is not None
                if need_frame:
                    with timer.section("overlay"):
                        bgr = bgra_to_bgr(raw)
                        if minimap is not None:
                            minimap.mark(x, y, _expert_color(step.in_charge))
                        tick_rate = timer.rolling("tick")["p50_ms"]
                        infer_stats = timer.rolling("infer")
                        overlay.draw(bgr, HudState(
                            pred_label=label, p_curve=p_curve, truth=truth, gate=moe.gate.name,
                            weights=step.decision.weights, in_charge=step.in_charge, fallback=step.fallback,
                            speed_kmh=speed, steer=step.control.steer, throttle=step.control.throttle,
                            brake=step.control.brake, sim_fps=1000.0 / tick_rate if tick_rate > 0 else float("nan"),
                            client_fps=timer.rolling_fps(), infer_p50_ms=infer_stats["p50_ms"],
                            infer_p99_ms=infer_stats["p99_ms"], town=cfg.town, weather=cfg.weather,
                            sim_time=snapshot_t, x=x, y=y, yaw=tf.rotation.yaw,
                            recording=recorder.wanted, paused=paused), show_hud=show_hud)
                    if recorder.wanted:
                        with timer.section("encode"):
                            recorder.write(bgr)
                    if display is not None:
                        with timer.section("display"):
                            display.show(bgr)
                        last_frame = bgr
                tick_i += 1
                if on_tick is not None:
                    on_tick(tick_i, rec)
                # ---- episode end conditions (Leaderboard-like)
                if moe.done() or s0 >= path.length - 2.0:
                    end_reason = "route_completed"
                    break
                if dist > cfg.max_route_deviation_m:
                    end_reason = "route_deviation"
                    break
                slow_since = (slow_since if slow_since is not None else snapshot_t) if speed < 0.5 else None
                if slow_since is not None and snapshot_t - slow_since > cfg.blocked_s:
                    end_reason = "blocked"
                    break
                if realtime:
                    timer.wait()
            else:
                end_reason = "frames" if cfg.frames is not None else "duration"
    except KeyboardInterrupt:
        interrupted, end_reason = True, "interrupted"
        log.info("interrupted: finalising video and metrics")
    except BaseException as e:
        end_reason = f"error: {e.__class__.__name__}: {e}"
        raise
    finally:
        recorder.close()
        _destroy(actors)
        if display is not None:
            display.close()
        metrics = _drive_metrics(cfg, records, path.length, timer, recorder.videos, end_reason)
        if metrics_path is not None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            metrics_path.write_text(json.dumps(metrics, indent=2, default=_json_default))
    return DriveResult(metrics=metrics, records=records, videos=recorder.videos, metrics_path=metrics_path,
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
    return run_episode(ctx, cfg, classifier, on_tick=on_tick)
