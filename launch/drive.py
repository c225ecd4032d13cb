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

from dataclasses import fields

from carla_client.cli import add_carla_args
from carla_client.config import SimConfig, add_dataclass_args, from_args
from datasets.io_safety import check_output_path, cli_errors
from launch.loop import DriveConfig, run_drive


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Closed-loop drive: classifier -> gate -> driving experts.",
                                add_help=add_help)
    add_dataclass_args(p, DriveConfig, exclude=tuple(f.name for f in fields(SimConfig)))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_carla_args(p, res=None)
    return p


def config_from_args(args: argparse.Namespace) -> DriveConfig:
    if args.frames is not None and args.duration is not None:
        raise ValueError("give --frames or --duration, not both")
    return from_args(DriveConfig, args)


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
        check_output_path(cfg.metrics, "--metrics")
        check_output_path(cfg.record, "--record", is_dir=not str(cfg.record or "").endswith(".mp4"))
    except ValueError as e:
        parser.error(str(e))
    with cli_errors(debug=args.verbose, prog="carla-drive"):
        result = run_drive(cfg)
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
