"""Drive a car with the classifier-gated mixture of experts, live overlay window, video and metrics.

Example::

    python -m launch.drive --sim embedded --town Town02 --model m.onnx --gate hard \\
        --frames 200 --no-display --record d.mp4 --metrics d.json --seed 3

Keys in the window: ESC/Q quit, H toggle HUD, R start/stop recording, P pause, G cycle the gate.
Without a display it runs headless and still records. Ctrl-C ends cleanly (video finalised,
metrics written, world settings restored, actors destroyed).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from carla_client.cli import add_carla_args
from control.gates import gate_names
from launch.loop import DriveConfig, run_drive


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Closed-loop drive: classifier -> gate -> driving experts.",
                                add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--town", default="Town02", help="map to load")
    p.add_argument("--model", default=None, help="classifier: .onnx, .pt or .engine (needed by gates hard/soft)")
    p.add_argument("--backend", default="auto", help="auto|tensorrt|onnxruntime|torch-cuda|torch")
    p.add_argument("--gate", default="hard", choices=gate_names(), help="which gate decides the expert")
    p.add_argument("--weather", default="ClearNoon", help="CARLA weather preset, e.g. ClearNoon, WetNoon")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--frames", type=int, default=None, help="stop after N ticks (default: end of route)")
    stop.add_argument("--duration", type=float, default=None, help="stop after S simulated seconds")
    p.add_argument("--fps", type=float, default=20.0, help="simulation rate (fixed_delta_seconds = 1/fps)")
    p.add_argument("--route-length", type=float, default=600.0, help="planned route length, m")
    p.add_argument("--record", default=None, metavar="OUT.mp4|DIR",
                   help="record the overlaid view; a directory gets <town>_<gate>_<date>.mp4")
    p.add_argument("--no-display", dest="display", action="store_false", help="headless (no window)")
    p.add_argument("--no-hud", dest="hud", action="store_false", help="start with the HUD hidden")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="hold the loop to --fps wall-clock (default: on with a window, off headless)")
    p.add_argument("--metrics", default=None, metavar="OUT.json", help="write the drive's metrics here")
    p.add_argument("--warmup", type=int, default=10, help="classifier warm-up inferences before the first tick")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_carla_args(p)
    return p


def config_from_args(args: argparse.Namespace) -> DriveConfig:
    return DriveConfig(
        town=args.town, model=args.model, sim=args.sim, host=args.host, port=args.port, timeout=args.timeout,
        backend=args.backend, gate=args.gate, weather=args.weather, frames=args.frames, duration=args.duration,
        record=args.record, display=args.display, metrics=args.metrics, seed=args.seed, res=args.res,
        fps=args.fps, route_length_m=args.route_length, realtime=args.realtime, hud=args.hud, warmup=args.warmup)


def _sigterm_as_interrupt(signum, frame):
    """SIGTERM (e.g. ``kill``, a job scheduler) ends the drive exactly like Ctrl-C: clean shutdown."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        result = run_drive(cfg)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = result.metrics
    print(f"{cfg.town} gate={cfg.gate}: {m['ticks']} ticks ({result.end_reason}), route completion "
          f"{m['route_completion']:.1%}, driving score {m['driving_score']:.3f}, gate accuracy "
          f"{m['gate_accuracy']:.1%}, loop {m['loop_fps']:.1f} FPS, inference p50/p99 "
          f"{m['inference_p50_ms']:.1f}/{m['inference_p99_ms']:.1f} ms")
    for v in result.videos:
        print(f"video: {v}")
    if result.metrics_path:
        print(f"metrics: {result.metrics_path}")
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
