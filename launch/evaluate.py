"""Evaluate every gate on the same routes in several towns: metrics.json, report.md, plots, one video per town.

Example::

    python -m launch.evaluate --towns Town02,Town05 --model m.onnx --episodes 3 \\
        --gates hard,soft,oracle,curve,straight --out runs/eval

For each town x gate x episode the drive uses the same route, spawn and weather (episode ``i`` uses
``seeds[i]`` of ``launch/configs/<Town>.yaml``), so gates differ only in who is in charge. Metrics are
those of :mod:`launch.metrics` (Leaderboard-style driving score with the CARLA Leaderboard 1.0
penalty table, BehaviorMetrics-style lane invasions, lateral deviation and steering suddenness, plus
gate accuracy and switches). The report states what the comparison shows, computed from the numbers.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from carla_client.cli import add_carla_args
from carla_client.config import SimConfig, add_dataclass_args, arg, from_args, parse_res
from datasets.io_safety import check_output_path, cli_errors, write_json_atomic
from control.gates import create_gate, gate_names, gates_of_kind
from control.traffic_rules import TRAFFIC_LIGHT_RULES, check_rule
from launch.loop import DriveConfig, _backend_choices, load_classifier, open_world, run_episode
from launch.metrics import LEADERBOARD_1_0, DriveTrace

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (metric key, header, format)
    ("driving_score", "DS", ".3f"),
    ("route_completion", "RC", ".1%"),
    ("lane_invasions_per_km", "lane inv/km", ".1f"),
    ("off_road_events_per_km", "off-road/km", ".1f"),
    ("lateral_deviation_mean_m", "lat dev mean m", ".2f"),
    ("lateral_deviation_max_m", "lat dev max m", ".2f"),
    ("speed_mean_kmh", "speed km/h", ".1f"),
    ("route_time_s", "time s", ".1f"),
    ("steer_rate_mean_per_s", "steer rate 1/s", ".2f"),
    ("collisions", "collisions", ".1f"),
    ("red_lights", "red lights", ".1f"),
    ("red_light_hold_s", "held at red s", ".1f"),
    ("gate_accuracy", "gate acc", ".1%"),
    ("gate_switches_per_km", "switches/km", ".1f"),
    ("inference_p50_ms", "infer p50 ms", ".1f"),
    ("inference_p99_ms", "infer p99 ms", ".1f"),
    ("loop_fps", "loop FPS", ".1f"),
)


def route_time_limit_s(route_length_m: float) -> float:
    """A route's time limit: 5 s + 0.8 s per metre. The curve expert drives 0.18 s/m (20 km/h); the rest
    is for waits at red lights (measured: 72-77 s on a 400 m Town02 route) and a slow policy."""
    return 5.0 + 0.8 * float(route_length_m)


@dataclass(frozen=True)
class TownSettings:
    """Per-town evaluation settings (``launch/configs/<Town>.yaml``)."""
    town: str
    route_length_m: float = 500.0
    episodes: int = 3
    seeds: tuple[int, ...] = tuple(range(10))
    weather: tuple[str, ...] = ("ClearNoon",)
    fps: float = 20.0
    max_duration_s: float | None = None     # None: route_time_limit_s(route_length_m)
    experts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_duration_s is None:
            object.__setattr__(self, "max_duration_s", route_time_limit_s(self.route_length_m))
        if not self.route_length_m > 0 or not self.max_duration_s > 0 or self.episodes < 1:
            raise ValueError(f"{self.town}: route_length_m, max_duration_s and episodes must be positive")
        if not self.seeds or not self.weather:
            raise ValueError(f"{self.town}: seeds and weather must not be empty")

    @classmethod
    def load(cls, town: str, config_dir: Path = CONFIG_DIR) -> "TownSettings":
        """Read ``<config_dir>/<town>.yaml``; a town without a file gets the defaults (logged)."""
        import yaml
        path = Path(config_dir) / f"{town}.yaml"
        if not path.is_file():
            log.info("no %s: default settings for %s", path, town)
            return cls(town=town)
        data = yaml.safe_load(path.read_text()) or {}
        known = set(cls.__dataclass_fields__)
        bad = set(data) - known
        if bad:
            raise ValueError(f"{path}: unknown key(s) {sorted(bad)}; valid: {', '.join(sorted(known))}")
        data["town"] = data.get("town", town)
        for key in ("seeds", "weather"):
            if key in data:
                v = data[key]
                data[key] = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        return cls(**data)


def _names(text) -> list[str]:
    return [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]


@dataclass
class EvalConfig(SimConfig):
    """The evaluation: towns x gates x episodes. Simulator fields from :class:`SimConfig`; the camera
    (``res``/``fov``, None = the model's) is resolved per drive like ``launch.drive`` does."""
    res: tuple[int, int] | None = field(default=None, metadata=arg(
        "camera resolution (default: the model's camera, else 800x600)", parse=parse_res, metavar="WxH"))
    towns: list[str] = field(default_factory=lambda: ["Town02"], metadata=arg("comma-separated towns", parse=_names))
    model: str | None = field(default=None, metadata=arg("classifier (.onnx/.pt/.engine); needed by gates hard/soft"))
    gates: list[str] = field(default_factory=gate_names, metadata=arg("comma-separated gates", parse=_names))
    episodes: int | None = field(default=None, metadata=arg(
        "episodes per town and gate (default: the town's config)", parse=int))
    out: str = field(default="runs/eval", metadata=arg("output directory"))
    backend: str = field(default="auto", metadata=arg("inference backend", choices=_backend_choices))
    fov: float | None = field(default=None, metadata=arg(
        "camera fov, deg (default: the model's camera, else 90)", parse=float))
    camera_override: bool = field(default=False, metadata=arg(
        "evaluate with --res/--fov although the model was trained on another camera"))
    video: bool = field(default=True, metadata=arg("do not record one video per town", negative="--no-video"))
    video_gate: str | None = field(default=None, metadata=arg(
        "gate whose first episode is recorded (default: the first gate)"))
    config_dir: str = field(default=str(CONFIG_DIR), metadata=arg("directory of <Town>.yaml settings"))
    traffic: int = field(default=0, metadata=arg("NPC vehicles driven by the Traffic Manager in every episode"))
    walkers: int = field(default=0, metadata=arg("NPC walkers on the sidewalks"))
    traffic_lights: str = field(default="stop", metadata=arg(
        "'stop': every gate holds at red lights (CARLA BasicAgent's rule), so the scores compare the driving and "
        "not the second each car met a light; 'ignore': drive through (runs are counted and penalised either way)",
        choices=TRAFFIC_LIGHT_RULES))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rule(self.traffic_lights)
        self.towns, self.gates = _names(self.towns), _names(self.gates)
        if not self.towns:
            raise ValueError("--towns is empty; give at least one town, e.g. Town02")
        valid = gate_names()
        bad = [g for g in self.gates if g not in valid]
        if bad or not self.gates:
            raise ValueError(f"unknown gate(s) {bad or self.gates}; valid: {', '.join(valid)}")
        needs = [g for g in self.gates if create_gate(g).needs_model]
        if needs and not self.model:
            raise ValueError(f"gate(s) {', '.join(needs)} need --model")
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.video_gate is None:
            self.video_gate = self.gates[0]
        if self.video_gate not in self.gates:
            raise ValueError(f"video gate {self.video_gate!r} is not among the evaluated gates {self.gates}")
        if not Path(self.config_dir).is_dir():
            raise ValueError(f"--config-dir {self.config_dir!r}: no such directory")


@dataclass
class EvalResult:
    out: Path
    metrics_path: Path
    report_path: Path
    summary: dict
    videos: dict


def _mean(values) -> float:
    vals = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def summarise(episodes: list[dict]) -> dict:
    """town -> gate -> metric -> mean over episodes (NaN-aware)."""
    out: dict = {}
    for ep in episodes:
        out.setdefault(ep["town"], {}).setdefault(ep["gate"], []).append(ep)
    return {town: {gate: {key: _mean([e.get(key) for e in eps]) for key, _, _ in TABLE_COLUMNS}
                   | {"episodes": len(eps)} for gate, eps in gates.items()} for town, gates in out.items()}


def run_evaluation(cfg: EvalConfig) -> EvalResult:
    """Drive every town x gate x episode headless, then write metrics.json, report.md and the plots."""
    from tqdm import tqdm
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {t: TownSettings.load(t, Path(cfg.config_dir)) for t in cfg.towns}
    classifier = load_classifier(cfg.model, cfg.backend, warmup=10) if cfg.model else None
    episodes: list[dict] = []
    traces: dict = {}
    videos: dict = {}
    backgrounds: dict = {}
    total = sum((cfg.episodes or s.episodes) * len(cfg.gates) for s in settings.values())
    bar = tqdm(total=total, desc="evaluate", unit="ep", disable=None)  # quiet when stderr is not a terminal
    interrupted = False
    try:
        for town, ts in settings.items():
            n_ep = cfg.episodes or ts.episodes
            if n_ep > len(ts.seeds):
                raise ValueError(f"{town}: {n_ep} episodes but only {len(ts.seeds)} seeds in its config")
            ctx = None
            for ep in range(n_ep):
                for gate in cfg.gates:
                    record = cfg.video and ep == 0 and gate == cfg.video_gate
                    dcfg = DriveConfig(
                        town=town, model=cfg.model, sim=cfg.sim, host=cfg.host, port=cfg.port, timeout=cfg.timeout,
                        backend=cfg.backend, gate=gate, weather=ts.weather[ep % len(ts.weather)],
                        duration=ts.max_duration_s, display=False, seed=int(ts.seeds[ep]), res=cfg.res, fov=cfg.fov,
                        camera_override=cfg.camera_override, fps=ts.fps, traffic=cfg.traffic, walkers=cfg.walkers,
                        traffic_lights=cfg.traffic_lights,
                        route_length_m=ts.route_length_m, expert_params=dict(ts.experts), realtime=False,
                        hud=record, minimap=record, extend_route=False,
                        record=str(out / "videos" / f"{town}_{gate}.mp4") if record else None)
                    if ctx is None:
                        ctx = open_world(dcfg)
                        backgrounds[town] = raster_background(ctx.raster())
                    bar.set_postfix_str(f"{town} {gate} ep{ep}")
                    # The classifier runs for every gate (when given), so classifier accuracy and
                    # inference cost are reported for the oracle and fixed gates too.
                    result = run_episode(ctx, dcfg, classifier)
                    m = {k: v for k, v in result.metrics.items() if k != "config"}
                    m["episode"] = ep
                    episodes.append(m)
                    if ep == 0:
                        traces[(town, gate)] = result.trace
                    if record and result.videos:
                        videos[town] = result.videos[0]
                    bar.update(1)
                    if result.interrupted:
                        raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: writing the report for the %d episode(s) driven", len(episodes))
    finally:
        bar.close()
    summary = summarise(episodes)
    metrics_path = out / "metrics.json"
    write_json_atomic(metrics_path, {
        "config": asdict(cfg), "interrupted": interrupted, "penalty_table": asdict(LEADERBOARD_1_0),
        "towns": {t: asdict(s) for t, s in settings.items()},
        "summary": summary, "episodes": episodes})
    plots = {town: plot_trajectories(town, {g: traces[(town, g)] for g in cfg.gates if (town, g) in traces},
                                     out / f"trajectories_{town}.png", backgrounds.get(town))
             for town in cfg.towns if town in backgrounds}
    report_path = out / "report.md"
    report_path.write_text(render_report(cfg, summary, plots, videos, out))
    return EvalResult(out=out, metrics_path=metrics_path, report_path=report_path, summary=summary, videos=videos)


def raster_background(raster) -> tuple[np.ndarray, tuple[float, float, float, float]] | None:
    """(RGB image, imshow extent) of a ``TownRaster`` so plots sit on the real town map."""
    if raster is None:
        return None
    h, w = raster.image.shape[:2]
    r = raster.resolution
    extent = (raster.x0 - r / 2, raster.x0 + (w - 0.5) * r, raster.y0 + (h - 0.5) * r, raster.y0 - r / 2)
    return raster.image[..., ::-1], extent


def plot_trajectories(town: str, traces: dict[str, DriveTrace], path: Path, background=None) -> Path | None:
    """One row per gate: the first episode's path over the town map, coloured by the expert in charge
    (left) and by whether that matched the map's label (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not traces:
        return None
    bg = background
    rows = len(traces)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 4.2 * rows), squeeze=False)
    allx = np.concatenate([np.asarray(t.x) for t in traces.values()])
    ally = np.concatenate([np.asarray(t.y) for t in traces.values()])
    pad = 25.0
    xlim = (allx.min() - pad, allx.max() + pad)
    ylim = (ally.max() + pad, ally.min() - pad)  # CARLA y grows "down" seen from above: keep it so
    expert_col = {"curve": "#ff8c00", "straight": "#2875ff"}
    for row, (gate, tr) in enumerate(traces.items()):
        x, y = np.asarray(tr.x), np.asarray(tr.y)
        for col, (title, colours) in enumerate((
                ("expert in charge", [expert_col.get(e, "grey") for e in tr.expert]),
                ("gate vs map label", ["#2ca02c" if c else ("#d62728" if c is False else "#bbbbbb")
                                       for c in tr.correct]))):
            ax = axes[row][col]
            if bg is not None:
                img, extent = bg
                ax.imshow(img, extent=extent, interpolation="nearest")
            ax.scatter(x, y, c=colours, s=4, linewidths=0)
            ax.plot(x[:1], y[:1], marker="o", color="k", ms=6)
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
            ax.set_aspect("equal")
            ax.set_title(f"{town} - gate {gate}: {title}", fontsize=10)
            ax.set_xlabel("x (m)")
            ax.set_ylabel("y (m)")
    handles = [Line2D([], [], ls="", marker="o", color=expert_col["curve"], label="curve expert"),
               Line2D([], [], ls="", marker="o", color=expert_col["straight"], label="straight expert"),
               Line2D([], [], ls="", marker="o", color="#2ca02c", label="gate = map label"),
               Line2D([], [], ls="", marker="o", color="#d62728", label="gate != map label"),
               Line2D([], [], ls="", marker="o", color="#bbbbbb", label="ambiguous (not scored)")]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def findings(summary: dict, gates: list[str]) -> list[str]:
    """What the comparison shows, per town, computed from the numbers (never hard-coded)."""
    lines = []
    for town, by_gate in summary.items():
        ds = {g: by_gate[g]["driving_score"] for g in gates if g in by_gate}
        finite = {g: v for g, v in ds.items() if math.isfinite(v)}
        if not finite:
            continue
        best = max(finite, key=finite.get)
        order = sorted(finite, key=finite.get, reverse=True)
        lines.append(f"**{town}**: best driving score **{best}** ({finite[best]:.3f}); ranking "
                     + " > ".join(f"{g} ({finite[g]:.3f})" for g in order) + ".")
        learned, oracles, fixed = (gates_of_kind(k, list(by_gate)) for k in ("learned", "oracle", "fixed"))
        for o in [o for o in oracles if o in finite and finite[o] > 0]:
            for g in [g for g in learned if g in finite]:
                lines.append(f"- {g} reaches {finite[g] / finite[o]:.0%} of the {o} gate's score "
                             f"(gate accuracy {_fmt(by_gate[g]['gate_accuracy'], '.1%')} vs {o} "
                             f"{_fmt(by_gate[o]['gate_accuracy'], '.1%')}).")
        gated = learned + oracles
        if fixed:
            best_fixed = max(fixed, key=lambda g: by_gate[g]["driving_score"])
            if gated:
                best_moe = max(gated, key=lambda g: by_gate[g]["driving_score"])
                diff = by_gate[best_moe]["driving_score"] - by_gate[best_fixed]["driving_score"]
                verdict = "beats" if diff > 0.005 else ("matches" if abs(diff) <= 0.005 else "loses to")
                lines.append(f"- the best gated controller ({best_moe}) {verdict} the best single expert "
                             f"({best_fixed}) by {diff:+.3f} driving score.")
            for g in gated:
                row = by_gate[g]
                parts = []
                for f in fixed:
                    ref = by_gate[f]
                    parts.append(f"vs {f}: route time {row['route_time_s']:.0f} vs {ref['route_time_s']:.0f} s, "
                                 f"lateral deviation mean/max {row['lateral_deviation_mean_m']:.2f}/"
                                 f"{row['lateral_deviation_max_m']:.2f} vs {ref['lateral_deviation_mean_m']:.2f}/"
                                 f"{ref['lateral_deviation_max_m']:.2f} m, lane invasions/km "
                                 f"{_fmt(row['lane_invasions_per_km'], '.1f')} vs {_fmt(ref['lane_invasions_per_km'], '.1f')}")
                lines.append(f"- {g}: " + "; ".join(parts) + ".")
        if len(learned) > 1:
            lines.append("- steering suddenness (mean abs steer change per s): " + ", ".join(
                f"{g} {by_gate[g]['steer_rate_mean_per_s']:.2f}/s" for g in learned) + "; expert switches per km: "
                + ", ".join(f"{g} {_fmt(by_gate[g]['gate_switches_per_km'], '.1f')}" for g in learned) + ".")
    return lines


def render_report(cfg: EvalConfig, summary: dict, plots: dict, videos: dict, out: Path) -> str:
    """Markdown report: settings, per-town tables, findings, plots and video links (relative to ``out``)."""
    p = LEADERBOARD_1_0
    lines = [
        "# Mixture-of-experts driving: gate comparison", "",
        f"Model: `{cfg.model or '-'}` (backend {cfg.backend}); towns: {', '.join(cfg.towns)}; gates: "
        f"{', '.join(cfg.gates)}; every gate drives the same routes, spawns and weather per episode.", "",
        f"Driving score = route completion x product of penalties, penalty table **{p.name}** "
        f"(collision with layout {p.collision_layout}, vehicle {p.collision_vehicle}, pedestrian "
        f"{p.collision_pedestrian}, red light {p.red_light}, stop {p.stop_sign}). Distance driven off the "
        "driving lanes does not count towards route completion (Leaderboard 1.0 rule); each off-road event "
        "counts as a collision with the layout (our mapping: the embedded simulator has no collision meshes). "
        "Lane invasions are reported per km and not penalised (as in the Leaderboard).", "",
        ("Traffic lights: every gate holds while its car is in the trigger zone of a red light (`--traffic-lights "
         "stop`, CARLA BasicAgent's rule; the experts do not see lights), so a red-light run is one the car could "
         "not stop for, and 'held at red s' is the time spent waiting." if cfg.traffic_lights == "stop" else
         "Traffic lights: ignored by every gate (`--traffic-lights ignore`); red-light runs are still counted and "
         "penalised, so they depend on when each car met each light."), "",
        "Gate accuracy: fraction of frames where the expert in charge equals the map's label along the route "
        "(ambiguous frames and frames held at a red light excluded). Values are means over episodes.", "",
        "## What the comparison shows", "",
        *findings(summary, cfg.gates), "",
    ]
    for town, by_gate in summary.items():
        lines += [f"## {town}", ""]
        lines.append("| gate | " + " | ".join(h for _, h, _ in TABLE_COLUMNS) + " | episodes |")
        lines.append("|---|" + "---:|" * (len(TABLE_COLUMNS) + 1))
        for gate in cfg.gates:
            if gate in by_gate:
                row = by_gate[gate]
                lines.append(f"| {gate} | " + " | ".join(_fmt(row[k], f) for k, _, f in TABLE_COLUMNS)
                             + f" | {row['episodes']} |")
        lines.append("")
        if plots.get(town):
            lines += [f"![{town} trajectories]({Path(plots[town]).relative_to(out).as_posix()})", ""]
        if town in videos:
            rel = Path(videos[town]).resolve().relative_to(out.resolve()).as_posix()
            lines += [f"Video ({cfg.video_gate} gate, episode 0): [{rel}]({rel})", ""]
    return "\n".join(lines) + "\n"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate gates x towns x episodes; writes metrics.json and report.md.",
                                add_help=add_help)
    add_dataclass_args(p, EvalConfig, exclude=tuple(f.name for f in fields(SimConfig)))
    p.add_argument("-v", "--verbose", action="store_true")
    add_carla_args(p, res=None)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = from_args(EvalConfig, args)
        check_output_path(cfg.out, "--out", is_dir=True)
    except ValueError as e:
        parser.error(str(e))
    with cli_errors(debug=args.verbose, prog="carla-evaluate"):
        result = run_evaluation(cfg)
    print((result.report_path.read_text().split("## What the comparison shows")[1].split("\n## ")[0]).strip())
    print(f"\nreport:  {result.report_path}\nmetrics: {result.metrics_path}")
    for town, v in result.videos.items():
        print(f"video:   {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
