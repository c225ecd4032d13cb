"""The MoE-vs-monolithic study: every policy on the same held-out routes, weathers and seeds.

Examples::

    # whole matrix on one machine (embedded simulator), report at the end
    python -m launch.study run --towns Town02,Town05 --weathers ClearNoon,WetNoon --routes 5 \\
        --classifier runs/cls/weights/best.pt --curve runs/policy/curve/weights/best.pt \\
        --straight runs/policy/straight/weights/best.pt --monolithic runs/policy/monolithic/weights/best.pt \\
        --out runs/study

    # the same matrix in 4 independent shards (SLURM array: --shard $SLURM_ARRAY_TASK_ID/4), then one report
    python -m launch.study run ... --shard 0/4 --out runs/study/shard0
    python -m launch.study merge runs/study/shard* --out runs/study

Policies (:data:`POLICIES`): ``monolithic`` (one camera policy trained on all frames), ``moe_hard`` /
``moe_soft`` (curve and straight camera experts gated by the classifier, hard with hysteresis or
blended), ``moe_oracle`` (the same experts gated by the map label: expert error without gate error),
``privileged`` (the route followers under the oracle gate: an upper bound that reads the map).

Cells = policies x towns x weathers x routes. Route ``r`` of a town uses seed ``seed + r`` for every
policy and weather, so the comparison is paired. Shard ``i/N`` runs the cells whose index modulo N
is i; each cell writes ``cells/<key>.json``; ``merge`` (also run at the end of an unsharded run)
checks that every cell of the plan is there and writes ``report.md``, ``summary.json`` and plots
(:mod:`launch.study_report`). Videos (best and worst policy per town) are re-driven by the step that
writes the report, unless ``--no-videos``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from control.gates import CURVE, STRAIGHT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicySpec:
    """How a study policy drives: its gate, which experts fill the ``curve``/``straight`` slots, and which
    learned models it needs."""
    gate: str
    slots: dict | None          # None: the route followers (privileged)
    needs: tuple[str, ...] = ()
    gated: bool = True          # gate accuracy and switches mean something


POLICIES: dict[str, PolicySpec] = {
    "monolithic": PolicySpec("straight", {CURVE: "vision_monolithic", STRAIGHT: "vision_monolithic"},
                             ("monolithic",), gated=False),
    "moe_hard": PolicySpec("hard", {CURVE: "vision_curve", STRAIGHT: "vision_straight"},
                           ("classifier", "curve", "straight")),
    "moe_soft": PolicySpec("soft", {CURVE: "vision_curve", STRAIGHT: "vision_straight"},
                           ("classifier", "curve", "straight")),
    "moe_oracle": PolicySpec("oracle", {CURVE: "vision_curve", STRAIGHT: "vision_straight"}, ("curve", "straight")),
    "privileged": PolicySpec("oracle", None, ()),
}


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


@dataclass
class StudyConfig:
    """The matrix, the models and how to run it."""
    towns: tuple[str, ...] = ("Town02",)
    weathers: tuple[str, ...] = ("ClearNoon", "WetNoon")
    routes: int = 3
    policies: tuple[str, ...] = tuple(POLICIES)
    classifier: str | None = None
    curve: str | None = None
    straight: str | None = None
    monolithic: str | None = None
    policy_backend: str = "onnxruntime"
    backend: str = "auto"
    route_length_m: float = 300.0
    max_duration_s: float = 90.0
    seed: int = 100
    fps: float = 20.0
    res: tuple[int, int] | None = None
    fov: float | None = None
    sim: str = "embedded"
    host: str = "127.0.0.1"
    port: int = 2000
    timeout: float = 10.0
    longitudinal: str = "learned"
    cruise_kmh: float = 20.0
    blocked_s: float = 10.0
    shard: str = "0/1"
    out: str = "runs/study"
    videos: bool = True
    training: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from carla_client.cli import weather_presets
        self.towns, self.weathers, self.policies = tuple(self.towns), tuple(self.weathers), tuple(self.policies)
        bad = [p for p in self.policies if p not in POLICIES]
        if bad or not self.policies:
            raise ValueError(f"--policies: unknown {bad or 'empty'}; valid: {', '.join(POLICIES)}")
        presets = weather_presets()
        badw = [w for w in self.weathers if w not in presets]
        if badw or not self.weathers:
            raise ValueError(f"--weathers: unknown {badw or 'empty'}; valid: {', '.join(sorted(presets))}")
        if not self.towns:
            raise ValueError("--towns is empty; give at least one held-out town, e.g. Town02")
        if self.routes < 1:
            raise ValueError(f"--routes {self.routes}: must be >= 1")
        parse_shard(self.shard)
        from control.vision_experts import LONGITUDINAL
        if self.longitudinal not in LONGITUDINAL:
            raise ValueError(f"--longitudinal {self.longitudinal!r}; valid: {', '.join(LONGITUDINAL)}")
        from perception.policy_runtime import POLICY_BACKENDS
        if self.policy_backend not in POLICY_BACKENDS:
            raise ValueError(f"--policy-backend {self.policy_backend!r}; valid: {', '.join(POLICY_BACKENDS)}")
        for name in self.policies:
            for need in POLICIES[name].needs:
                path = getattr(self, need)
                if not path:
                    raise ValueError(f"policy {name!r} needs --{need} (a {'classifier' if need == 'classifier' else 'policy'} "
                                     "model); or leave it out with --policies")
                if not Path(path).is_file():
                    raise ValueError(f"--{need} {path!r}: no such file")
        if isinstance(self.res, list):
            self.res = tuple(self.res)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Cell:
    """One drive of the matrix."""
    policy: str
    town: str
    weather: str
    route: int

    @property
    def key(self) -> str:
        return f"{self.town}__{self.weather}__r{self.route:03d}__{self.policy}"


def plan(cfg: StudyConfig) -> list[Cell]:
    """Every cell, ordered town, weather, route, policy (a shard keeps one town loaded as long as it can)."""
    return [Cell(p, t, w, r) for t in cfg.towns for w in cfg.weathers for r in range(cfg.routes) for p in cfg.policies]


def shard_cells(cells: list[Cell], shard: str) -> list[Cell]:
    i, n = parse_shard(shard)
    return [c for k, c in enumerate(cells) if k % n == i]


def _camera(cfg: StudyConfig) -> tuple[tuple[int, int], float]:
    """Camera of the drive: the flags, else the policies' contract, else CARLA's hood camera."""
    from datasets.schema import CameraSpec
    contract = None
    for name in ("monolithic", "curve", "straight"):
        path = getattr(cfg, name)
        if path:
            from training.policy import policy_contract
            contract = policy_contract(path)
            if contract:
                break
    trained = contract.camera if contract else CameraSpec()
    res = cfg.res or trained.res
    fov = cfg.fov or trained.fov
    return tuple(res), float(fov)


class _Models:
    """The learned models of the study, loaded once per process; vision experts registered."""

    def __init__(self, cfg: StudyConfig) -> None:
        from control.vision_experts import register_vision_experts
        from launch.loop import load_classifier
        from perception.policy_runtime import PolicyRuntime
        needs = {n for p in cfg.policies for n in POLICIES[p].needs}
        self.classifier = load_classifier(cfg.classifier, cfg.backend, warmup=5) if "classifier" in needs else None
        self.sets = {}
        if {"curve", "straight"} & needs:
            rt = PolicyRuntime.load({"curve": cfg.curve, "straight": cfg.straight}, cfg.policy_backend)
            self.sets["moe"] = register_vision_experts(rt, longitudinal=cfg.longitudinal, cruise_kmh=cfg.cruise_kmh)
        if "monolithic" in needs:
            rt = PolicyRuntime.load({"monolithic": cfg.monolithic}, cfg.policy_backend)
            self.sets["monolithic"] = register_vision_experts(rt, longitudinal=cfg.longitudinal,
                                                              cruise_kmh=cfg.cruise_kmh)

    def group_ms(self, policy: str) -> list[float]:
        spec = POLICIES[policy]
        if spec.slots is None:
            return []
        s = self.sets["monolithic" if policy == "monolithic" else "moe"]
        return list(s.last_group.infer_ms) if s.last_group is not None else []


def drive_cell(ctx, cfg: StudyConfig, cell: Cell, models: _Models, camera, record: str | None = None) -> dict:
    """Drive one cell; returns its record (cell, metrics; no wall-clock fields outside ``timing``)."""
    from control.vision_experts import expert_slots
    from launch.loop import DriveConfig, run_episode
    from launch.study_metrics import study_metrics
    spec = POLICIES[cell.policy]
    res, fov = camera
    needs_cls = "classifier" in spec.needs
    dcfg = DriveConfig(town=cell.town, model=cfg.classifier if needs_cls else None, sim=cfg.sim, host=cfg.host,
                       port=cfg.port, timeout=cfg.timeout, backend=cfg.backend, gate=spec.gate, weather=cell.weather,
                       duration=cfg.max_duration_s, display=False, seed=cfg.seed + cell.route, res=res, fov=fov,
                       fps=cfg.fps, route_length_m=cfg.route_length_m, realtime=False, hud=record is not None,
                       minimap=record is not None, extend_route=False, record=record, warmup=0,
                       blocked_s=cfg.blocked_s,
                       # The study's time limit and blocked rule are sized for driving without stops and its
                       # figures (docs/study_cpu) were measured so; runs still count in the driving score.
                       traffic_lights="ignore")
    binding = spec.slots or {}
    with expert_slots(binding) if binding else _nullcontext():
        result = run_episode(ctx, dcfg, models.classifier if needs_cls else None)
    m = {k: v for k, v in result.metrics.items() if k not in ("config", "stages", "videos", "finished_at", "loop_fps")}
    extra = study_metrics(result.records, dcfg.dt, models.group_ms(cell.policy))
    timing_keys = ("inference_p50_ms", "inference_p99_ms", "policy_p50_ms", "policy_p99_ms", "frame_p50_ms",
                   "frame_p99_ms")
    metrics = {**m, **extra}
    timing = {k: metrics.pop(k) for k in timing_keys if k in metrics}
    timing["loop_fps"] = result.metrics.get("loop_fps")
    if not spec.gated:
        for k in ("gate_accuracy", "gate_switches", "gate_switches_per_km"):
            metrics[k] = float("nan")
    rec = {"cell": asdict(cell), "key": cell.key, "metrics": metrics, "timing": timing,
           "videos": [str(v) for v in result.videos]}
    if cell.route == 0 and cell.weather == cfg.weathers[0]:  # one trajectory per town and policy for the plot
        rec["trace"] = {"x": [round(r.x, 2) for r in result.records], "y": [round(r.y, 2) for r in result.records]}
    return rec


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_cells(cfg: StudyConfig, cells: list[Cell], out: Path, models: _Models | None = None) -> list[dict]:
    """Drive ``cells`` (skipping those already written: a shard can be resumed), write ``cells/*.json``."""
    from launch.loop import DriveConfig, open_world
    (out / "cells").mkdir(parents=True, exist_ok=True)
    models = models or _Models(cfg)
    camera = _camera(cfg)
    done = []
    ctx, ctx_town = None, None
    for k, cell in enumerate(cells):
        path = out / "cells" / f"{cell.key}.json"
        if path.is_file():
            done.append(json.loads(path.read_text()))
            continue
        if ctx_town != cell.town:
            ctx = open_world(DriveConfig(town=cell.town, sim=cfg.sim, host=cfg.host, port=cfg.port,
                                         timeout=cfg.timeout, gate="oracle", display=False))
            ctx_town = cell.town
        log.info("[%d/%d] %s", k + 1, len(cells), cell.key)
        rec = drive_cell(ctx, cfg, cell, models, camera)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rec, indent=1, default=float))
        tmp.replace(path)
        done.append(rec)
    return done


def run_study(cfg: StudyConfig) -> Path:
    """Run this process's shard; an unsharded run (``0/1``) also writes the report. Returns the out dir."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = plan(cfg)
    (out / "study.json").write_text(json.dumps({"config": cfg.to_json(), "plan": [c.key for c in cells]}, indent=1))
    mine = shard_cells(cells, cfg.shard)
    models = _Models(cfg)
    run_cells(cfg, mine, out, models)
    if parse_shard(cfg.shard)[1] == 1:
        merge([out], out, videos=cfg.videos, models=models)
    return out


def merge(dirs: list[Path], out: Path, videos: bool = False, models: _Models | None = None) -> Path:
    """Gather the cells of every shard directory, check the plan is complete, write the report.

    Raises:
        ValueError: the shards ran different plans, or cells are missing (count and first keys).
    """
    from launch.study_report import write_report
    dirs = [Path(d) for d in dirs]
    studies = [json.loads((d / "study.json").read_text()) for d in dirs if (d / "study.json").is_file()]
    if not studies:
        raise ValueError(f"no study.json in {', '.join(map(str, dirs))}: not study output directories")
    plan_keys = studies[0]["plan"]
    for s in studies[1:]:
        if s["plan"] != plan_keys:
            raise ValueError("the shard directories hold different study plans (towns/weathers/routes/policies differ)")
    records = {}
    for d in dirs:
        for p in sorted((d / "cells").glob("*.json")):
            rec = json.loads(p.read_text())
            records[rec["key"]] = rec
    missing = [k for k in plan_keys if k not in records]
    if missing:
        raise ValueError(f"{len(missing)} of {len(plan_keys)} cells missing (e.g. {', '.join(missing[:3])}); "
                         "run the remaining shards first")
    ordered = [records[k] for k in plan_keys]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {**studies[0]["config"], "shard": "0/1", "out": str(out)}
    video_paths = {}
    if videos:  # needs the models on this machine (validated here)
        video_paths = _videos(StudyConfig(**config), ordered, out, models)
    return write_report({k: v for k, v in config.items() if k not in ("out", "shard")}, ordered, out, video_paths)


def _videos(cfg: StudyConfig, records: list[dict], out: Path, models: _Models | None) -> dict:
    """Per town, re-drive route 0 in the first weather with the best and the worst policy (mean driving
    score over that town's cells), recorded with the HUD."""
    from launch.loop import DriveConfig, open_world
    from launch.study_report import rank_policies
    models = models or _Models(cfg)
    camera = _camera(cfg)
    paths: dict = {}
    for town in cfg.towns:
        ranked = rank_policies([r for r in records if r["cell"]["town"] == town])
        if not ranked:
            continue
        ctx = open_world(DriveConfig(town=town, sim=cfg.sim, host=cfg.host, port=cfg.port, timeout=cfg.timeout,
                                     gate="oracle", display=False))
        for role, policy in (("best", ranked[0]), ("worst", ranked[-1])):
            cell = Cell(policy, town, cfg.weathers[0], 0)
            target = out / "videos" / f"{town}_{role}_{policy}.mp4"
            target.parent.mkdir(parents=True, exist_ok=True)
            rec = drive_cell(ctx, cfg, cell, models, camera, record=str(target))
            if rec["videos"]:
                paths[(town, role)] = (policy, Path(rec["videos"][0]))
    return paths


# ------------------------------------------------------------------------------------------ CLI

def _csv(text: str) -> tuple[str, ...]:
    return tuple(v for v in str(text).split(",") if v)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from perception.policy_runtime import POLICY_BACKENDS
    d = StudyConfig.__dataclass_fields__
    p = argparse.ArgumentParser(description="MoE-vs-monolithic driving study on held-out towns (run / merge)",
                                add_help=add_help)
    sub = p.add_subparsers(dest="step", required=True)
    r = sub.add_parser("run", help="drive the matrix (or one shard of it)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--towns", default="Town02", help="held-out towns, comma-separated")
    r.add_argument("--weathers", default="ClearNoon,WetNoon", help="weather presets, comma-separated")
    r.add_argument("--routes", type=int, default=d["routes"].default, help="routes per town and weather")
    r.add_argument("--policies", default=",".join(POLICIES), help=f"subset of {', '.join(POLICIES)}")
    for name in ("classifier", "curve", "straight", "monolithic"):
        r.add_argument("--" + name, default=None, help=f"{name} model (.pt/.onnx)" if name == "classifier"
                       else f"{name} policy checkpoint (training.train_policy best.pt)")
    r.add_argument("--policy-backend", default="onnxruntime", choices=POLICY_BACKENDS,
                   help="runtime of the vision experts")
    r.add_argument("--backend", default="auto", help="classifier backend (perception)")
    r.add_argument("--route-length", dest="route_length_m", type=float, default=d["route_length_m"].default,
                   help="route length, m")
    r.add_argument("--max-duration", dest="max_duration_s", type=float, default=d["max_duration_s"].default,
                   help="time limit per route, simulated s")
    r.add_argument("--seed", type=int, default=d["seed"].default, help="route r uses seed SEED+r")
    r.add_argument("--fps", type=float, default=d["fps"].default, help="simulation rate")
    r.add_argument("--res", default=None, help="camera WxH (default: the policies' contract)")
    r.add_argument("--fov", type=float, default=None, help="camera FOV (default: the policies' contract)")
    r.add_argument("--longitudinal", default="learned", choices=("learned", "cruise"),
                   help="vision experts' throttle/brake: from the network, or a speed controller (steering learned)")
    r.add_argument("--cruise-kmh", type=float, default=20.0, help="target speed of --longitudinal cruise")
    r.add_argument("--blocked", dest="blocked_s", type=float, default=10.0,
                   help="end a drive after this long below 0.5 km/h, simulated s")
    r.add_argument("--sim", default="embedded", help="embedded | carla | auto")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=2000)
    r.add_argument("--shard", default="0/1", help="I/N: run the cells with index %% N == I")
    r.add_argument("--out", default="runs/study", help="output directory")
    r.add_argument("--no-videos", dest="videos", action="store_false", help="no best/worst videos")
    m = sub.add_parser("merge", help="gather shard directories into one report")
    m.add_argument("dirs", nargs="+", help="shard output directories")
    m.add_argument("--out", required=True, help="report directory")
    m.add_argument("--videos", action="store_true", help="re-drive best/worst per town with video (needs the models)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.step == "run":
            from carla_client.cli import parse_res
            cfg = StudyConfig(towns=_csv(args.towns), weathers=_csv(args.weathers), routes=args.routes,
                              policies=_csv(args.policies), classifier=args.classifier, curve=args.curve,
                              straight=args.straight, monolithic=args.monolithic, policy_backend=args.policy_backend,
                              backend=args.backend, route_length_m=args.route_length_m,
                              max_duration_s=args.max_duration_s, seed=args.seed, fps=args.fps,
                              res=parse_res(args.res) if args.res else None, fov=args.fov, sim=args.sim,
                              host=args.host, port=args.port, shard=args.shard, out=args.out, videos=args.videos,
                              longitudinal=args.longitudinal, cruise_kmh=args.cruise_kmh, blocked_s=args.blocked_s)
            out = run_study(cfg)
            if parse_shard(cfg.shard)[1] > 1:
                print(f"shard {cfg.shard} done: {out}/cells; merge with: python -m launch.study merge DIRS --out DIR")
                return 0
        else:
            out = merge([Path(d) for d in args.dirs], Path(args.out), videos=args.videos)
            out = out.parent
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {Path(out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
